"""FreeSurfer MGH/MGZ (``.mgh``, ``.mgz``) with nibabel (already a dependency: nothing extra to install).

The MGH header's vox2ras matrix (``MGHImage.affine``) already maps voxel indices to scanner RAS mm,
so it is the :class:`Volume` affine as it is. FreeSurfer label volumes (``aseg.mgz``,
``aparc+aseg.mgz``, ``*seg*``) open as label maps by name, like NIfTI files.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ._scan_common import check_claim, check_file, fail, finish_volume
from .volume import Volume

MGH_SUFFIXES = (".mgh", ".mgz")
_HEADER_BYTES = 284


def is_mgh_path(path) -> bool:
    return str(path).lower().endswith(MGH_SUFFIXES)


def read_mgh(path, *, as_labels: bool | None = None, max_bytes: int) -> Volume:
    """Read an MGH/MGZ scan or label map into a :class:`Volume` (data in the file's voxel order)."""
    path = Path(path)
    check_file(path, "MGH/MGZ")
    if not is_mgh_path(path):
        raise fail(path, "is not an MGH/MGZ file (expected .mgh or .mgz)")
    if path.name.lower().endswith(".mgz"):
        with open(path, "rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                raise fail(path, "is named .mgz but is not gzip-compressed")
    try:
        img = nib.load(str(path), mmap=False)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise fail(path, f"is not a valid MGH/MGZ file or is truncated ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, nib.MGHImage):
        raise fail(path, f"is a {type(img).__name__}, not MGH/MGZ")
    hdr = img.header
    shape = tuple(int(s) for s in hdr.get_data_shape())
    dtype = hdr.get_data_dtype()
    if len(shape) < 3:
        raise fail(path, f"is {len(shape)}D {shape}; napari-vit3d needs a 3D volume")
    check_claim(path, shape, max(dtype.itemsize, 4) if dtype.kind == "f" else dtype.itemsize, max_bytes)
    if not path.name.lower().endswith(".mgz"):
        need = _HEADER_BYTES + int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        have = path.stat().st_size
        if have < need:
            raise fail(path, f"is truncated: the header promises {need} bytes, the file has {have}")
    try:
        data = np.asanyarray(img.dataobj)
    except MemoryError:
        raise fail(path, "does not fit in memory") from None
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise fail(path, f"is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    data = np.asarray(data).reshape(shape)
    name = path.name[: -len(path.suffix)]
    return finish_volume(path, data, img.affine, as_labels=as_labels, fmt="mgh", name=name,
                         source_path=str(path.resolve()))


__all__ = ["MGH_SUFFIXES", "is_mgh_path", "read_mgh"]
