"""Clicks: where a user (or the simulated user) clicks, and how clicks enter the network.

The simulated-user protocol (SAM, nnInteractive, the CVPR 2025 interactive 3D challenge) is the one
home for click simulation, shared by training (``training.prompt_data``) and the benchmark
(``benchmarks/bench_prompt.py``):

* the **first click** is the object's voxel farthest from its border (distances in mm);
* each **next click** is the voxel farthest from the border of the *largest error component*
  (missed or extra, whichever component is larger, by volume): positive if it was missed, negative
  if it was extra.

Clicks enter the promptable network as two extra input channels (positive, negative) holding a
small ball of ones around each click (radius in crop voxels), the previous mask as a fourth. A model
whose spec asks for the **geodesic** encoding (``extra.click_encoding = {"kind": "geodesic", ...}``)
gets, in each click channel, the ball plus ``exp(−D / tau)`` where ``D`` is the geodesic distance (crop
voxels) from the channel's clicks over the crop image, each voxel step costing ``1 + edge × |∇I|²``
(the gradient of the normalised crop, smoothed): low inside the region the click is on, jumping at its
image edges (the DeepIGeoS idea, Wang et al. 2018). It is computed at half resolution (skimage's
``MCP_Geometric``) and upsampled, so it costs a few hundredths of a second per channel.
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


def geodesic_map(image: np.ndarray, points, *, tau: float = 10.0, edge: float = 1000.0) -> np.ndarray:
    """``exp(−D / tau)`` (float32, ``image``'s shape): ``D`` the geodesic distance in voxels from ``points``
    (voxel coordinates) over ``image``, a step costing ``1 + edge × |∇I|²``; zeros without points. Computed
    on a half-resolution grid and upsampled (linear)."""
    from skimage.graph import MCP_Geometric

    image = np.asarray(image, np.float32)
    if points is None or len(points) == 0:
        return np.zeros(image.shape, np.float32)
    g = ndimage.gaussian_gradient_magnitude(image, 0.7)
    full = 1.0 + float(edge) * g * g
    n = (np.asarray(image.shape) + 1) // 2
    pad = [(0, 2 * k - s) for k, s in zip(n, image.shape)]
    cost = np.pad(full, pad, mode="edge").reshape(n[0], 2, n[1], 2, n[2], 2).mean(axis=(1, 3, 5))
    shp = np.asarray(cost.shape)
    starts = {tuple(int(v) for v in np.clip(np.floor(np.asarray(p, float) / 2), 0, shp - 1))
              for p in np.atleast_2d(np.asarray(points, float))}
    d, _ = MCP_Geometric(cost, fully_connected=True).find_costs(sorted(starts))
    e = np.exp(-2.0 * np.asarray(d, np.float32) / float(tau)).astype(np.float32)
    up = ndimage.zoom(e, np.asarray(image.shape) / shp, order=1, grid_mode=True, mode="nearest")
    return np.clip(up[tuple(slice(0, n) for n in image.shape)], 0, 1).astype(np.float32)


def encode_clicks(image: np.ndarray, points, radius: float, encoding: dict | None = None) -> np.ndarray:
    """One click channel: the balls (:func:`encode_points`), with the geodesic encoding also
    :func:`geodesic_map` (the larger of the two per voxel)."""
    balls = encode_points(image.shape, points, radius)
    kind = (encoding or {}).get("kind", "ball")
    if kind == "ball" or points is None or len(points) == 0:
        return balls
    if kind != "geodesic":
        raise ValueError(f"unknown click encoding {kind!r} (ball or geodesic)")
    geo = geodesic_map(image, points, **{k: float(encoding[k]) for k in ("tau", "edge") if k in encoding})
    return np.maximum(balls, geo)


def network_input(image: np.ndarray, positive, negative, previous: np.ndarray | None, radius: float,
                  encoding: dict | None = None) -> np.ndarray:
    """(4, X, Y, Z) float32: the normalised crop, the positive and negative click channels (balls, or the
    geodesic encoding: module docstring), the previous mask (0/1)."""
    image = np.asarray(image, np.float32)
    prev = np.zeros(image.shape, np.float32) if previous is None else (np.asarray(previous) > 0.5).astype(np.float32)
    return np.stack([image, encode_clicks(image, positive, radius, encoding),
                     encode_clicks(image, negative, radius, encoding), prev])


__all__ = ["CHANNELS", "ball_offsets", "border_distance", "dice", "encode_clicks", "encode_points", "farthest_point",
           "geodesic_map", "largest_error", "network_input", "next_click"]
