"""Clicks: where a user (or the simulated user) clicks, and how clicks enter the network.

The simulated-user protocol (SAM, nnInteractive, the CVPR 2025 interactive 3D challenge) is the one
home for click simulation, shared by training (``training.prompt_data``) and the benchmark
(``benchmarks/bench_prompt.py``):

* the **first click** is the object's voxel farthest from its border (distances in mm);
* each **next click** is the voxel farthest from the border of the *largest error component*
  (missed or extra, whichever component is larger, by volume): positive if it was missed, negative
  if it was extra.

Clicks enter the promptable network as two extra input channels (positive, negative) holding a
small ball of ones around each click (radius in crop voxels), the previous mask as a fourth.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def border_distance(mask: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Distance (mm) of every voxel of ``mask`` to the nearest voxel outside it (the array's edge counts
    as outside); zero outside the mask."""
    m = np.pad(np.asarray(mask, bool), 1)
    d = ndimage.distance_transform_edt(m, sampling=[float(s) for s in spacing])
    return d[1:-1, 1:-1, 1:-1]


def farthest_point(mask: np.ndarray, spacing=(1.0, 1.0, 1.0), *, rng: np.random.Generator | None = None,
                   jitter: float = 0.0) -> tuple[int, int, int] | None:
    """The voxel of ``mask`` farthest from its border (ties: the first in C order), or ``None`` if empty.

    With ``jitter`` > 0 and a generator, a random voxel among those at least ``(1 − jitter)`` × the
    maximum distance (training draws clicks that are deep but not always the deepest).
    """
    m = np.asarray(mask, bool)
    if not m.any():
        return None
    d = border_distance(m, spacing)
    if jitter > 0 and rng is not None:
        cand = np.argwhere(d >= (1.0 - jitter) * d.max())
        return tuple(int(v) for v in cand[int(rng.integers(len(cand)))])
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(d)), d.shape))


def largest_error(gt: np.ndarray, pred: np.ndarray, spacing=(1.0, 1.0, 1.0)):
    """``(component mask, positive)`` of the largest connected error region, or ``(None, None)`` if none.

    ``positive`` is True for a missed region (in ``gt``, not in ``pred``), False for an extra one.
    """
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    best, best_n, best_pos = None, 0, None
    for region, positive in ((gt & ~pred, True), (pred & ~gt, False)):
        if not region.any():
            continue
        lab, n = ndimage.label(region)
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        k = int(np.argmax(sizes))
        if sizes[k] > best_n:
            best, best_n, best_pos = lab == k, int(sizes[k]), positive
    return best, best_pos


def next_click(gt: np.ndarray, pred: np.ndarray, spacing=(1.0, 1.0, 1.0), *, rng=None, jitter: float = 0.0):
    """The simulated user's next click ``(voxel, positive)`` for prediction ``pred``, or ``None`` if perfect."""
    comp, positive = largest_error(gt, pred, spacing)
    if comp is None:
        return None
    return farthest_point(comp, spacing, rng=rng, jitter=jitter), bool(positive)


def ball_offsets(radius: float) -> np.ndarray:
    """Integer offsets (n, 3) within ``radius`` voxels of the origin (the origin always included)."""
    r = max(0.0, float(radius))
    k = int(np.ceil(r))
    g = np.stack(np.meshgrid(*[np.arange(-k, k + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return g[np.sum(g * g, axis=1) <= r * r + 1e-9]


def encode_points(shape, points, radius: float) -> np.ndarray:
    """A float32 map of ``shape`` with a ball of ones of ``radius`` voxels at each point (crop voxel
    coordinates, rounded); points whose ball misses the array are ignored."""
    out = np.zeros(tuple(int(s) for s in shape), np.float32)
    if points is None or len(points) == 0:
        return out
    offs = ball_offsets(radius)
    shp = np.asarray(out.shape)
    for p in np.atleast_2d(np.asarray(points, float)):
        idx = np.floor(p + 0.5).astype(int)[None, :] + offs
        ok = np.all((idx >= 0) & (idx < shp), axis=1)
        if ok.any():
            i = idx[ok]
            out[i[:, 0], i[:, 1], i[:, 2]] = 1.0
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / s if s else 1.0




#: the promptable network's input channels, in order
CHANNELS = ("image", "positive clicks", "negative clicks", "previous mask")


def network_input(image: np.ndarray, positive, negative, previous: np.ndarray | None, radius: float) -> np.ndarray:
    """(4, X, Y, Z) float32: the normalised crop, positive and negative click balls, the previous mask (0/1)."""
    image = np.asarray(image, np.float32)
    prev = np.zeros(image.shape, np.float32) if previous is None else (np.asarray(previous) > 0.5).astype(np.float32)
    return np.stack([image, encode_points(image.shape, positive, radius), encode_points(image.shape, negative, radius),
                     prev])


__all__ = ["CHANNELS", "ball_offsets", "border_distance", "dice", "encode_points", "network_input", "farthest_point",
           "largest_error", "next_click"]
