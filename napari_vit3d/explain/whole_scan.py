"""Token maps over the whole scan for fixed-window ViTs: DINO head attention and feature similarity.

A ViT with a learned positional embedding sees one fixed window (``dino-vit-brain``: 64³ voxels
at 2 mm, a 128 mm box), smaller than a head. Two ways to show a map over the whole scan:

**One pass over the whole scan** (``coverage="scan"``, the default; :func:`whole_scan_session`): the
padded model grid (its far faces padded with zeros up to a multiple of the patch) is one window, and
the positional embedding is resized trilinearly to its token grid (``models.vit_seg.vit_tokens``:
DINO's way of showing attention on images larger than the training crops). Every token attends to
every other over the whole head in one softmax, so the map has no window seams. The network never
saw such a window in training; that is the price. Above :data:`MAX_WHOLE_SCAN_TOKENS` tokens
(attention memory grows with their square) the tiles below are used instead, and the map's metadata
says so.

**Tiles** (``coverage="tiles"``): the padded model grid is **tiled with windows** of the native size
and each window's token map is stitched in by a documented rule:

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

from types import SimpleNamespace

import numpy as np

from ..errors import Cancelled

__all__ = ["MAX_WHOLE_SCAN_TOKENS", "blend_weights", "patch_size_of", "stitch", "tile_starts",
           "whole_scan_session"]

#: the most tokens one whole-scan pass may have (a 2 mm adult head: 2,000–3,100; a rotated copy with air
#: around it up to 5,200); beyond it, tiles
MAX_WHOLE_SCAN_TOKENS = 6000


def patch_size_of(network) -> int:
    """The (cubic) patch size of a ViT-family network (ViTSeg: an int; MONAI UNETR: a tuple)."""
    p = network.patch_size
    return int(p[0] if isinstance(p, (tuple, list)) else p)


def whole_scan_session(session):
    """An ``ExplainSession`` on ``session``'s prepared scan whose one window is the whole padded model grid
    (far faces zero-padded to a multiple of the patch), or None when that window would hold more than
    :data:`MAX_WHOLE_SCAN_TOKENS` patch tokens or the network takes only its native window. Kept on
    ``session``, so a second whole-scan map of the same scan (DINO heads, then their masks) reuses the
    captured pass."""
    if "_whole_scan" not in session.__dict__:
        session._whole_scan = _make_whole_scan_session(session)
    return session._whole_scan


def _make_whole_scan_session(session):
    import dataclasses

    import torch.nn.functional as F

    from .session import ExplainSession

    if not hasattr(session.network, "token_grid"):   # MONAI's UNETR / ViT: fixed positional embedding
        return None
    patch = patch_size_of(session.network)
    mi = session.model_input
    shape = [int(s) for s in mi.tensor.shape[2:]]
    target = [-(-s // patch) * patch for s in shape]
    if int(np.prod([t // patch for t in target])) > MAX_WHOLE_SCAN_TOKENS:
        return None
    pad = []
    for s, t in zip(reversed(shape), reversed(target)):
        pad += [0, t - s]
    tensor = F.pad(mi.tensor, pad) if any(pad) else mi.tensor
    whole = dataclasses.replace(mi, tensor=tensor)
    model = SimpleNamespace(network=session.network, spec=session.spec, weights_sha256=session.weights_sha256)
    return ExplainSession(model, session.volume, model_input=whole, roi_size=tuple(target))


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
