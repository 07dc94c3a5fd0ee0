"""Label corrections a reviewer applies after painting: 3D interpolation, clean-up and a diff.

All functions take and return plain integer arrays (the file's voxel order) and never change their
input; the GUI wraps each call in one undoable step.

* :func:`interpolate_slices` – fill the slices between annotated slices of one label by
  shape-based interpolation (linear blend of signed distance maps, in mm);
* :func:`remove_small_components` – drop connected pieces of a label smaller than a size;
* :func:`fill_holes` – fill background cavities enclosed by a label (3D or slice by slice);
* :func:`diff` – what a reviewer changed: a code map and voxels added/removed per label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import GeometryError, VolumeError

SAME, ADDED, REMOVED, CHANGED = 0, 1, 2, 3
DIFF_CODE_NAMES = {SAME: "unchanged", ADDED: "added (was background)", REMOVED: "removed (now background)",
                   CHANGED: "changed label"}


def _labels(arr, what="labels") -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 3:
        raise VolumeError(f"{what} must be a 3D label array, got shape {a.shape}")
    if a.dtype.kind not in "iub":
        raise VolumeError(f"{what} must be integers, got {a.dtype}")
    return a


def signed_distance(mask2d: np.ndarray, spacing=(1.0, 1.0)) -> np.ndarray:
    """Signed distance (mm) to the boundary of a 2D mask: negative inside, positive outside."""
    m = np.asarray(mask2d, bool)
    if not m.any():
        return np.full(m.shape, np.inf)
    if m.all():
        return np.full(m.shape, -np.inf)
    outside = ndimage.distance_transform_edt(~m, sampling=spacing)
    inside = ndimage.distance_transform_edt(m, sampling=spacing)
    return outside - inside


def interpolate_slices(labels: np.ndarray, label: int, axis: int = 2, *, spacing=(1.0, 1.0, 1.0),
                       overwrite: bool = False, max_gap: int | None = None) -> tuple[np.ndarray, int]:
    """Fill ``label`` on the slices between the slices along ``axis`` where it is drawn.

    For each run of empty slices between two annotated slices, the signed distance maps (in-plane,
    in mm using ``spacing``) of the two bounding slices are blended linearly by position and the
    label is set where the blend is negative. Only background voxels are painted unless
    ``overwrite``. Gaps longer than ``max_gap`` slices are left alone. Returns (new labels, number
    of voxels painted).
    """
    lab = _labels(labels)
    if axis not in (0, 1, 2):
        raise VolumeError(f"axis must be 0, 1 or 2, got {axis}")
    label = int(label)
    if label == 0:
        raise VolumeError("interpolate a foreground label, not background (0)")
    moved = np.moveaxis(lab, axis, 0)
    present = np.flatnonzero((moved == label).reshape(moved.shape[0], -1).any(axis=1))
    if present.size < 2:
        raise VolumeError(f"label {label} must be drawn on at least two slices along axis {axis} to interpolate "
                          f"(found {present.size})")
    sp = tuple(float(s) for i, s in enumerate(spacing) if i != axis)
    out = lab.copy()
    out_m = np.moveaxis(out, axis, 0)
    painted = 0
    for lo, hi in zip(present[:-1], present[1:]):
        gap = hi - lo - 1
        if gap <= 0 or (max_gap is not None and gap > max_gap):
            continue
        d_lo = signed_distance(moved[lo] == label, sp)
        d_hi = signed_distance(moved[hi] == label, sp)
        for s in range(lo + 1, hi):
            t = (s - lo) / (hi - lo)
            blend = (1 - t) * d_lo + t * d_hi
            fill = blend < 0
            if not overwrite:
                fill &= out_m[s] == 0
            else:
                fill &= out_m[s] != label
            out_m[s][fill] = label
            painted += int(fill.sum())
    return out, painted


def remove_small_components(labels: np.ndarray, *, min_voxels: int | None = None, min_ml: float | None = None,
                            voxel_volume_ml: float | None = None, only: list[int] | None = None,
                            connectivity: int = 1) -> tuple[np.ndarray, dict]:
    """Set to background every connected piece of a label smaller than the size limit.

    Give ``min_voxels``, or ``min_ml`` with ``voxel_volume_ml``. ``only`` restricts to some labels.
    Returns (new labels, ``{label: voxels removed}``).
    """
    lab = _labels(labels)
    if min_ml is not None:
        if not voxel_volume_ml or voxel_volume_ml <= 0:
            raise VolumeError("min_ml needs the voxel volume in mL (voxel_volume_ml)")
        limit = int(np.ceil(float(min_ml) / float(voxel_volume_ml) - 1e-9))
    elif min_voxels is not None:
        limit = int(min_voxels)
    else:
        raise VolumeError("give a minimum size: min_voxels or min_ml")
    structure = ndimage.generate_binary_structure(3, int(connectivity))
    out = lab.copy()
    removed = {}
    targets = [int(v) for v in np.unique(lab) if v != 0] if only is None else [int(v) for v in only]
    for v in targets:
        comp, n = ndimage.label(lab == v, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        small = np.flatnonzero(sizes < limit)
        small = small[small != 0]
        if small.size:
            kill = np.isin(comp, small)
            out[kill] = 0
            removed[v] = int(kill.sum())
    return out, removed


def fill_holes(labels: np.ndarray, *, only: list[int] | None = None,
               axis: int | None = None) -> tuple[np.ndarray, dict]:
    """Fill background cavities enclosed by a label (voxels of other labels are never overwritten).

    ``axis=None`` fills 3D cavities; ``axis=k`` fills holes slice by slice along axis k (2D holes,
    e.g. an open tube seen in cross-section). Returns (new labels, ``{label: voxels filled}``).
    """
    lab = _labels(labels)
    out = lab.copy()
    filled = {}
    targets = [int(v) for v in np.unique(lab) if v != 0] if only is None else [int(v) for v in only]
    for v in targets:
        m = lab == v
        if axis is None:
            full = ndimage.binary_fill_holes(m)
        else:
            mv = np.moveaxis(m, axis, 0)
            full = np.moveaxis(np.stack([ndimage.binary_fill_holes(s) for s in mv]), 0, axis)
        add = full & (out == 0)
        if add.any():
            out[add] = v
            filled[v] = int(add.sum())
    return out, filled


def label_volumes(labels: np.ndarray, affine) -> dict:
    """``{label: {"voxels": n, "ml": n × voxel volume}}`` for every non-zero label (voxel volume from |det A|)."""
    lab = _labels(labels)
    vox_ml = abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0
    values, counts = np.unique(lab, return_counts=True)
    return {int(v): {"voxels": int(c), "ml": float(c) * vox_ml} for v, c in zip(values, counts) if v != 0}


@dataclass
class LabelDiff:
    map: np.ndarray
    per_label: dict = field(default_factory=dict)

    @property
    def n_changed(self) -> int:
        return int(np.count_nonzero(self.map))


def diff(model_labels: np.ndarray, corrected: np.ndarray) -> LabelDiff:
    """What changed from ``model_labels`` to ``corrected``.

    ``map`` (uint8): 0 unchanged, 1 added (background → label), 2 removed (label → background),
    3 changed (one label → another). ``per_label[l]``: ``voxels_added`` (now l, was not),
    ``voxels_removed`` (was l, is not), ``voxels_model``, ``voxels_corrected``, ``dice`` between the
    model's and the corrected mask of l (1.0 when both empty).
    """
    a = _labels(model_labels, "model labels")
    b = _labels(corrected, "corrected labels")
    if a.shape != b.shape:
        raise GeometryError(f"model labels {a.shape} and corrected labels {b.shape} are not on one grid")
    changed = a != b
    m = np.zeros(a.shape, np.uint8)
    m[changed & (a == 0)] = ADDED
    m[changed & (b == 0)] = REMOVED
    m[changed & (a != 0) & (b != 0)] = CHANGED
    per = {}
    ca, cb = a[changed], b[changed]
    ua, na = np.unique(a, return_counts=True)
    ub, nb = np.unique(b, return_counts=True)
    count_a = dict(zip(ua.tolist(), na.tolist()))
    count_b = dict(zip(ub.tolist(), nb.tolist()))
    for v in sorted((set(count_a) | set(count_b)) - {0}):
        added = int(np.count_nonzero(cb == v))
        removed = int(np.count_nonzero(ca == v))
        nm = int(count_a.get(v, 0))
        nc = int(count_b.get(v, 0))
        both = nm - removed  # voxels l in the model that stayed l
        per[int(v)] = {"voxels_added": added, "voxels_removed": removed, "voxels_model": nm,
                       "voxels_corrected": nc, "dice": 1.0 if nm + nc == 0 else 2.0 * both / (nm + nc)}
    return LabelDiff(map=m, per_label=per)


__all__ = ["ADDED", "CHANGED", "DIFF_CODE_NAMES", "LabelDiff", "REMOVED", "SAME", "diff", "fill_holes",
           "interpolate_slices", "label_volumes", "remove_small_components", "signed_distance"]
