"""What the readers and writers of non-NIfTI formats share (``dicom``, ``nrrd_io``, ``itk_io``, ``mgh``).

* :func:`require`: import a format library lazily; when it is missing, one line saying
  ``pip install "napari-vit3d[formats]"`` (the plain NIfTI path never imports these libraries);
* :func:`fail`: a one-line :class:`~napari_vit3d.errors.VolumeError` naming the file;
* :func:`check_file`: the path is a readable, non-empty regular file;
* :func:`check_claim`: the header-declared size is refused *before* pixel data are read when it is
  over ``max_bytes``, exactly as ``read_nifti`` does;
* :func:`finish_volume`: native byte order, NaN/Inf repaired with a warning, label maps by name or on
  request (the same rules as ``read_nifti``), a NIfTI header carrying the affine, and the ``Volume``;
* :data:`LPS_TO_RAS`: DICOM, ITK and most NRRD files use LPS (x to the patient's left, y posterior);
  ``Volume`` affines are RAS, so the first two world axes change sign. The matrix is its own inverse.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import VolumeError, VolumeWarning
from .nifti import MAX_CHANNELS, _fail, as_label_array, looks_like_labels_name
from .volume import Volume

FORMATS_EXTRA = 'pip install "napari-vit3d[formats]"'
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: the pip distribution of each importable format library
_DISTRIBUTIONS = {"pydicom": "pydicom", "highdicom": "highdicom", "nrrd": "pynrrd", "SimpleITK": "SimpleITK"}


#: ``VolumeError("<path>: <msg>")`` on one line, at most 400 characters (the NIfTI reader's, shared)
fail = _fail


def require(module: str, purpose: str):
    """``import module`` (lazily), or a one-line VolumeError telling how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        dist = _DISTRIBUTIONS.get(module, module)
        raise VolumeError(f"{purpose} needs the {dist} package, which is not installed: {FORMATS_EXTRA}") from None


def check_file(path: Path, what: str) -> None:
    """``path`` exists, is a readable regular file and is not empty (``what`` names the format)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise fail(path, "no such file") from None
    except OSError as exc:
        raise fail(path, f"cannot be opened ({exc.strerror or type(exc).__name__})") from None
    if path.is_dir():
        raise fail(path, f"is a folder, not a {what} file")
    if not path.is_file():
        raise fail(path, "is not a regular file")
    if not os.access(path, os.R_OK):
        raise fail(path, "cannot be read (permission denied)")
    if st.st_size == 0:
        raise fail(path, "is empty (0 bytes)")


def check_claim(path, shape, itemsize: int, max_bytes: int) -> None:
    """Refuse an array of ``shape`` × ``itemsize`` bytes over ``max_bytes`` before allocating it."""
    if any(int(s) <= 0 for s in shape):
        raise fail(path, f"has an empty dimension {tuple(int(s) for s in shape)}")
    nbytes = float(np.prod([float(s) for s in shape])) * itemsize
    if nbytes > max_bytes:
        raise fail(path, f"header claims {tuple(int(s) for s in shape)} voxels ({nbytes / 1024**3:.1f} GiB), "
                         f"over the {max_bytes / 1024**3:.1f} GiB limit; refusing to allocate")


def check_channels(path, shape) -> None:
    """A 4th (non-spatial) axis may hold at most ``MAX_CHANNELS`` volumes."""
    if len(shape) == 4 and int(shape[3]) > MAX_CHANNELS:
        raise fail(path, f"has {shape[3]} volumes along its 4th axis (a time series?); at most {MAX_CHANNELS} "
                         "channels are supported")
    if len(shape) > 4:
        raise fail(path, f"is {len(shape)}D {tuple(shape)}; only 3D scans and 4D multi-channel scans are supported")


def nifti_header_for(affine: np.ndarray, shape) -> nib.Nifti1Header:
    """A NIfTI-1 header whose qform and sform (code 1, scanner) hold ``affine``, in mm.

    Files read from other formats carry it as ``Volume.header``, so a label map written as NIfTI from
    them has the same geometry and says it is in scanner coordinates (as dcm2niix does).
    """
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(tuple(int(s) for s in shape))
    hdr.set_xyzt_units("mm")
    hdr.set_sform(affine, code=1)
    hdr.set_qform(affine, code=1)
    return hdr


def finish_volume(path: Path, data: np.ndarray, affine: np.ndarray, *, as_labels: bool | None, fmt: str,
                  name: str, source_path: str, metadata: dict | None = None, labels_by_name: bool = True,
                  header=None) -> Volume:
    """The :class:`Volume` of a file read by one of the format readers.

    ``as_labels=None`` decides like ``read_nifti``: a 3D file whose name says it is a label map (when
    ``labels_by_name``) and whose values are whole numbers. ``as_labels=True`` refuses non-integer
    values. Labels get an integer dtype, NaN/Inf voxels of float data become 0 with a warning.
    """
    data = np.asarray(data)
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    if data.dtype.kind not in "iuf":
        raise fail(path, f"has pixel type {data.dtype}, which is not a scan's (complex or structured values)")
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim < 3:
        raise fail(path, f"is {data.ndim}D {data.shape}; napari-vit3d needs a 3D volume")
    check_channels(path, data.shape)
    integer = data.dtype.kind in "iu"
    if not integer:
        if data.dtype != np.float32:
            data = data.astype(np.float32)
        finite = np.isfinite(data)
        if not finite.all():
            n_bad = int(data.size - np.count_nonzero(finite))
            if n_bad == data.size:
                raise fail(path, "contains no finite voxel values (all NaN/Inf)")
            warnings.warn(f"{path.name}: {n_bad} NaN/Inf voxels were set to 0", VolumeWarning, stacklevel=3)
            data = np.where(finite, data, np.float32(0)).astype(np.float32)
    auto = as_labels is None
    if auto:
        as_labels = labels_by_name and looks_like_labels_name(path) and data.ndim == 3
    if as_labels:
        data, as_labels = as_label_array(path, data, auto=auto)
    meta = {"kind": "labels" if as_labels else "image", "format": fmt, **(metadata or {})}
    affine = np.asarray(affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise fail(path, "has no usable voxel-to-world geometry (singular or non-finite)")
    if header is None:
        header = nifti_header_for(affine, data.shape)
    return Volume(data=data, affine=affine, header=header, name=name, source_path=source_path, metadata=meta)


def lps_affine(ras_affine) -> np.ndarray:
    """voxel → LPS mm from voxel → RAS mm (and back: the flip is its own inverse)."""
    return LPS_TO_RAS @ np.asarray(ras_affine, dtype=float)


__all__ = ["FORMATS_EXTRA", "LPS_TO_RAS", "check_channels", "check_claim", "check_file", "fail", "finish_volume",
           "lps_affine", "nifti_header_for", "require"]
