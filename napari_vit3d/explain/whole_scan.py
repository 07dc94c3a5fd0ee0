"""Token maps over the whole scan for fixed-window ViTs: DINO head attention and feature similarity.

A ViT with a learned positional embedding sees one fixed window (``dino-vit-brain``: 64³ voxels
at 2 mm, a 128 mm box), smaller than a head. To show a map over the whole scan, the padded model
grid is **tiled with windows** and each window's token map is stitched in by a documented rule:

* windows start every half window along each axis (``overlap`` 0.5), the last one flush with the
  grid's far edge, so every voxel lies in at least one window and most in several;
* inside a window each voxel gets the map of the window's tokens, interpolated between token
  centres (``ExplainSession.place_tokens``);
* where windows overlap, their values are averaged with a weight that is largest at the window's
  centre and falls off towards its faces (a separable Gaussian with σ = ¼ of the window per axis,
  floored at 1e-3 so a voxel seen only near a face still gets that window's value). A voxel's value
  thus comes mostly from the window in which it is most central: the window faces, where a ViT's
  attention has position artefacts, weigh least.

This is a rule for *showing* per-window quantities side by side, not the output of one forward pass;
the metadata of every stitched map lists the windows used.
"""

from __future__ import annotations

import numpy as np

from ..errors import Cancelled

__all__ = ["blend_weights", "stitch", "tile_starts"]


def tile_starts(grid_shape, roi, overlap: float = 0.5) -> list[tuple[int, int, int]]:
    """Window starts tiling ``grid_shape`` with windows of ``roi``: every ``roi × (1 − overlap)`` voxels
    along each axis, the last window flush with the far edge (a grid no larger than the window: one start)."""
    per_axis = []
    for n, r in zip(grid_shape, roi):
        n, r = int(n), int(r)
        if n <= r:
            per_axis.append([0])
            continue
        step = max(1, int(round(r * (1.0 - float(overlap)))))
        starts = list(range(0, n - r + 1, step))
        if starts[-1] != n - r:
            starts.append(n - r)
        per_axis.append(starts)
    return [(a, b, c) for a in per_axis[0] for b in per_axis[1] for c in per_axis[2]]


def blend_weights(roi, sigma_scale: float = 0.25, floor: float = 1e-3) -> np.ndarray:
    """The per-voxel weight of a window's value: a separable Gaussian centred on the window,
    σ = ``sigma_scale`` × window size per axis, floored at ``floor`` (float32, shape ``roi``)."""
    axes = []
    for r in roi:
        x = np.arange(int(r), dtype=np.float64) - (int(r) - 1) / 2.0
        axes.append(np.exp(-0.5 * (x / (sigma_scale * int(r))) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(w / w.max(), floor).astype(np.float32)


def stitch(session, window_maps, *, overlap: float = 0.5, progress=None, cancel=None):
    """Stitch per-window token maps over the session's whole padded model grid.

    ``window_maps(start) → (token_maps (*grid.shape, C), token_grid)`` computes one window's maps.
    Returns ``(maps (C, X, Y, Z) on the padded model grid, starts)``. ``progress(done, total)`` after
    every window; ``cancel()`` before each stops with :class:`~napari_vit3d.errors.Cancelled`.
    """
    starts = tile_starts(session.grid_shape, session.roi, overlap)
    weight = blend_weights(session.roi)
    acc = wsum = None
    for i, start in enumerate(starts):
        if cancel is not None and cancel():
            raise Cancelled("explanation was cancelled")
        maps, grid = window_maps(start)
        placed = session.place_tokens(maps, grid, start)
        if acc is None:
            acc = np.zeros_like(placed)
            wsum = np.zeros(placed.shape[1:], np.float32)
        sl = tuple(slice(s, s + r) for s, r in zip(start, session.roi))
        acc[(slice(None),) + sl] += placed[(slice(None),) + sl] * weight
        wsum[sl] += weight
        if progress is not None:
            progress(i + 1, len(starts))
    return acc / np.maximum(wsum, 1e-12), starts
