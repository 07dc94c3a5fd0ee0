"""Segmentation metrics between a prediction and a reference, in millimetres and millilitres.

Per label: Dice, HD95, mean symmetric surface distance (MSD), recall, precision, volume difference
and, when class probabilities are given, the area under the precision–recall curve (AUC-PR, as
average precision). Dice and the surface distances are MONAI's implementations (``DiceMetric``,
``HausdorffDistanceMetric(percentile=95)``, ``SurfaceDistanceMetric(symmetric=True)``) with the
voxel spacing passed at call time. See ``docs/review.md`` for the exact definitions.

Geometry: the spacing is the column norms of the affine's 3×3 part. For axis-aligned grids and for
oblique grids whose affine is a rotation times a scaling (orthogonal columns: every scanner
acquisition), distances between voxel centres computed with that spacing equal world distances
exactly. A sheared affine (non-orthogonal columns) is handled separately: surface voxels (MONAI's
edges) are mapped to world mm through the full affine and distances are nearest-neighbour distances
in world space (a KD-tree), so they stay exact; ``distance_method`` in the result says which path ran.

Empty masks (defined values, never NaN; JSON stays valid):

=====================  ======  ===========  =========  ==========  =======
case                   dice    hd95, msd    recall     precision   auc_pr
=====================  ======  ===========  =========  ==========  =======
both empty             1.0     0.0          1.0        1.0         null
reference empty only   0.0     null         null       0.0         null
prediction empty only  0.0     null         0.0        null        (computed)
=====================  ======  ===========  =========  ==========  =======

Each label entry carries ``pred_empty`` and ``ref_empty`` flags so a ``null`` is never ambiguous.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from nibabel.affines import apply_affine

from ..errors import GeometryError, VolumeError
from ..io.geometry import same_grid, voxel_spacing
from ..io.resample import resample_to_grid
from ..io.volume import Volume

METRIC_KEYS = ("dice", "hd95", "msd", "recall", "precision", "volume_diff_ml")


# -- small helpers ----------------------------------------------------------------------------------
def is_sheared(affine, tol: float = 1e-6) -> bool:
    """True when the affine's columns are not orthogonal (a shear, not only rotation + scaling)."""
    lin = np.asarray(affine, float)[:3, :3]
    unit = lin / np.linalg.norm(lin, axis=0)
    gram = unit.T @ unit
    return bool(np.max(np.abs(gram - np.eye(3))) > tol)


def _bbox_crop(*masks: np.ndarray, margin: int = 1):
    """Crop masks to the bounding box of their union plus ``margin`` (zero-padded at array borders).

    Returns the cropped masks and the voxel offset of the crop's origin in the original array.
    """
    union = np.zeros(masks[0].shape, bool)
    for m in masks:
        union |= m
    if not union.any():
        return masks, np.zeros(3, int)
    lo, hi = [], []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        nz = np.flatnonzero(union.any(axis=other))
        lo.append(int(nz[0]))
        hi.append(int(nz[-1]) + 1)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    pad = [(margin, margin)] * 3
    out = tuple(np.pad(m[sl], pad) for m in masks)
    return out, np.array(lo) - margin


def _as_tensor(mask: np.ndarray):
    import torch
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def dice_monai(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Dice of two non-empty-union binary masks with MONAI's ``DiceMetric``."""
    from monai.metrics import DiceMetric
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    return float(metric(y_pred=_as_tensor(pred_mask), y=_as_tensor(ref_mask))[0, 0])


def _world_edge_distances(pred_mask, ref_mask, affine, offset):
    """Directed edge→edge distances in world mm through the full affine (for sheared grids)."""
    from monai.metrics.utils import get_mask_edges
    from scipy.spatial import cKDTree
    ep, er = get_mask_edges(pred_mask, ref_mask, crop=False)  # numpy in, numpy out
    wp = apply_affine(affine, np.argwhere(ep) + offset)
    wr = apply_affine(affine, np.argwhere(er) + offset)
    d_pr = cKDTree(wr).query(wp, k=1)[0]
    d_rp = cKDTree(wp).query(wr, k=1)[0]
    return d_pr, d_rp


def surface_distances(pred_mask: np.ndarray, ref_mask: np.ndarray, affine) -> tuple[float, float, str]:
    """(HD95, MSD, method) in mm for two **non-empty** binary masks on the grid of ``affine``."""
    (p, r), offset = _bbox_crop(pred_mask.astype(bool), ref_mask.astype(bool))
    if is_sheared(affine):
        d_pr, d_rp = _world_edge_distances(p, r, np.asarray(affine, float), offset)
        hd95 = max(float(np.quantile(d_pr, 0.95)), float(np.quantile(d_rp, 0.95)))
        msd = float(np.concatenate([d_pr, d_rp]).mean())
        return hd95, msd, "world-kdtree"
    from monai.metrics import HausdorffDistanceMetric, SurfaceDistanceMetric
    spacing = [float(s) for s in voxel_spacing(affine)]
    tp, tr = _as_tensor(p), _as_tensor(r)
    hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    sd = SurfaceDistanceMetric(include_background=True, symmetric=True, reduction="none")
    with warnings.catch_warnings():  # MONAI warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = float(hd(y_pred=tp, y=tr, spacing=spacing)[0, 0])
        msd = float(sd(y_pred=tp, y=tr, spacing=spacing)[0, 0])
    return hd95, msd, "monai-spacing"


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """Area under the precision–recall curve as average precision: Σ (Rₖ − Rₖ₋₁)·Pₖ over thresholds.

    Every distinct score is a threshold (voxels with tied scores enter together). ``None`` when
    ``truth`` has no positive voxel (recall undefined).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=bool).ravel()
    n_pos = int(truth.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    tp = np.cumsum(t, dtype=np.int64)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each tied-score group
    tp = tp[last].astype(np.float64)
    n = (last + 1).astype(np.float64)
    precision = tp / n
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _num(x):
    """float or None (never NaN/inf) for JSON."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def binary_metrics(pred_mask: np.ndarray, ref_mask: np.ndarray, affine, *,
                   probability: np.ndarray | None = None) -> dict:
    """All metrics for one label given as two binary masks on one grid (``affine`` voxel→mm)."""
    pred_mask = np.asarray(pred_mask, bool)
    ref_mask = np.asarray(ref_mask, bool)
    if pred_mask.shape != ref_mask.shape:
        raise GeometryError(f"masks differ in shape: {pred_mask.shape} vs {ref_mask.shape}")
    vox_ml = abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0
    n_pred, n_ref = int(pred_mask.sum()), int(ref_mask.sum())
    tp = int(np.count_nonzero(pred_mask & ref_mask))
    out = {"pred_empty": n_pred == 0, "ref_empty": n_ref == 0,
           "voxels_pred": n_pred, "voxels_ref": n_ref, "true_positives": tp,
           "volume_pred_ml": n_pred * vox_ml, "volume_ref_ml": n_ref * vox_ml,
           "volume_diff_ml": (n_pred - n_ref) * vox_ml}
    if n_pred == 0 and n_ref == 0:
        out.update(dice=1.0, hd95=0.0, msd=0.0, recall=1.0, precision=1.0, distance_method=None)
    elif n_pred == 0 or n_ref == 0:
        out.update(dice=0.0, hd95=None, msd=None, distance_method=None,
                   recall=None if n_ref == 0 else 0.0, precision=None if n_pred == 0 else 0.0)
    else:
        (p, r), _ = _bbox_crop(pred_mask, ref_mask)
        hd95, msd, method = surface_distances(pred_mask, ref_mask, affine)
        out.update(dice=_num(dice_monai(p, r)), hd95=_num(hd95), msd=_num(msd), distance_method=method,
                   recall=tp / n_ref, precision=tp / n_pred)
    if probability is not None:
        probability = np.asarray(probability)
        if probability.shape != ref_mask.shape:
            raise GeometryError(f"probabilities of shape {probability.shape} do not match the masks {ref_mask.shape}")
        out["auc_pr"] = _num(average_precision(probability, ref_mask))
    return out


# -- volumes ----------------------------------------------------------------------------------------
def _label_array(vol: Volume, what: str) -> np.ndarray:
    data = np.asarray(vol.data)
    if data.ndim != 3:
        raise VolumeError(f"{what} ({vol.name}) must be a 3D label map, got shape {data.shape}")
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise VolumeError(f"{what} ({vol.name}) has non-integer values; "
                              "is it a probability map rather than labels?")
        data = data.astype(np.int64)
    elif data.dtype.kind == "b":
        data = data.astype(np.uint8)
    return data


def _grid_message(a: Volume, b: Volume, what_a: str, what_b: str) -> str:
    if a.spatial_shape != b.spatial_shape:
        diff = f"shape {a.spatial_shape} vs {b.spatial_shape}"
    else:
        diff = f"affines differ by up to {float(np.max(np.abs(a.affine - b.affine))):.4g} mm"
    return (f"{what_a} ({a.name}) and {what_b} ({b.name}) are not on the same grid ({diff}); "
            f"resample one onto the other (--resample: nearest neighbour onto {what_a}'s grid)")


def evaluate(pred: Volume, ref: Volume, *, probabilities: Volume | None = None, labels=None,
             include_background: bool = False, resample: bool = False, label_table=None) -> dict:
    """Per-label metrics of ``pred`` against ``ref`` (both label-map Volumes).

    ``labels``: label values to evaluate (default: every value present in either map, background 0
    only with ``include_background``). ``probabilities``: a Volume on ``pred``'s grid, 4D with one
    channel per label value (channel c = probability of label c) or 3D when a single foreground label
    1 is evaluated; a probabilities Volume from ``inference.segment`` says in ``metadata["classes"]``
    which label each channel holds, and that is used instead. ``resample``: when the grids differ,
    ``ref`` is resampled onto ``pred``'s grid with nearest neighbour (and probabilities, if on another
    grid, with linear interpolation); without it a :class:`GeometryError` is raised.

    Returns a JSON-ready dict: ``labels`` maps ``str(label)`` to the entry of :func:`binary_metrics`
    (plus ``name``), ``mean`` averages each metric over labels where it is defined.
    """
    resampled = False
    if not same_grid(pred.affine, pred.spatial_shape, ref.affine, ref.spatial_shape):
        if not resample:
            raise GeometryError(_grid_message(pred, ref, "prediction", "reference"))
        ref = resample_to_grid(ref, pred.affine, pred.spatial_shape, order=0)
        resampled = True
    p = _label_array(pred, "prediction")
    r = _label_array(ref, "reference")
    prob, chan = None, None
    if probabilities is not None:
        if not same_grid(pred.affine, pred.spatial_shape, probabilities.affine, probabilities.spatial_shape):
            if not resample:
                raise GeometryError(_grid_message(pred, probabilities, "prediction", "probabilities"))
            probabilities = resample_to_grid(probabilities, pred.affine, pred.spatial_shape, order=1)
        prob = np.asarray(probabilities.data)
        classes = probabilities.metadata.get("classes")
        if classes is not None and prob.ndim == 4:  # engine output: channel i holds label classes[i]
            if len(classes) != prob.shape[3]:
                raise VolumeError(f"probabilities list {len(classes)} classes for {prob.shape[3]} channels")
            chan = {int(v): i for i, v in enumerate(classes)}
        else:
            chan = None
    if labels is None:
        present = set(np.unique(p).tolist()) | set(np.unique(r).tolist())
        labels = sorted(present | ({0} if include_background else set()))
    labels = [int(lab) for lab in labels if include_background or int(lab) != 0]
    if prob is not None:
        if prob.ndim == 3 and labels != [1]:
            raise VolumeError("3D probabilities can only be used for a single foreground label 1; "
                              "give one channel per label (4D, channel c = label c)")
        missing = [lab for lab in labels if lab not in chan] if chan is not None else []
        if missing:
            raise VolumeError(f"probabilities have no channel for label(s) {missing}")
        if chan is None and prob.ndim == 4 and labels and max(labels) >= prob.shape[3]:
            raise VolumeError(f"probabilities have {prob.shape[3]} channels but label {max(labels)} is evaluated "
                              "(channel c must hold the probability of label c)")
    entries = {}
    methods = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MONAI's empty-mask warnings: handled above
        for lab in labels:
            pl = None if prob is None else (prob if prob.ndim == 3 else prob[..., lab if chan is None else chan[lab]])
            e = binary_metrics(p == lab, r == lab, pred.affine, probability=pl)
            if label_table is not None:
                e["name"] = label_table.name(lab)
            else:
                e["name"] = "background" if lab == 0 else f"label {lab}"
            entries[str(lab)] = e
            if e["distance_method"]:
                methods.add(e["distance_method"])
    keys = METRIC_KEYS + (("auc_pr",) if prob is not None else ())
    mean = {}
    for k in keys:
        vals = [e[k] for e in entries.values() if e.get(k) is not None]
        mean[k] = float(np.mean(vals)) if vals else None
    return {
        "prediction": pred.source_path or pred.name,
        "reference": ref.source_path or ref.name,
        "shape": list(pred.spatial_shape),
        "spacing_mm": [float(s) for s in voxel_spacing(pred.affine)],
        "voxel_volume_ml": pred.voxel_volume_ml,
        "resampled_reference": resampled,
        "include_background": bool(include_background),
        "distance_method": sorted(methods)[0] if len(methods) == 1 else (sorted(methods) or None),
        "labels": entries,
        "mean": mean,
    }


__all__ = ["METRIC_KEYS", "average_precision", "binary_metrics", "dice_monai", "evaluate", "is_sheared",
           "surface_distances"]
