"""Read and write NIfTI files with exact geometry and clear errors for bad input.

Reading never allocates more than the header honestly promises (checked against a limit and against the
memory available, :mod:`.memory`, first), never hangs on a truncated file and turns every failure into a
:class:`VolumeError` with one plain line. The voxel data are streamed into one array of the declared size,
and a gzip stream that inflates past what the header declares (plus a small slack) is refused while it
is read, never after.
Writing is atomic (:func:`.atomic.atomic_write`: temporary file in the same folder, then ``os.replace``) and
refuses to write over the scan a label map came from.
"""

from __future__ import annotations

import gzip
import os
import re
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import ResourceLimitError, VolumeError, VolumeWarning
from .atomic import atomic_write
from .memory import check_memory_request
from .volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: the largest array a file may ask for before it is refused (bytes, after conversion to float32)
DEFAULT_MAX_BYTES = 4 * 1024**3
MAX_CHANNELS = 8
#: decompressed bytes a gzip stream may hold beyond the data its header declares (padding, extensions)
GZIP_SLACK_BYTES = 1024**2
_CHUNK = 16 * 1024**2
#: file names that suggest a label map ("masked"/"labelled" scans are images, so those are excluded)
_LABEL_NAME = re.compile(r"(seg(?!mented)|label(?!l?ed)|mask(?!ed)|parc|aseg|atlas)", re.IGNORECASE)


def is_nifti_path(path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path) -> str:
    """The file name without ``.nii``/``.nii.gz`` (any case); other names lose their last suffix."""
    path = Path(path)
    name = path.name
    for suf in (".nii.gz", ".nii"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


_stem = nifti_stem


def looks_like_labels_name(path) -> bool:
    return bool(_LABEL_NAME.search(_stem(Path(path))))


def _fail(path, msg) -> VolumeError:
    """A one-line VolumeError (library messages can hold newlines and run long); every reader's error."""
    text = " ".join(f"{path}: {msg}".split())
    return VolumeError(text if len(text) <= 400 else text[:397] + "...")


def as_label_array(path, data: np.ndarray, *, auto: bool) -> tuple[np.ndarray, bool]:
    """``(data, as_labels)`` for a scan asked to open as a label map: 3D only; float data with whole values
    gets the smallest integer dtype; float data with other values stays an image when the choice was
    ``auto`` (named like labels, holds a continuous map) and is refused otherwise. Used by every reader."""
    if data.ndim != 3:
        raise _fail(path, f"a label map must be 3D, got shape {data.shape}")
    if data.dtype.kind in "iu":
        return data, True
    whole = bool(np.array_equal(data, np.round(data))) and float(np.abs(data).max(initial=0)) < 2**31
    if not whole and auto:
        return data, False  # named like labels, but holds a continuous map: keep it an image
    if not whole:
        raise _fail(path, "has non-integer values and cannot be opened as a label map")
    lo, hi = int(data.min(initial=0)), int(data.max(initial=0))
    return data.astype(label_dtype(max(hi, -lo), signed=lo < 0)), True


def _load_header(path: Path):
    try:
        path.stat()
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except OSError as exc:  # name too long, not a directory, too many links, ...
        raise _fail(path, f"cannot be opened ({exc.strerror or type(exc).__name__})") from None
    if path.is_dir():
        raise _fail(path, "is a folder, not a NIfTI file")
    if not path.is_file():  # a FIFO or device would block or never end
        raise _fail(path, "is not a regular file")
    if not os.access(path, os.R_OK):
        raise _fail(path, "cannot be read (permission denied)")
    if path.stat().st_size == 0:
        raise _fail(path, "is empty (0 bytes)")
    if not is_nifti_path(path):
        raise _fail(path, "is not a NIfTI file (expected .nii or .nii.gz)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
        if path.name.lower().endswith(".gz") and head != b"\x1f\x8b":
            raise _fail(path, "is named .gz but is not gzip-compressed")
        img = nib.load(str(path), mmap=False)
    except VolumeError:
        raise
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile) as exc:
        raise _fail(path, f"is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    except nib.filebasedimages.ImageFileError:
        raise _fail(path, "is not a valid NIfTI file (no NIfTI header found)") from None
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types for files that are not NIfTI
        detail = str(exc).replace(f'"{path}"', "the file").replace(str(path), "the file")
        raise _fail(path, f"is not a valid NIfTI file ({detail})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise _fail(path, f"is a {type(img).__name__}, not NIfTI")
    return img


def _check_shape(path, shape, itemsize_after: int, max_bytes: int):
    if any(int(s) <= 0 for s in shape):
        raise _fail(path, f"has an empty dimension {tuple(shape)}")
    nd = len(shape)
    if nd < 3:
        raise _fail(path, f"is {nd}D {tuple(shape)}; napari-vit3d needs a 3D volume")
    if nd > 4:
        extra = shape[4:]
        if all(int(s) == 1 for s in extra):
            shape = shape[:4]
        else:
            raise _fail(path, f"is {nd}D {tuple(shape)}; only 3D scans and 4D multi-channel scans are supported")
    if len(shape) == 4 and int(shape[3]) > MAX_CHANNELS:
        raise _fail(path, f"has {shape[3]} volumes along its 4th axis (a time series?); at most "
                          f"{MAX_CHANNELS} channels are supported")
    nbytes = int(np.prod([int(s) for s in shape], dtype=np.float64)) * itemsize_after
    if nbytes > max_bytes:
        raise _fail(path, f"header claims {tuple(int(s) for s in shape)} voxels ({nbytes / 1024**3:.1f} GiB), "
                          f"over the {max_bytes / 1024**3:.1f} GiB limit; refusing to allocate")
    return tuple(int(s) for s in shape)


#: claims above this many bytes are checked against the file's real content before allocating
_VERIFY_ABOVE_BYTES = 256 * 1024**2


def _check_data_present(path: Path, img, shape) -> None:
    """Refuse a header that promises more data than the file holds, before allocating anything.

    Uncompressed files: compare with the file size. Gzip files: for large claims, compare with the
    size recorded in the gzip trailer and, when that disagrees (truncated or multi-member files),
    count the decompressed bytes in small chunks, stopping as soon as there are enough.
    """
    hdr = img.header
    offset = int(getattr(img.dataobj, "offset", 0) or hdr.get("vox_offset", 0) or 0)
    need = offset + int(np.prod(shape, dtype=np.float64)) * hdr.get_data_dtype().itemsize
    if not path.name.lower().endswith(".gz"):
        have = path.stat().st_size
        if have < need:
            raise _fail(path, f"is truncated: the header promises {need} bytes, the file has {have}")
        return
    if need <= _VERIFY_ABOVE_BYTES:
        return  # small enough to find out while reading
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        isize = int.from_bytes(fh.read(4), "little")
    if isize == need % 2**32:
        return
    got = 0
    try:
        with gzip.open(path, "rb") as gz:
            while got < need:
                chunk = gz.read(16 * 1024**2)
                if not chunk:
                    break
                got += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise _fail(path, f"is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    if got < need:
        raise _fail(path, f"is truncated: the header promises {need} bytes, the file holds {got}")


def _streamable(dtype: np.dtype) -> bool:
    """Plain numbers (not RGB or other structured voxels): read by :func:`_read_voxels`."""
    return dtype.fields is None and dtype.kind in "biuf"


def _check_read_memory(path: Path, img, shape, integer: bool) -> None:
    """Refuse, from the header alone, a file whose voxels (and their float32 copy) would not fit in memory."""
    n = int(np.prod(shape, dtype=np.float64))
    dtype = img.header.get_data_dtype()
    need = n * dtype.itemsize  # the voxels as stored
    if not integer:
        scaling = _has_scaling(img)
        if scaling or dtype != np.float32:
            need += n * 4  # the float32 copy
        if scaling and dtype.itemsize >= 4:
            need += n * 8  # nibabel's float64 scaling step
        need += n  # the finiteness mask
    check_memory_request(int(need), what=f"reading {path.name} ({'×'.join(map(str, shape))} voxels of "
                                         f"{img.header.get_data_dtype()} by its header)",
                         change="free memory, or crop or downsample the scan with another tool first")


def _read_voxels(path: Path, img, shape) -> np.ndarray:
    """The voxels as stored (disk dtype, file order), streamed into one array of the size the header declares.

    A stream that ends early is truncated; a gzip stream that goes on past the declared size by more
    than :data:`GZIP_SLACK_BYTES` is refused as soon as that is read (a decompression bomb or a header
    that lies), without inflating the rest.
    """
    proxy = img.dataobj  # the header nibabel hands out may not say where the data start; the proxy knows
    dtype = np.dtype(proxy.dtype)
    n = int(np.prod(shape, dtype=np.int64))
    out = np.empty(n, dtype=dtype)
    view = memoryview(out.view(np.uint8))
    need = view.nbytes
    offset = int(proxy.offset)
    gz = path.name.lower().endswith(".gz")
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as fh:
            skipped = 0
            while skipped < offset:  # gzip streams cannot seek backwards; reading forward is cheap here
                block = fh.read(min(_CHUNK, offset - skipped))
                if not block:
                    break
                skipped += len(block)
            got = 0
            while got < need:
                k = fh.readinto(view[got:got + _CHUNK])
                if not k:
                    break
                got += k
            if got < need:
                raise _fail(path, f"is truncated: the header promises {offset + need} bytes, the file holds "
                                  f"{skipped + got}")
            if gz:
                extra = 0
                while extra <= GZIP_SLACK_BYTES:
                    block = fh.read(min(_CHUNK, GZIP_SLACK_BYTES + 1 - extra))
                    if not block:
                        break
                    extra += len(block)
                if extra > GZIP_SLACK_BYTES:
                    raise _fail(path, f"decompresses to more than its header declares ({offset + need} bytes + "
                                      f"{GZIP_SLACK_BYTES // 1024**2} MiB); refusing to inflate the rest (a damaged "
                                      "file or a decompression bomb)")
    except (EOFError, OSError, zlib.error) as exc:
        raise _fail(path, f"is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    finally:
        view.release()
    if not out.dtype.isnative:  # in place: no second copy of a big file
        out = out.byteswap(inplace=True).view(out.dtype.newbyteorder("="))
    return out.reshape(shape, order=getattr(proxy, "order", "F"))


def _scaled_float32(raw: np.ndarray, img) -> tuple[np.ndarray, tuple[int, float]]:
    """float32 voxels exactly as ``img.get_fdata(dtype=np.float32)`` computes them (nibabel's read scaling), and
    (how many finite values overflowed float32, the largest magnitude among them)."""
    from nibabel.volumeutils import apply_read_scaling

    slope, inter = np.asanyarray(img.dataobj.slope), np.asanyarray(img.dataobj.inter)
    if np.can_cast(slope, np.float32):
        slope = slope.astype(np.float32)
    if np.can_cast(inter, np.float32):
        inter = inter.astype(np.float32)
    scaled = apply_read_scaling(raw, slope, inter)
    overflow = (0, 0.0)
    if scaled.dtype.itemsize > 4 and scaled.dtype.kind == "f":
        big = np.abs(scaled) > np.finfo(np.float32).max
        big &= np.isfinite(scaled)
        if big.any():
            overflow = (int(np.count_nonzero(big)), float(np.abs(scaled[big]).max()))
        del big
    with np.errstate(over="ignore"):  # counted above and reported as one warning
        out = scaled.astype(np.promote_types(scaled.dtype, np.float32), copy=False).astype(np.float32, copy=False)
    return out, overflow


def _has_scaling(img) -> bool:
    slope, inter = img.dataobj.slope, img.dataobj.inter
    return not ((slope is None or slope == 1) and (inter is None or inter == 0))


def read_nifti(path, *, as_labels: bool | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Volume:
    """Read a NIfTI scan or label map into a :class:`Volume` (data in the file's voxel order).

    ``as_labels=None`` decides from the file: a 3D file whose name says it is a label map (seg, label,
    mask, parc, aseg, atlas; see :func:`looks_like_labels_name`) and whose values are whole numbers
    (an integer type without intensity scaling, or floats that are all integers) is a label map.
    Labels get an integer dtype; scans keep their dtype when unscaled (else float32). Non-finite
    voxels are replaced by 0 with a :class:`VolumeWarning`. Everything that can be checked from the
    header (dimensions, size, affine, truncation) is checked before the data are read.
    """
    path = Path(path)
    img = _load_header(path)
    hdr = img.header
    disk_dtype = hdr.get_data_dtype()
    integer = np.issubdtype(disk_dtype, np.integer) and not _has_scaling(img)
    if as_labels and not integer and not np.issubdtype(disk_dtype, np.floating):
        raise _fail(path, f"cannot be a label map (data type {disk_dtype})")
    out_itemsize = disk_dtype.itemsize if integer else 4
    shape = _check_shape(path, img.shape, max(out_itemsize, 1), max_bytes)
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise _fail(path, "has no usable voxel-to-world affine (qform and sform both invalid)")
    _check_data_present(path, img, shape)
    auto = as_labels is None
    if auto:  # a label map by name: 3D only (a 4D file is a multi-channel scan)
        as_labels = looks_like_labels_name(path) and (len(shape) == 3 or int(shape[3]) == 1)
    _check_read_memory(path, img, shape, integer)
    overflow = (0, 0.0)
    try:
        if _streamable(disk_dtype):
            raw = _read_voxels(path, img, shape)
            if integer:
                data = raw
            else:
                data, overflow = _scaled_float32(raw, img)
            del raw
        elif integer:  # pragma: no cover - exotic integer layouts: nibabel's reader
            data = np.asanyarray(img.dataobj)
        else:  # RGB and other structured types: nibabel says what it can do with them
            data = img.get_fdata(dtype=np.float32)
    except VolumeError:
        raise
    except MemoryError:
        raise ResourceLimitError(f"{path}: does not fit in memory ({'×'.join(map(str, shape))} voxels)") from None
    except Exception as exc:  # noqa: BLE001 - truncated data surfaces as EOFError, ValueError, zlib.error, ...
        raise _fail(path, f"is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    data = np.asarray(data).reshape(shape)
    if not data.dtype.isnative:  # big-endian files: napari/vispy and torch want native byte order
        data = data.astype(data.dtype.newbyteorder("="))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if not integer:
        finite = np.isfinite(data)
        if not finite.all():
            n_bad = int(data.size - np.count_nonzero(finite))
            n_over, largest = overflow
            if n_bad == data.size:
                what = "beyond the float32 range" if n_over == n_bad else "NaN/Inf or beyond the float32 range"
                raise _fail(path, f"contains no usable voxel values (all {what})")
            parts = []
            if n_over:
                parts.append(f"{n_over} voxels hold values beyond the float32 range (up to {largest:.3g})")
            if n_bad - n_over:
                parts.append(f"{n_bad - n_over} NaN/Inf voxels")
            warnings.warn(f"{path.name}: {' and '.join(parts)}; they were set to 0", VolumeWarning, stacklevel=2)
            data = np.where(finite, data, np.float32(0)).astype(np.float32)
    if as_labels:
        data, as_labels = as_label_array(path, data, auto=auto)
    return Volume(data=data, affine=np.asarray(affine, dtype=float), header=hdr.copy(), name=_stem(path),
                  source_path=str(path.resolve()), metadata={"kind": "labels" if as_labels else "image"})


def label_dtype(max_label: int, signed: bool = False):
    """The smallest integer dtype that holds labels up to ``max_label`` (uint8 up to 255)."""
    if signed:
        for dt in (np.int16, np.int32):
            if max_label <= np.iinfo(dt).max:
                return np.dtype(dt)
        return np.dtype(np.int64)
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_label <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _atomic_save(img, path: Path) -> Path:
    path = Path(path)
    if not is_nifti_path(path):
        raise VolumeError(f"{path}: output must end in .nii or .nii.gz")
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    return atomic_write(path, lambda tmp: nib.save(img, tmp), suffix=suffix)


def _guard_source(path, source_path, protect: tuple = ()):
    for src in (source_path, *protect):
        if src and os.path.exists(path) and _same_file(path, src):
            raise VolumeError(f"{path}: refusing to overwrite the source scan; choose another file name")


def _header_for(data, header, *, dtype) -> nib.Nifti1Header:
    if header is not None and isinstance(header, (nib.Nifti1Header, nib.Nifti2Header)):
        hdr = header.copy()
    else:
        hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(data.shape)
    return hdr


def _make_image(data, affine, header, *, dtype, intent: str = "none"):
    """A NIfTI image on ``affine`` with the source header's codes, ``dtype`` and no intensity scaling.

    When ``affine`` is the source header's own (best) affine, the header's qform and sform are kept
    exactly as they were (matrices and codes), so the file lands on the source voxel for voxel and
    other tools read the same geometry from it. Otherwise both are set to ``affine``, keeping the
    source codes (``aligned`` when there are none).
    """
    is_nifti_header = isinstance(header, (nib.Nifti1Header, nib.Nifti2Header))
    hdr = _header_for(data, header, dtype=dtype)
    klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    qform, qcode = (hdr.get_qform(coded=True) if is_nifti_header else (None, 0))
    sform, scode = (hdr.get_sform(coded=True) if is_nifti_header else (None, 0))
    qcode, scode = int(qcode or 0), int(scode or 0)
    img = klass(np.asarray(data, dtype=dtype), affine, header=hdr)
    own = is_nifti_header and np.allclose(header.get_best_affine(), affine, atol=1e-6)
    if own:
        img.set_sform(sform if scode else affine, code=scode)
        img.set_qform(qform if qcode else affine, code=qcode)
    else:
        if qcode == 0 and scode == 0:  # no source codes: still say where the voxels are
            qcode = scode = 2
        img.set_sform(affine, code=scode or qcode)
        img.set_qform(affine, code=qcode or scode)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, 0
    img.header.set_intent(intent)
    return img


def write_labels(path, labels: np.ndarray, affine, *, header=None, source_path: str | None = None,
                 protect: tuple = ()) -> Path:
    """Write an integer label map (file voxel order) atomically; never over ``source_path``."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise VolumeError(f"labels must be 3D, got shape {labels.shape}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels)):
            raise VolumeError("labels must be whole numbers")
    if labels.dtype.kind == "b":
        labels = labels.astype(np.uint8)
    lo = int(labels.min()) if labels.size else 0
    hi = int(labels.max()) if labels.size else 0
    dtype = label_dtype(max(hi, -lo), signed=lo < 0)
    _guard_source(path, source_path, protect)
    return _atomic_save(_make_image(labels, np.asarray(affine, float), header, dtype=dtype, intent="label"),
                        Path(path))


def write_image(path, data: np.ndarray, affine, *, header=None, source_path: str | None = None,
                protect: tuple = ()) -> Path:
    """Write a float map (3D, or 4D with channels/heads last) atomically as float32."""
    data = np.asarray(data)
    if data.ndim not in (3, 4):
        raise VolumeError(f"an image must be 3D or 4D, got shape {data.shape}")
    _guard_source(path, source_path, protect)
    return _atomic_save(_make_image(data, np.asarray(affine, float), header, dtype=np.float32), Path(path))


def write_volume(path, vol: Volume, *, as_labels: bool | None = None, protect: tuple = ()) -> Path:
    """Write a :class:`Volume` on its own grid (labels if integer or ``as_labels``)."""
    if as_labels is None:
        as_labels = vol.metadata.get("kind") == "labels" or np.issubdtype(vol.data.dtype, np.integer)
    fn = write_labels if as_labels else write_image
    return fn(path, vol.data, vol.affine, header=vol.header, source_path=vol.metadata.get("protect_path"),
              protect=tuple(p for p in (vol.source_path, *protect) if p))
