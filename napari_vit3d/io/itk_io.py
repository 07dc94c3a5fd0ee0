"""MetaImage (``.mha``, ``.mhd`` + raw data) with SimpleITK.

ITK's physical space is LPS. A voxel index (i, j, k) (ITK's x, y, z index) lies at
``origin + D @ diag(spacing) @ (i, j, k)``, D the 3×3 direction matrix (row-major in SimpleITK);
the :class:`Volume` affine is that matrix with the first two world axes negated (LPS → RAS).
SimpleITK arrays come back indexed (z, y, x[, component]) and are transposed to (i, j, k[, c]), so
the data are in the file's own voxel order, like every ``Volume``.

Before any pixel is read, :class:`SimpleITK.ImageFileReader` reads the header only
(``ReadImageInformation``) so the size guard sees the declared dimensions first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import VolumeError
from ._scan_common import LPS_TO_RAS, check_claim, check_file, fail, finish_volume, require
from .atomic import atomic_write
from .volume import Volume

ITK_SUFFIXES = (".mha", ".mhd")
WRITE_SUFFIXES = (".mha",)


def is_itk_path(path) -> bool:
    return str(path).lower().endswith(ITK_SUFFIXES)


def _sitk():
    return require("SimpleITK", "reading or writing MetaImage (.mha/.mhd)")


def itk_affine(direction, spacing, origin) -> np.ndarray:
    """voxel → RAS 4×4 from ITK's (row-major 3×3 direction, spacing, origin), all in LPS."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = d @ np.diag(np.asarray(spacing, dtype=float))
    lps[:3, 3] = np.asarray(origin, dtype=float)
    return LPS_TO_RAS @ lps


def read_itk(path, *, as_labels: bool | None = None, max_bytes: int) -> Volume:
    """Read a MetaImage scan or label map into a :class:`Volume` (RAS affine, data (i, j, k[, c]))."""
    path = Path(path)
    check_file(path, "MetaImage")
    if not is_itk_path(path):
        raise fail(path, "is not a MetaImage file (expected .mha or .mhd)")
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise fail(path, "is not a valid MetaImage file (SimpleITK cannot read its header)") from None
    dim = reader.GetDimension()
    size = list(reader.GetSize())
    comps = int(reader.GetNumberOfComponents())
    if dim != 3:
        raise fail(path, f"is {dim}D {tuple(size)}; napari-vit3d needs a 3D volume")
    pixel = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    if "complex" in pixel.lower():
        raise fail(path, f"has {pixel} pixels, which are not a scan's")
    shape = (*size, comps) if comps > 1 else tuple(size)
    check_claim(path, shape, 4, max_bytes)  # at most float32/int32 per value after conversion
    if comps > 8:
        raise fail(path, f"has {comps} components per voxel; at most 8 channels are supported")
    try:
        img = reader.Execute()
    except RuntimeError:
        raise fail(path, "is truncated or corrupt (SimpleITK could not read its pixel data; for .mhd, is the "
                         "data file beside it?)") from None
    except MemoryError:
        raise fail(path, "does not fit in memory") from None
    affine = itk_affine(img.GetDirection(), img.GetSpacing(), img.GetOrigin())
    arr = sitk.GetArrayFromImage(img)  # (z, y, x[, c])
    data = np.transpose(arr, (2, 1, 0, 3) if arr.ndim == 4 else (2, 1, 0))
    name = path.name[: -len(path.suffix)] if path.suffix else path.name
    return finish_volume(path, data, affine, as_labels=as_labels, fmt="metaimage", name=name,
                         source_path=str(path.resolve()))


def write_mha(path, data: np.ndarray, affine) -> Path:
    """Write ``data`` (file voxel order (i, j, k), or 4D with channels last) on ``affine`` (voxel → RAS)
    as a compressed single-file MetaImage (``.mha``), atomically."""
    sitk = _sitk()
    path = Path(path)
    if not str(path).lower().endswith(WRITE_SUFFIXES):
        raise VolumeError(f"{path}: MetaImage output must end in .mha (one file; .mhd needs a second data file)")
    arr = np.asarray(data)
    if arr.ndim not in (3, 4):
        raise VolumeError(f"{path}: can only write 3D volumes (or 4D with channels last), got shape {arr.shape}")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    zyx = np.ascontiguousarray(np.transpose(arr, (2, 1, 0, 3) if arr.ndim == 4 else (2, 1, 0)))
    img = sitk.GetImageFromArray(zyx, isVector=arr.ndim == 4)
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    img.SetOrigin([float(v) for v in lps[:3, 3]])

    def writer(tmp):
        try:
            sitk.WriteImage(img, tmp, True)
        except RuntimeError as exc:  # ITK's write failures (disk full, permission) arrive as RuntimeError
            raise OSError(f"SimpleITK could not write the file ({str(exc).splitlines()[-1][:120]})") from None

    return atomic_write(path, writer, suffix=".mha")


__all__ = ["ITK_SUFFIXES", "is_itk_path", "itk_affine", "read_itk", "write_mha"]
