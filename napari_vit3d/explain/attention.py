"""Point attention, attention rollout and DINO per-head CLS attention, as maps on the scan grid.

Each public function takes ``(model, volume, query, options)`` and returns a
:class:`~napari_vit3d.io.Volume` on the scan's own grid whose ``metadata`` records the method, model,
layer, head, query, window and parameters. The math works on captured queries/keys
(:mod:`.capture`) and never materialises more than one row-chunk of one layer's attention.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import Cancelled, ModelError
from ..io.volume import Volume
from .capture import AttentionCapture, has_cls_token
from .memory import ROLLOUT_CHUNK_BYTES
from .session import ExplainSession, query_world
from .whole_scan import stitch, whole_scan_session

HEAD_FUSIONS = ("mean", "max", "min")
ATTENTION_UNITS = "attention weight (softmax probability of each key token, interpolated between token centres)"


def _session(model, volume, session) -> ExplainSession:
    if session is not None:
        return session
    return ExplainSession(model, volume)


def _select_heads(spatial: torch.Tensor, head) -> tuple[np.ndarray, str]:
    """(heads, *grid) → (*grid, C) for head = 'mean' | 'all' | int."""
    h = spatial.shape[0]
    if head is None or head == "mean":
        return spatial.mean(0).numpy()[..., None], "mean"
    if head == "all":
        return np.moveaxis(spatial.numpy(), 0, -1), "all"
    try:
        hi = int(head)
    except (TypeError, ValueError):
        raise ModelError(f"head must be 'mean', 'all' or a head number, got {head!r}") from None
    if not 0 <= hi < h:
        raise ModelError(f"head {hi} does not exist: this layer has {h} heads (0..{h - 1})")
    return spatial[hi].numpy()[..., None], hi


def _grid_meta(grid, window_affine) -> dict:
    return {"shape": list(grid.shape), "origin_window_voxel": list(grid.origin), "step_window_voxels": list(grid.step),
            "token_to_world": grid.affine(window_affine).round(6).tolist()}


def point_attention(model, volume: Volume, *, voxel=None, world=None, layer=None, head="mean",
                    session: ExplainSession | None = None, reuse_window: bool = True, grid: str = "scan",
                    progress=None, cancel=None) -> Volume:
    """Attention from the token holding the query voxel to every key token of one layer.

    ViT / UNETR: global attention over all patch tokens (attention to CLS is in the metadata).
    Swin-UNETR: attention within the query's (shifted) window of that block; the window, stage and
    the mass on padding tokens are in the metadata. SegFormer3D: attention to the spatially reduced
    keys, placed at the reduced tokens' centres.

    ``grid="scan"`` (default) returns the map on the scan's grid; ``grid="tokens"`` returns the raw
    token map with its token-index → world affine (token centres), which a viewer can show without
    any resampling (a new click then costs only the row).
    """
    sess = _session(model, volume, session)
    w = query_world(volume, voxel=voxel, world=world)
    start = sess.window_for(w, reuse=reuse_window)
    cap = sess.capture(start, progress=progress, cancel=cancel)
    L = cap.resolve_layer(layer)
    qg = cap.query_grid(L)
    qwin = sess.model_voxel(w) - np.asarray(start)
    token = qg.nearest_token(qwin)
    row = cap.row(L, token)
    maps, head_used = _select_heads(row.spatial, head)
    waff = sess.window_affine(start)
    if grid not in ("scan", "tokens"):
        raise ModelError(f"grid must be 'scan' or 'tokens', got {grid!r}")
    meta = {
        "method": "attention", "layer": L, "layer_name": row.info["name"], "stage": row.info["stage"],
        "head": head_used, "n_heads": row.heads, "units": ATTENTION_UNITS,
        "query": {"world_mm": np.round(w, 4).tolist(), "token": list(token),
                  "token_centre_world_mm": np.round(qg.affine(waff)[:3, :3] @ np.asarray(token)
                                                    + qg.affine(waff)[:3, 3], 4).tolist()},
        "window": sess.window_info(start), "key_grid": _grid_meta(row.key_grid, waff),
        "attention_to_cls": row.prefix.sum(-1).tolist(), "attention_to_padding": row.padding_mass.tolist(),
        "parameters": {"layer": L, "head": head_used},
    }
    for k in ("window_index", "window_size", "shift", "shifted", "stage_shape", "padded_stage_shape"):
        if k in row.info:
            meta.setdefault("swin", {})[k] = row.info[k]
    name = f"attention L{L} " + (f"h{head_used}" if head_used not in ("mean", "all") else str(head_used))
    if grid == "tokens":
        data = maps[..., 0] if maps.shape[-1] == 1 else maps
        return Volume(data=np.ascontiguousarray(data, dtype=np.float32), affine=row.key_grid.affine(waff),
                      name=f"{volume.name} · {name} (tokens)",
                      metadata={"kind": "map", "model": sess.model_name, "grid": "tokens", **meta})
    scan = sess.to_scan(sess.place_tokens(maps, row.key_grid, start))
    return sess.make_volume(scan, name=name, metadata=meta)


# ----------------------------------------------------------------------------------------------
# rollout

def fuse_heads(att: torch.Tensor, mode: str) -> torch.Tensor:
    """(heads, rows, N) → (rows, N) by mean / max / min over heads."""
    if mode == "mean":
        return att.mean(0)
    if mode == "max":
        return att.max(0).values
    if mode == "min":
        return att.min(0).values
    raise ModelError(f"head fusion must be one of {', '.join(HEAD_FUSIONS)}, got {mode!r}")


def discard_lowest(fused: torch.Tensor, row_ids: torch.Tensor, ratio: float, n_prefix: int) -> torch.Tensor:
    """Zero the lowest ``ratio`` of each row's entries, never the row's own (identity) entry nor CLS.

    ``fused`` (rows, N) holds rows ``row_ids`` of one layer's fused attention. Per row, the
    ``floor(ratio × (N − protected))`` smallest unprotected entries are set to zero.
    """
    if ratio <= 0:
        return fused
    if not 0 <= ratio < 1:
        raise ModelError(f"discard ratio must be in [0, 1), got {ratio}")
    rows, n = fused.shape
    protected = torch.zeros(rows, n, dtype=torch.bool)
    protected[torch.arange(rows), row_ids] = True
    if n_prefix:
        protected[:, :n_prefix] = True
    n_prot = protected.sum(1)
    k = torch.floor(ratio * (n - n_prot).double()).long()  # per row
    kmax = int(k.max())
    if kmax == 0:
        return fused
    masked = fused.masked_fill(protected, float("inf"))
    low = torch.topk(masked, kmax, dim=1, largest=False).indices  # (rows, kmax), ascending
    keep_rank = torch.arange(kmax)[None, :] < k[:, None]
    out = fused.clone()
    r_idx = torch.arange(rows)[:, None].expand_as(low)
    out[r_idx[keep_rank], low[keep_rank]] = 0.0
    return out


@torch.no_grad()
def rollout_vector(cap: AttentionCapture, seq_index: int, *, head_fusion: str = "mean", discard_ratio: float = 0.0,
                   start_layer: int = 0, end_layer: int | None = None, chunk_bytes: int = ROLLOUT_CHUNK_BYTES,
                   cancel=None) -> torch.Tensor:
    """Row ``seq_index`` of the attention rollout ``Â_end ⋯ Â_start`` (Abnar & Zuidema 2020).

    ``Â_l = rownorm(discard(fuse_heads(A_l)) + I)``. Computed as a row vector ``v ← v · Â_l`` from the
    last layer down to ``start_layer``; each ``Â_l`` is built ``chunk`` rows at a time from the
    captured queries/keys, so memory is ``O(heads · chunk · N)`` (bounded by ``chunk_bytes``) plus
    the vector, never ``O(N²)`` per layer nor ``O(L · N²)``.
    """
    n_layers = len(cap.layers)
    end = n_layers - 1 if end_layer is None else cap.resolve_layer(end_layer)
    start = cap.resolve_layer(start_layer)
    if start > end:
        raise ModelError(f"rollout start layer {start} is after the end layer {end}")
    if any(cap.layers[i].kind != "global" for i in range(start, end + 1)):
        raise ModelError("attention rollout needs global attention in every layer (ViT / UNETR / ViTSeg); "
                         "Swin-UNETR and SegFormer3D attention is windowed or spatially reduced")
    n = int(cap.store[end]["k"].shape[1])
    v = torch.zeros(n, dtype=torch.float64)
    v[int(seq_index)] = 1.0
    for layer in range(end, start - 1, -1):
        if cancel is not None and cancel():
            raise Cancelled("explanation was cancelled")
        heads = cap.layers[layer].num_heads
        npre = cap.n_prefix(layer)
        chunk = max(1, int(chunk_bytes // max(1, heads * n * 4)))
        nz = torch.nonzero(v).flatten()
        new = torch.zeros_like(v)
        for i in range(0, len(nz), chunk):
            ids = nz[i:i + chunk]
            fused = fuse_heads(cap.rows(layer, ids), head_fusion).double()  # (c, N)
            fused = discard_lowest(fused, ids, discard_ratio, npre)
            fused[torch.arange(len(ids)), ids] += 1.0  # + I
            fused = fused / fused.sum(dim=-1, keepdim=True)
            new += v[ids] @ fused
        v = new
    return v


def attention_rollout(model, volume: Volume, *, voxel=None, world=None, head_fusion: str = "mean",
                      discard_ratio: float = 0.0, start_layer: int = 0, session: ExplainSession | None = None,
                      reuse_window: bool = True, progress=None, cancel=None) -> Volume:
    """Attention rollout map: the CLS row for CLS models (no query), the query token's row otherwise."""
    if head_fusion not in HEAD_FUSIONS:
        raise ModelError(f"head fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}")
    sess = _session(model, volume, session)
    if sess.family != "vit":
        raise ModelError(f"attention rollout needs a ViT-family model (UNETR, ViT); {sess.model_name} is "
                         f"{sess.spec.architecture}, whose attention is windowed or spatially reduced")
    cls = has_cls_token(sess.network)
    if voxel is None and world is None:
        if not cls:
            raise ModelError(f"{sess.model_name} has no CLS token: give a query voxel for its rollout row")
        centre = (np.asarray(volume.spatial_shape) - 1) / 2.0
        w = volume.affine[:3, :3] @ centre + volume.affine[:3, 3]
        query_is_cls = True
    else:
        w = query_world(volume, voxel=voxel, world=world)
        query_is_cls = False
    start = sess.window_for(w, reuse=reuse_window)
    cap = sess.capture(start, progress=progress, cancel=cancel)
    last = len(cap.layers) - 1
    qg = cap.query_grid(last)
    npre = cap.n_prefix(last)
    if query_is_cls:
        seq, token = 0, None
    else:
        token = qg.nearest_token(sess.model_voxel(w) - np.asarray(start))
        seq = npre + qg.flat(token)
    v = rollout_vector(cap, seq, head_fusion=head_fusion, discard_ratio=discard_ratio, start_layer=start_layer,
                       cancel=cancel)
    spatial = v[npre:].float().reshape(qg.shape).numpy()
    scan = sess.to_scan(sess.place_tokens(spatial, qg, start))
    s_layer = cap.resolve_layer(start_layer)
    meta = {"method": "rollout", "layer": f"{s_layer}..{last}", "head": head_fusion,
            "units": "rollout weight (share of the query row's mass per token, interpolated between token centres)",
            "query": {"token": "cls" if query_is_cls else list(token), "world_mm": np.round(w, 4).tolist()},
            "window": sess.window_info(start), "mass_on_cls": float(v[:npre].sum()) if npre else 0.0,
            "parameters": {"head_fusion": head_fusion, "discard_ratio": float(discard_ratio),
                           "start_layer": s_layer, "identity": "added, rows renormalised"},
            "memory_bound_bytes": int(ROLLOUT_CHUNK_BYTES)}
    return sess.make_volume(scan, name=f"rollout {head_fusion} from L{s_layer}", metadata=meta)


# ----------------------------------------------------------------------------------------------
# DINO per-head CLS attention

def top_mass_mask(values: np.ndarray, keep_mass: float) -> np.ndarray:
    """Boolean mask of the fewest largest entries holding at least ``keep_mass`` of the total (per row).

    ``values`` (heads, N) ≥ 0. Sorted in decreasing order, an entry is kept while the mass of the
    entries before it is below ``keep_mass`` (DINO's "sort, cumulative sum, keep above 1 − x").
    """
    if not 0 < keep_mass <= 1:
        raise ModelError(f"the kept attention mass must be in (0, 1], got {keep_mass}")
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(-values, axis=1, kind="stable")
    srt = np.take_along_axis(values, order, axis=1)
    tot = srt.sum(1, keepdims=True)
    tot[tot == 0] = 1.0
    before = (np.cumsum(srt, axis=1) - srt) / tot
    keep_sorted = before < keep_mass
    mask = np.zeros_like(keep_sorted)
    np.put_along_axis(mask, order, keep_sorted, axis=1)
    return mask


def _dino_session(model, volume, session):
    sess = _session(model, volume, session)
    if sess.family != "vit" or not has_cls_token(sess.network):
        raise ModelError(f"DINO head attention needs a ViT with a CLS token (vit_seg); {sess.model_name} is "
                         f"{sess.spec.architecture}")
    return sess


def _dino_rows(model, volume, voxel, world, layer, session, reuse_window, progress, cancel):
    sess = _dino_session(model, volume, session)
    if voxel is None and world is None:
        centre = (np.asarray(volume.spatial_shape) - 1) / 2.0
        w = volume.affine[:3, :3] @ centre + volume.affine[:3, 3]
    else:
        w = query_world(volume, voxel=voxel, world=world)
    start = sess.window_for(w, reuse=reuse_window)
    cap = sess.capture(start, progress=progress, cancel=cancel)
    L = cap.resolve_layer(layer)
    row = cap.row(L, "cls")
    return sess, start, cap, L, row


COVERAGES = ("scan", "tiles", "window")


def _dino_whole_maps(model, volume, layer, session, progress, cancel):
    """Per-head CLS attention of one pass over the whole padded grid (``explain.whole_scan``), × tokens
    (1 = uniform); None when the scan is too large for one pass."""
    sess = _dino_session(model, volume, session)
    whole = whole_scan_session(sess)
    if whole is None:
        return None
    start = (0, 0, 0)
    cap = whole.capture(start, progress=progress, cancel=cancel)
    L = cap.resolve_layer(layer)
    row = cap.row(L, "cls")
    n = int(np.prod(row.key_grid.shape))
    maps = whole.place_tokens(np.moveaxis(row.spatial.numpy(), 0, -1) * n, row.key_grid, start)
    return maps[(slice(None),) + tuple(slice(0, g) for g in sess.grid_shape)], sess, L, row


def _dino_scan_maps(model, volume, layer, session, progress, cancel):
    """Per-head CLS attention over the whole padded model grid, windows stitched (``explain.whole_scan``).

    Each window's weights are multiplied by its number of patch tokens, so 1 = a uniform share and
    windows compare on one scale. Returns ``(model-grid maps (heads, X, Y, Z), session, layer, windows,
    CLS→CLS weight per window)``."""
    sess = _dino_session(model, volume, session)
    info = {}

    def window_maps(start):
        cap = sess.capture(start, cancel=cancel)
        info.setdefault("layer", cap.resolve_layer(layer))
        row = cap.row(info["layer"], "cls")
        n = int(np.prod(row.key_grid.shape))
        info.setdefault("cls", []).append(row.prefix[:, 0].tolist())
        return np.moveaxis(row.spatial.numpy(), 0, -1) * n, row.key_grid

    maps, starts = stitch(sess, window_maps, progress=progress, cancel=cancel)
    return maps, sess, info["layer"], starts, info["cls"]


def _check_coverage(coverage):
    if coverage not in COVERAGES:
        raise ModelError(f"coverage must be one of {', '.join(COVERAGES)}, got {coverage!r}")


def _whole_scan_maps(model, volume, layer, session, coverage, progress, cancel):
    """Per-head whole-scan maps on the padded model grid for ``coverage`` "scan" (one pass, tiles when the
    scan is too large) or "tiles": ``(maps, session, layer, info)``; ``info`` holds the coverage used, the
    windows, their size, the CLS→CLS weights and (one pass) the token grid, for the metadata."""
    whole = _dino_whole_maps(model, volume, layer, session, progress, cancel) if coverage == "scan" else None
    if whole is not None:
        maps, sess, L, row = whole
        return maps, sess, L, {"coverage": "scan", "windows": [[0, 0, 0]], "window_size": list(sess.grid_shape),
                               "token_grid": list(row.key_grid.shape),
                               "attention_cls_to_cls": row.prefix[:, 0].tolist()}
    maps, sess, L, starts, cls = _dino_scan_maps(model, volume, layer, session, progress, cancel)
    return maps, sess, L, {"coverage": "tiles", "windows": [list(st) for st in starts], "window_size": list(sess.roi),
                           "attention_cls_to_cls": cls}


def dino_heads(model, volume: Volume, *, voxel=None, world=None, layer=None, session: ExplainSession | None = None,
               reuse_window: bool = True, coverage: str = "scan", progress=None, cancel=None) -> Volume:
    """Last block's (or ``layer``'s) CLS attention per head over patch tokens: a 4D map, heads last.

    ``coverage="scan"`` (default): one pass over the whole scan, the positional embedding resized
    (:mod:`napari_vit3d.explain.whole_scan`; a scan too large for one pass falls back to tiles);
    ``"tiles"``: the grid tiled with native windows, stitched by that module's rule; both × tokens
    (1 = uniform). ``"window"``: one native window's raw weights, the query (optional) choosing the
    window, without one the window centred on the scan.
    """
    _check_coverage(coverage)
    if coverage in ("scan", "tiles"):
        maps, sess, L, info = _whole_scan_maps(model, volume, layer, session, coverage, progress, cancel)
        how = ("one pass over the whole scan, positional embedding resized" if info["coverage"] == "scan"
               else "windows stitched with centre-weighted averaging")
        meta = {"method": "dino-heads", "layer": L, "head": "all (last axis)", "n_heads": int(maps.shape[0]),
                "units": f"CLS attention per patch token × the window's patch count (1 = uniform), per head (last "
                         f"axis); {how}",
                **info, "parameters": {"layer": L, "coverage": info["coverage"]}}
        return sess.make_volume(sess.to_scan(maps), name=f"DINO heads L{L}", metadata=meta)
    sess, start, cap, L, row = _dino_rows(model, volume, voxel, world, layer, session, reuse_window, progress, cancel)
    maps = np.moveaxis(row.spatial.numpy(), 0, -1)
    scan = sess.to_scan(sess.place_tokens(maps, row.key_grid, start))
    meta = {"method": "dino-heads", "layer": L, "head": "all (last axis)", "n_heads": row.heads, "coverage": "window",
            "units": "CLS attention weight per patch token, per head (last axis), interpolated between token centres",
            "attention_cls_to_cls": row.prefix[:, 0].tolist(), "window": sess.window_info(start),
            "key_grid": _grid_meta(row.key_grid, sess.window_affine(start)), "parameters": {"layer": L}}
    return sess.make_volume(scan, name=f"DINO heads L{L}", metadata=meta)


def dino_head_masks(model, volume: Volume, *, keep_mass: float = 0.6, voxel=None, world=None, layer=None,
                    session: ExplainSession | None = None, reuse_window: bool = True, coverage: str = "scan",
                    progress=None, cancel=None) -> Volume:
    """Per-head masks holding the top ``keep_mass`` of the CLS attention (uint8, heads last).

    ``coverage="window"``: computed on one window's token grid and placed by nearest token, so each
    mask is a union of whole patches; ``"scan"`` (default) / ``"tiles"``: the fewest model-grid voxels
    holding ``keep_mass`` of each head's whole-scan map (:func:`dino_heads`).
    :func:`head_mask_labels` turns it into one label map.
    """
    _check_coverage(coverage)
    if coverage in ("scan", "tiles"):
        maps, sess, L, info = _whole_scan_maps(model, volume, layer, session, coverage, progress, cancel)
        used = info["coverage"]
        heads = maps.shape[0]
        inside = np.zeros(maps.shape[1:], bool)
        inside[sess.model_input.valid] = True          # padding beyond the scan holds no attention mass
        maps = maps * inside
        mask = top_mass_mask(maps.reshape(heads, -1), keep_mass).reshape(maps.shape).astype(np.float32)
        scan = sess.to_scan(mask, order=0)
        meta = {"method": "dino-head-masks", "layer": L, "head": "all (last axis)", "n_heads": heads,
                "coverage": used, "windows": info["windows"],
                "units": "1 = voxel among the fewest holding the kept share of the head's whole-scan attention",
                "parameters": {"layer": L, "keep_mass": float(keep_mass), "coverage": used}}
        return sess.make_volume(np.rint(scan).astype(np.uint8), name=f"DINO masks L{L} {keep_mass:g}", metadata=meta,
                                kind="labels")
    sess, start, cap, L, row = _dino_rows(model, volume, voxel, world, layer, session, reuse_window, progress, cancel)
    vals = row.spatial.reshape(row.heads, -1).numpy()
    mask = top_mass_mask(vals, keep_mass).reshape(row.heads, *row.key_grid.shape).astype(np.float32)
    scan = sess.to_scan(sess.place_tokens(np.moveaxis(mask, 0, -1), row.key_grid, start, order=0), order=0)
    meta = {"method": "dino-head-masks", "layer": L, "head": "all (last axis)", "n_heads": row.heads,
            "coverage": "window", "units": "1 = patch among the fewest holding the kept share of the head's CLS "
                                          "attention",
            "window": sess.window_info(start),
            "parameters": {"layer": L, "keep_mass": float(keep_mass)}}
    return sess.make_volume(np.rint(scan).astype(np.uint8), name=f"DINO masks L{L} {keep_mass:g}", metadata=meta,
                            kind="labels")


def dino_mask_labels(model, volume: Volume, *, keep_mass: float = 0.6, voxel=None, world=None, layer=None,
                     session: ExplainSession | None = None, coverage: str = "scan", progress=None,
                     cancel=None) -> Volume:
    """DINO per-head masks as one 3D label map: :func:`dino_head_masks` → :func:`head_mask_labels`, overlaps
    to the head attending most (:func:`dino_heads`). ``metadata["n_heads"]`` holds the head count."""
    common = dict(voxel=voxel, world=world, layer=layer, session=session, coverage=coverage, progress=progress,
                  cancel=cancel)
    heads = dino_heads(model, volume, **common)
    out = head_mask_labels(dino_head_masks(model, volume, keep_mass=keep_mass, **common), heads)
    out.metadata.setdefault("n_heads", int(heads.data.shape[-1]) if heads.data.ndim == 4 else 1)
    return out


def head_mask_labels(masks: Volume, attention: Volume | None = None) -> Volume:
    """One 3D label map from per-head masks: label h+1 where head h keeps the voxel.

    Where several heads keep a voxel, the head with the highest attention there wins (with
    ``attention``, the :func:`dino_heads` map), else the lowest head number.
    """
    m = np.asarray(masks.data) > 0
    if m.ndim != 4:
        raise ModelError("head masks must be 4D (heads last)")
    score = np.where(m, np.asarray(attention.data, np.float32) if attention is not None else
                     -np.arange(m.shape[3], dtype=np.float32)[None, None, None, :], -np.inf)
    labels = np.where(m.any(-1), np.argmax(score, axis=-1) + 1, 0).astype(np.uint8)
    out = masks.with_data(labels, metadata={**masks.metadata, "kind": "labels", "labels": "head + 1"})
    return out
