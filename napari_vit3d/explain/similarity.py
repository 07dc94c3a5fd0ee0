"""Feature similarity ("similar tissue"): how alike every patch's frozen ViT feature is to a clicked one.

The simplest way to see what a self-supervised encoder learned: click a voxel, and every patch of
the scan is coloured by the cosine similarity of its feature to the clicked patch's feature. The
features are the encoder's patch tokens — after the final layer norm by default (the features a
linear probe or the decoder reads), or the output of block ``layer`` — with the CLS token left out.

* ``coverage="scan"`` (the default): one pass over the whole scan with the positional embedding
  resized (:mod:`napari_vit3d.explain.whole_scan`; ViTSeg), the query's feature taken from the same
  pass — one feature per patch of the scan, compared with one another. Networks whose positional
  embedding cannot be resized (MONAI's UNETR) and scans too large for one pass use tiles.
* ``coverage="tiles"``: the query's feature from the window centred on the query; the grid tiled
  with native windows and the per-window maps stitched by that module's rule.
* ``coverage="window"``: only the window centred on the query.

Values are cosines in [−1, 1] (1 = the clicked patch's own direction), interpolated between patch
centres.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ModelError
from .capture import family
from .session import ExplainSession, query_world
from .tokens import TokenGrid
from .whole_scan import stitch, whole_scan_session

__all__ = ["feature_similarity", "patch_features"]


def _encoder(network):
    """(callable x → (tokens, hidden states), patch grid shape) for a ViT-family network."""
    if hasattr(network, "forward_features") and hasattr(network, "feat_size"):
        return network.forward_features, tuple(int(s) for s in network.feat_size)
    vit = getattr(network, "vit", None)
    if vit is not None and hasattr(network, "feat_size"):
        return vit, tuple(int(s) for s in network.feat_size)
    raise ModelError(f"feature similarity needs a ViT encoder with patch tokens; {type(network).__name__} has none")


def patch_features(session: ExplainSession, start, *, layer: int | None = None) -> tuple[np.ndarray, TokenGrid]:
    """The patch-token features of the window at ``start``: ``(features (*patch grid, D) float32, token grid)``.

    ``layer`` None: the encoder's output after its final norm; an integer: that block's output."""
    net = session.network
    encode, feat = _encoder(net)
    x = session.start_window(start, "attention")
    if hasattr(net, "token_grid"):
        feat = net.token_grid(x)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            tokens, hidden = encode(x)
    finally:
        net.train(was_training)
    if layer is not None:
        n = len(hidden)
        if not -n <= int(layer) < n:
            raise ModelError(f"layer {layer} is out of range: the encoder has {n} blocks")
        tokens = hidden[int(layer)]
    n_patch = int(np.prod(feat))
    n_prefix = int(tokens.shape[1]) - n_patch
    if n_prefix < 0:
        raise ModelError(f"the encoder returned {tokens.shape[1]} tokens for a {feat} patch grid")
    f = tokens[0, n_prefix:].float().cpu().numpy().reshape(*feat, -1)
    return f, TokenGrid.tiles(session.roi, feat)


def _cosine(features: np.ndarray, query: np.ndarray) -> np.ndarray:
    f = features.reshape(-1, features.shape[-1]).astype(np.float64)
    q = query.astype(np.float64)
    den = np.linalg.norm(f, axis=1) * np.linalg.norm(q)
    cos = np.where(den > 0, f @ q / np.where(den > 0, den, 1.0), 0.0)
    return cos.reshape(features.shape[:-1]).astype(np.float32)


def _query_token(session: ExplainSession, world, start, grid: TokenGrid) -> tuple[int, int, int]:
    q = session.model_voxel(world) - np.asarray(start, float)
    idx = np.floor((q - np.asarray(grid.origin)) / np.asarray(grid.step) + 0.5).astype(int)
    return tuple(int(i) for i in np.clip(idx, 0, np.asarray(grid.shape) - 1))


def feature_similarity(model, volume, *, voxel=None, world=None, layer: int | None = None, coverage: str = "scan",
                       session: ExplainSession | None = None, progress=None, cancel=None):
    """Cosine similarity of every patch's feature to the clicked patch's (a map on the scan's grid)."""
    if coverage not in ("scan", "tiles", "window"):
        raise ModelError(f"coverage must be 'scan', 'tiles' or 'window', got {coverage!r}")
    sess = session if session is not None else ExplainSession(model, volume)
    if sess.family != "vit":
        raise ModelError(f"feature similarity needs a ViT encoder (vit_seg, UNETR); {sess.model_name} is "
                         f"{sess.spec.architecture} ({family(sess.network)} attention)")
    w = query_world(volume, voxel=voxel, world=world)
    whole = whole_scan_session(sess) if coverage == "scan" else None
    if whole is not None:
        start = (0, 0, 0)
        feats, grid = patch_features(whole, start, layer=layer)
        q_token = _query_token(whole, w, start, grid)
        maps = whole.place_tokens(_cosine(feats, feats[q_token]), grid, start)
        maps = maps[(slice(None),) + tuple(slice(0, g) for g in sess.grid_shape)]
        if progress is not None:
            progress(1, 1)
        meta = {"method": "similar", "units": "cosine similarity of the patch feature to the clicked patch's",
                "layer": "final norm" if layer is None else int(layer), "coverage": "scan",
                "query_world_mm": np.round(w, 3).tolist(), "query_token": list(q_token),
                "token_grid": list(grid.shape), "window_size": list(whole.roi),
                "parameters": {"layer": layer, "coverage": "scan"}}
        return sess.make_volume(sess.to_scan(maps), name="similar tissue", metadata=meta)
    used = "window" if coverage == "window" else "tiles"
    q_start = sess.centred_window(w)
    q_feat, grid = patch_features(sess, q_start, layer=layer)
    q_token = _query_token(sess, w, q_start, grid)
    query = q_feat[q_token]

    if coverage == "window":
        model_maps = sess.place_tokens(_cosine(q_feat, query), grid, q_start)
        starts = [q_start]
        if progress is not None:
            progress(1, 1)
    else:
        def window_maps(start):
            feats, g = (q_feat, grid) if tuple(start) == tuple(q_start) else patch_features(sess, start, layer=layer)
            return _cosine(feats, query), g

        model_maps, starts = stitch(sess, window_maps, progress=progress, cancel=cancel)
    scan = sess.to_scan(model_maps)
    meta = {"method": "similar", "units": "cosine similarity of the patch feature to the clicked patch's",
            "layer": "final norm" if layer is None else int(layer), "coverage": used,
            "query_world_mm": np.round(w, 3).tolist(), "query_window": sess.window_info(q_start),
            "query_token": list(q_token), "windows": [list(s) for s in starts],
            "parameters": {"layer": layer, "coverage": used}}
    return sess.make_volume(scan, name="similar tissue", metadata=meta)
