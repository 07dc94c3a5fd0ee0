"""The crop a promptable model sees: a cube of voxels around the clicks, at one zoom level.

A crop is a grid of ``size`` voxels with isotropic ``spacing`` mm whose axes are the scan's own axes
re-ordered to RAS (exactly as ``inference.model_orientation`` re-orients a scan for a model; an
oblique scan keeps its rotation), centred on a world point. Because the crop's axes run along the
scan's axes, sampling the scan onto it and mapping a result back are axis-by-axis (separable)
linear interpolations (``inference.preprocess.resample_edge``). Results go back only into the part
of the scan grid the crop covers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import GeometryError
from ..inference.preprocess import model_orientation
from ..io.geometry import voxel_spacing
from ..io.resample import resample_edge


@dataclass(frozen=True)
class Crop:
    """A crop grid: ``affine`` maps crop voxel (i, j, k) to RAS mm; ``shape`` voxels of ``spacing`` mm."""

    affine: np.ndarray
    shape: tuple[int, int, int]
    spacing: float

    @property
    def centre_world(self) -> np.ndarray:
        return self.affine[:3, :3] @ ((np.asarray(self.shape, float) - 1) / 2) + self.affine[:3, 3]

    @property
    def fov_mm(self) -> float:
        return float(self.spacing * min(self.shape))

    def to_voxel(self, world) -> np.ndarray:
        """World mm (…, 3) → crop voxel coordinates (…, 3), not rounded."""
        w = np.asarray(world, float)
        return (w - self.affine[:3, 3]) @ np.linalg.inv(self.affine[:3, :3]).T

    def contains(self, world, margin: float = 0.0) -> bool:
        """True if every world point lies inside the crop, at least ``margin`` × size from its faces."""
        v = np.atleast_2d(self.to_voxel(world))
        lo = margin * np.asarray(self.shape) - 0.5
        hi = (1 - margin) * np.asarray(self.shape) - 0.5
        return bool(np.all(v >= lo) and np.all(v <= hi))

    def key(self) -> tuple:
        return (round(self.spacing, 4), self.shape, tuple(np.round(self.affine[:3, 3], 3)))


def make_crop(scan_affine: np.ndarray, scan_shape, centre_world, spacing: float, size) -> Crop:
    """The crop of ``size`` voxels of ``spacing`` mm centred on ``centre_world`` along the scan's axes (RAS order)."""
    size = tuple(int(s) for s in size)
    if len(size) != 3 or min(size) <= 0:
        raise GeometryError(f"a crop needs three positive sizes, got {size}")
    if not np.isfinite(spacing) or spacing <= 0:
        raise GeometryError(f"a crop needs a positive spacing, got {spacing}")
    _, aff_o = model_orientation(np.asarray(scan_affine, float), tuple(scan_shape), "RAS")
    dirs = aff_o[:3, :3] / voxel_spacing(aff_o)[None, :]
    a = np.eye(4)
    a[:3, :3] = dirs * float(spacing)
    a[:3, 3] = np.asarray(centre_world, float) - a[:3, :3] @ ((np.asarray(size, float) - 1) / 2)
    return Crop(a, size, float(spacing))


def sample_scan(data: np.ndarray, scan_affine: np.ndarray, crop: Crop, *, order: int = 1) -> np.ndarray:
    """The scan's 3D ``data`` on the crop grid (float32; beyond the scan: its minimum, masks: 0)."""
    data = np.asarray(data)
    if order == 0:
        from ..io.resample import resample_array

        return resample_array(data, scan_affine, crop.affine, crop.shape, order=0, cval=0)
    cval = float(np.min(data)) if data.size else 0.0
    return resample_edge(data.astype(np.float32, copy=False), scan_affine, crop.affine, crop.shape, order=1, cval=cval)


def scan_box(crop: Crop, scan_affine: np.ndarray, scan_shape) -> tuple[slice, slice, slice] | None:
    """The slices of the scan grid that the crop covers (with one voxel of margin), or ``None``."""
    n = np.asarray(crop.shape, float)
    corners = np.array([[a, b, c] for a in (-0.5, n[0] - 0.5) for b in (-0.5, n[1] - 0.5) for c in (-0.5, n[2] - 0.5)])
    world = corners @ crop.affine[:3, :3].T + crop.affine[:3, 3]
    vox = (world - scan_affine[:3, 3]) @ np.linalg.inv(scan_affine[:3, :3]).T
    lo = np.maximum(np.floor(vox.min(0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(vox.max(0)).astype(int) + 2, np.asarray(scan_shape))
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def crop_to_scan(values: np.ndarray, crop: Crop, scan_affine: np.ndarray, scan_shape) -> np.ndarray:
    """Crop-grid values (float) → the scan grid by linear interpolation; zero where the crop does not reach."""
    out = np.zeros(tuple(int(s) for s in scan_shape), np.float32)
    box = scan_box(crop, scan_affine, scan_shape)
    if box is None:
        return out
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in box]
    sub_shape = tuple(s.stop - s.start for s in box)
    out[box] = resample_edge(np.asarray(values, np.float32), crop.affine, scan_affine @ shift, sub_shape,
                             order=1, cval=0.0)
    return out


__all__ = ["Crop", "crop_to_scan", "make_crop", "sample_scan", "scan_box"]
