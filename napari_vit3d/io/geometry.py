"""Voxel ↔ world geometry and the exact display orientation.

World coordinates are scanner RAS+ millimetres. napari gets them in one fixed axis order for every
file, ``(S, A, R)``: napari world axis 0 is superior, 1 anterior, 2 right (all in mm). The scan's
array is permuted and flipped *exactly* (no resampling) so that its axes run along +S, +A, +R as
closely as the affine allows; whatever rotation is left (an oblique acquisition) stays in the layer's
affine. The viewer camera then shows axial slices with anterior at the top and the patient's right
on the screen's left (radiological) -- see ``napari_vit3d.gui.viewer_setup``.

Nothing here imports napari: this module only computes arrays and matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from ..errors import GeometryError

#: napari world axis order, as RAS axis indices: napari axis 0 = S (RAS index 2), 1 = A, 2 = R.
NAPARI_FROM_RAS = (2, 1, 0)
NAPARI_AXIS_LABELS = ("S (mm)", "A (mm)", "R (mm)")

_REVERSE = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def check_affine(affine: np.ndarray) -> np.ndarray:
    """Return ``affine`` as a float 4×4 array, or raise :class:`GeometryError` if it is unusable."""
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4):
        raise GeometryError(f"an affine must be 4×4, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise GeometryError("the affine contains NaN or infinite values")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise GeometryError("the affine is singular (a voxel has zero size)")
    return a


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis (column norms of the 3×3 part)."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


@dataclass(frozen=True)
class DisplayGeometry:
    """How a scan's spatial array maps to napari's (S, A, R) world.

    ``ornt`` is nibabel's orientation of the file axes onto RAS (one row per file axis: the RAS axis
    it runs along and +1/−1). :meth:`to_display` permutes and flips the first three array axes into
    napari order; :meth:`from_display` undoes it exactly. :attr:`display_affine` maps a napari data
    index (d0, d1, d2) to napari world (S, A, R) mm.
    """

    file_shape: tuple[int, int, int]
    affine: np.ndarray
    ornt: np.ndarray

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape) -> DisplayGeometry:
        a = check_affine(affine)
        shape3 = tuple(int(s) for s in shape[:3])
        if len(shape3) != 3:
            raise GeometryError(f"expected a 3D spatial shape, got {tuple(shape)}")
        return cls(file_shape=shape3, affine=a, ornt=io_orientation(a))

    # -- arrays -------------------------------------------------------------------------------
    @property
    def _to_nap_ornt(self) -> np.ndarray:
        """ornt transform from file axes to napari (S, A, R) axes."""
        ras_to_nap = np.array([[NAPARI_FROM_RAS.index(int(ax)), flip] for ax, flip in self.ornt])
        return ras_to_nap

    def to_display(self, data: np.ndarray) -> np.ndarray:
        """File-order array (spatial axes first; trailing axes kept) → napari display order (a view)."""
        return apply_orientation(data, self._to_nap_ornt)

    def from_display(self, data: np.ndarray) -> np.ndarray:
        """napari display-order array → the file's own voxel order (a view). Exact inverse of ``to_display``."""
        nap_ornt = self._to_nap_ornt
        identity = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
        back = ornt_transform(identity, nap_ornt)  # display axes -> file axes
        # ornt_transform(start, end) maps an array in `start` orientation to `end`; display arrays are
        # axis-aligned with napari (identity); we want the file orientation expressed in napari axes.
        return apply_orientation(data, back)

    @property
    def display_shape(self) -> tuple[int, int, int]:
        shape = [0, 0, 0]
        for file_ax, (nap_ax, _) in enumerate(self._to_nap_ornt):
            shape[int(nap_ax)] = self.file_shape[file_ax]
        return tuple(shape)

    # -- affines ------------------------------------------------------------------------------
    @property
    def display_affine(self) -> np.ndarray:
        """4×4: napari data index (d0, d1, d2) → napari world (S, A, R) mm."""
        nap_ornt = self._to_nap_ornt
        # inv_ornt_aff(ornt, shape) maps voxel indices of the re-oriented array back to file indices.
        display_to_file = inv_ornt_aff(nap_ornt, self.file_shape)
        return _REVERSE @ self.affine @ display_to_file

    @property
    def residual_rotation(self) -> np.ndarray:
        """The rotation left after the exact permutation/flip (identity for axis-aligned scans)."""
        lin = self.display_affine[:3, :3]
        return lin / voxel_spacing(self.display_affine)

    @property
    def is_oblique(self) -> bool:
        return not np.allclose(self.residual_rotation, np.eye(3), atol=1e-6)

    def napari_transform(self) -> dict:
        """Keyword arguments for a napari layer: ``scale``/``translate`` when axis-aligned, else ``affine``."""
        aff = self.display_affine
        if not self.is_oblique:
            return {"scale": tuple(float(v) for v in np.diag(aff)[:3]),
                    "translate": tuple(float(v) for v in aff[:3, 3])}
        return {"affine": aff}


def ras_to_napari_world(points_ras: np.ndarray) -> np.ndarray:
    """(…, 3) RAS mm → napari world (S, A, R) mm."""
    return np.asarray(points_ras)[..., list(NAPARI_FROM_RAS)]


def napari_world_to_ras(points_nap: np.ndarray) -> np.ndarray:
    """napari world (S, A, R) mm → (…, 3) RAS mm."""
    return np.asarray(points_nap)[..., list(NAPARI_FROM_RAS)]


def same_grid(affine_a, shape_a, affine_b, shape_b, *, atol: float = 1e-4) -> bool:
    """True when two volumes share shape (first three axes) and affine (to ``atol`` mm)."""
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and np.allclose(affine_a, affine_b, atol=atol)


def canonical_affine(affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """nibabel's closest-canonical (RAS) orientation: returns (ornt, ras_affine)."""
    ornt = io_orientation(check_affine(affine))
    return ornt, np.asarray(affine) @ inv_ornt_aff(ornt, tuple(shape[:3]))


__all__ = [
    "DisplayGeometry", "NAPARI_AXIS_LABELS", "NAPARI_FROM_RAS", "canonical_affine", "check_affine",
    "napari_world_to_ras", "ras_to_napari_world", "same_grid", "voxel_spacing", "nib",
]
