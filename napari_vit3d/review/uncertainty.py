"""Where is the model likely wrong? Voxel-wise uncertainty and a ranked list of uncertain regions.

* :func:`softmax_entropy` – entropy of the class probabilities, divided by log(C) so that 0 means
  one class has probability 1 and 1 means all classes are equally likely.
* :func:`tta_uncertainty` – from several probability maps of the same scan (test-time augmentation,
  e.g. flips, or an ensemble): predictive entropy of the mean, expected entropy, mutual information
  (their difference: the part due to disagreement between members) and the fraction of members whose
  label differs from the consensus. :func:`flip_tta` makes the members from a ``predict`` callable.
* :func:`uncertain_regions` – connected regions above a threshold, ranked by mean uncertainty × size,
  with centroid (voxel and world RAS mm), most uncertain voxel, size in mL and bounding box: what
  the GUI walks through with "jump to next".

Probability arrays have the class axis last: ``(X, Y, Z, C)``, as in a probabilities ``Volume``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from nibabel.affines import apply_affine
from scipy import ndimage

from ..errors import VolumeError
from ..io.volume import Volume

_EPS = 1e-12


def _probs(p) -> tuple[np.ndarray, Volume | None]:
    vol = p if isinstance(p, Volume) else None
    arr = np.asarray(vol.data if vol is not None else p, dtype=np.float32)
    if arr.ndim < 2 or arr.shape[-1] < 2:
        raise VolumeError(f"probabilities need a class axis last with at least 2 classes, got shape {arr.shape}")
    return arr, vol


def entropy(probs: np.ndarray, *, normalize: bool = True) -> np.ndarray:
    """−Σ p log p over the last axis (natural log), divided by log(C) when ``normalize``."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    h = -np.sum(np.where(p > 0, p * np.log(np.maximum(p, _EPS)), 0.0), axis=-1)
    if normalize:
        h = h / np.log(p.shape[-1])
    return np.clip(h, 0.0, None).astype(np.float32)


def softmax_entropy(probabilities, *, normalize: bool = True):
    """Normalised softmax entropy in [0, 1] per voxel; a Volume in → a Volume out (same grid)."""
    arr, vol = _probs(probabilities)
    h = entropy(arr, normalize=normalize)
    if vol is None:
        return h
    return vol.with_data(h, name=f"{vol.name} · entropy",
                         metadata={**vol.metadata, "kind": "uncertainty", "method": "softmax_entropy",
                                   "units": "normalised entropy (0..1)" if normalize else "nats"})


def tta_uncertainty(members: Sequence[np.ndarray]) -> dict:
    """Uncertainty from M probability maps of one scan (each ``(X, Y, Z, C)``, arrays or Volumes,
    e.g. the output of ``inference.predict_tta``).

    Returns arrays: ``mean_probs`` (X, Y, Z, C); ``predictive_entropy`` = H(mean p)/log C;
    ``expected_entropy`` = mean of H(p_m)/log C; ``mutual_information`` = their difference (≥ 0,
    0 when all members agree); ``disagreement`` = fraction of members whose argmax differs from the
    argmax of the mean; ``labels`` = argmax of the mean.
    """
    if len(members) < 2:
        raise VolumeError("test-time-augmentation uncertainty needs at least 2 probability maps")
    arrs = [np.asarray(m.data if isinstance(m, Volume) else m, dtype=np.float32) for m in members]
    shape = arrs[0].shape
    if any(a.shape != shape for a in arrs):
        raise VolumeError(f"all probability maps must have the same shape; got {sorted({a.shape for a in arrs})}")
    _probs(arrs[0])
    mean = np.mean(arrs, axis=0)
    pred_h = entropy(mean)
    exp_h = np.mean([entropy(a) for a in arrs], axis=0).astype(np.float32)
    labels = np.argmax(mean, axis=-1)
    disagree = np.mean([np.argmax(a, axis=-1) != labels for a in arrs], axis=0).astype(np.float32)
    return {"mean_probs": mean, "predictive_entropy": pred_h, "expected_entropy": exp_h,
            "mutual_information": np.clip(pred_h - exp_h, 0.0, None).astype(np.float32),
            "disagreement": disagree, "labels": labels}


#: the 8 flip combinations of three spatial axes
ALL_FLIPS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))


def flip_tta(predict: Callable[[np.ndarray], np.ndarray], array: np.ndarray,
             flips: Sequence[tuple[int, ...]] = ((), (0,), (1,), (2,))) -> list[np.ndarray]:
    """Probability maps from ``predict`` on flipped copies of ``array``, each flipped back.

    ``predict(array) -> (X, Y, Z, C)`` probabilities for an array with spatial axes first (channels
    last if any); only spatial axes 0–2 are flipped. Feed the result to :func:`tta_uncertainty`.
    """
    out = []
    for axes in flips:
        if any(a not in (0, 1, 2) for a in axes):
            raise VolumeError(f"flip axes must be spatial (0, 1, 2), got {axes}")
        x = np.flip(array, axis=axes) if axes else array
        p = np.asarray(predict(np.ascontiguousarray(x)))
        out.append(np.ascontiguousarray(np.flip(p, axis=axes)) if axes else p)
    return out


@dataclass
class UncertainRegion:
    rank: int
    n_voxels: int
    volume_ml: float
    mean_uncertainty: float
    max_uncertainty: float
    score: float
    centroid_voxel: tuple[float, float, float]
    centroid_ras: tuple[float, float, float]
    peak_voxel: tuple[int, int, int]
    peak_ras: tuple[float, float, float]
    bbox_min: tuple[int, int, int]
    bbox_max: tuple[int, int, int]

    def to_dict(self) -> dict:
        return asdict(self)


def uncertain_regions(uncertainty, threshold: float, affine=None, min_voxels: int = 1, *,
                      connectivity: int = 1, max_regions: int | None = None) -> list[UncertainRegion]:
    """Connected regions where ``uncertainty > threshold``, most important first.

    ``score`` = mean uncertainty × volume in mL (or × voxels when no affine is known) – a large,
    very uncertain region comes first. ``centroid_*`` is the region's mean position (it can lie
    outside a curved region); ``peak_*`` is its most uncertain voxel (always inside: the place to
    jump to; on ties the first in C order). ``bbox_max`` is inclusive. ``connectivity`` 1 = faces,
    2 = edges, 3 = corners.
    ``uncertainty`` may be a Volume (its affine is used when ``affine`` is None).
    """
    if isinstance(uncertainty, Volume):
        affine = uncertainty.affine if affine is None else affine
        u = np.asarray(uncertainty.data, dtype=np.float32)
    else:
        u = np.asarray(uncertainty, dtype=np.float32)
    if u.ndim != 3:
        raise VolumeError(f"an uncertainty map must be 3D, got shape {u.shape}")
    aff = np.eye(4) if affine is None else np.asarray(affine, float)
    vox_ml = abs(float(np.linalg.det(aff[:3, :3]))) / 1000.0
    structure = ndimage.generate_binary_structure(3, int(connectivity))
    lab, n = ndimage.label(u > threshold, structure=structure)
    if n == 0:
        return []
    flat = lab.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:]
    sums = np.bincount(flat, weights=u.ravel().astype(np.float64), minlength=n + 1)[1:]
    keep = np.flatnonzero(counts >= max(int(min_voxels), 1))
    if keep.size == 0:
        return []
    means = sums / np.maximum(counts, 1)
    size = counts * vox_ml if affine is not None else counts.astype(np.float64)
    scores = means * size
    order = keep[np.argsort(-scores[keep], kind="stable")]
    if max_regions is not None:
        order = order[: int(max_regions)]
    ids = order + 1  # label numbers of the kept regions, in rank order
    slices = ndimage.find_objects(lab)
    # centroids, peaks and maxima for all kept regions at once (a per-region loop over tens of thousands of
    # small regions, as on a noisy map, costs seconds)
    kept = np.zeros(n + 1, bool)
    kept[ids] = True
    inside = np.flatnonzero(flat)
    inside = inside[kept[flat[inside]]]  # voxels of the kept regions, in C order
    region_of = flat[inside]
    vals = u.ravel()[inside].astype(np.float64)
    coords = np.unravel_index(inside, u.shape)
    centroids = np.stack([np.bincount(region_of, weights=c.astype(np.float64), minlength=n + 1)[ids]
                          for c in coords], axis=1) / counts[order][:, None]
    best = np.full(n + 1, -np.inf)
    np.maximum.at(best, region_of, vals)
    maxima = best[ids]
    # peak: the region's first voxel (C order) holding its maximum
    at_max = vals == best[region_of]
    first_region, first_at = np.unique(region_of[at_max], return_index=True)
    peak_flat = np.empty(n + 1, dtype=np.int64)
    peak_flat[first_region] = inside[at_max][first_at]
    peaks = np.stack(np.unravel_index(peak_flat[ids], u.shape), axis=1)
    ras = apply_affine(aff, np.concatenate([centroids, peaks.astype(np.float64)]))
    c_ras, p_ras = ras[: len(ids)], ras[len(ids):]
    regions = []
    for rank, (i, centroid, peak, cr, pr, mx) in enumerate(zip(order, centroids, peaks, c_ras, p_ras, maxima), 1):
        sl = slices[i]
        regions.append(UncertainRegion(
            rank=rank, n_voxels=int(counts[i]), volume_ml=float(counts[i] * vox_ml),
            mean_uncertainty=float(means[i]), max_uncertainty=float(mx), score=float(scores[i]),
            centroid_voxel=tuple(float(v) for v in centroid), centroid_ras=tuple(float(v) for v in cr),
            peak_voxel=tuple(int(v) for v in peak), peak_ras=tuple(float(v) for v in pr),
            bbox_min=tuple(int(q.start) for q in sl), bbox_max=tuple(int(q.stop) - 1 for q in sl)))
    return regions


__all__ = ["ALL_FLIPS", "UncertainRegion", "entropy", "flip_tta", "softmax_entropy", "tta_uncertainty",
           "uncertain_regions"]
