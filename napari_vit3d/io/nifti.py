"""Read and write NIfTI files with exact geometry and clear errors for bad input.

Reading never allocates more than the header honestly promises (checked against a limit first), never
hangs on a truncated file and turns every failure into a :class:`VolumeError` with one plain line.
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

from ..errors import VolumeError, VolumeWarning
from .atomic import atomic_write
from .volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: the largest array a file may ask for before it is refused (bytes, after conversion to float32)
DEFAULT_MAX_BYTES = 4 * 1024**3
MAX_CHANNELS = 8
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
    """A one-line VolumeError (library messages can hold newlines and run long)."""
    text = " ".join(f"{path}: {msg}".split())
    return VolumeError(text if len(text) <= 400 else text[:397] + "...")


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
    offset = int(hdr.get("vox_offset", 0) or 0)
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
    try:
        if integer:
            data = np.asanyarray(img.dataobj)
        else:
            data = img.get_fdata(dtype=np.float32)
    except MemoryError:
        raise _fail(path, "does not fit in memory") from None
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
            if n_bad == data.size:
                raise _fail(path, "contains no finite voxel values (all NaN/Inf)")
            warnings.warn(f"{path.name}: {n_bad} NaN/Inf voxels were set to 0", VolumeWarning, stacklevel=2)
            data = np.where(finite, data, np.float32(0)).astype(np.float32)
    if as_labels:
        if data.ndim != 3:
            raise _fail(path, f"a label map must be 3D, got shape {data.shape}")
        if not integer:
            whole = bool(np.array_equal(data, np.round(data))) and float(np.abs(data).max(initial=0)) < 2**31
            if not whole and auto:
                as_labels = False  # named like labels, but holds a continuous map: keep it an image
            elif not whole:
                raise _fail(path, "has non-integer values and cannot be opened as a label map")
            else:
                lo, hi = int(data.min(initial=0)), int(data.max(initial=0))
                data = data.astype(label_dtype(max(hi, -lo), signed=lo < 0))
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
