"""Attention capture: hooks that keep what a later query needs, and the rows computed on demand.

One forward pass of the network with an :class:`AttentionCapture` attached stores, per attention
layer, only the inputs of its softmax -- never the attention matrices themselves:

* MONAI ``SABlock`` (ViT, UNETR, our ViTSeg): the queries and keys (hook on ``qkv``, or on ``to_q`` /
  ``to_k``), ``2 · N · C`` floats per layer. A row is ``softmax(q_i · Kᵀ · scale)``, the same formula
  MONAI evaluates (checked against ``save_attn``'s ``att_mat`` in the tests).
* MONAI Swin ``WindowAttention``: the windowed tokens it receives and the shift mask
  (``N · C`` floats per block). A row is recomputed for the one window holding the query, with the
  relative position bias and the shift mask, then mapped back through the window partition, the
  cyclic shift and the padding onto the stage grid (checked against the ``softmax`` module's output).
* Our SegFormer3D ``EfficientSelfAttention``: queries (hook on ``q``) and reduced keys (hook on
  ``kv``), ``N_q · C + N_kv · C`` floats per block.

So a clicked voxel costs one small matrix-vector product per layer, and the memory held after the
forward is ``O(L · N · C)``, not ``O(L · heads · N²)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from .tokens import TokenGrid

#: rows needing at most this many multiply-adds are computed with numpy (see AttentionCapture.rows)
SMALL_WORK = 4_000_000


@dataclass
class LayerInfo:
    """Static description of one attention layer, in forward order."""

    index: int
    name: str
    kind: str  # "global" (ViT/UNETR), "window" (Swin), "reduced" (SegFormer3D)
    module: nn.Module
    num_heads: int
    stage: int = 0
    block: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class AttentionRow:
    """Attention of one query token to every key token of a layer, per head.

    ``weights`` (heads, n_keys) sums to one over keys for each head when the prefix (CLS) and padding
    tokens are included (``prefix`` and ``padding_mass`` hold those parts). ``key_grid`` places the
    spatial keys; ``spatial`` is ``weights`` for those keys only, (heads, *key_grid.shape).
    """

    layer: int
    heads: int
    spatial: torch.Tensor
    key_grid: TokenGrid
    query_token: tuple[int, int, int]
    query_grid: TokenGrid
    prefix: torch.Tensor  # (heads, n_prefix): attention to CLS-like tokens
    padding_mass: torch.Tensor  # (heads,): attention to padded (non-existent) tokens (Swin)
    info: dict = field(default_factory=dict)


def _find_monai_vit(network: nn.Module):
    from monai.networks.nets import ViT

    for m in network.modules():
        if isinstance(m, ViT):
            return m
    return None


def _find_swin(network: nn.Module):
    from monai.networks.nets.swin_unetr import SwinTransformer

    for m in network.modules():
        if isinstance(m, SwinTransformer):
            return m
    return None


def _segformer_attn(network: nn.Module):
    from ..models.segformer3d import EfficientSelfAttention, SegFormer3D

    for m in network.modules():
        if isinstance(m, SegFormer3D):
            out = []
            for s, stage in enumerate(m.stages):
                for b, blk in enumerate(stage.blocks):
                    out.append((s, b, stage, blk.attn))
            return m, out
    if any(isinstance(m, EfficientSelfAttention) for m in network.modules()):
        raise ModelError("EfficientSelfAttention found outside a SegFormer3D: cannot place its tokens")
    return None, []


def family(network: nn.Module) -> str:
    """'vit' (MONAI ViT inside: ViT, UNETR, ViTSeg), 'swin', 'segformer' or raise ModelError."""
    if _find_monai_vit(network) is not None:
        return "vit"
    if _find_swin(network) is not None:
        return "swin"
    if _segformer_attn(network)[0] is not None:
        return "segformer"
    raise ModelError(f"{type(network).__name__} has no attention layers that napari-vit3d can explain")


def has_cls_token(network: nn.Module) -> bool:
    vit = _find_monai_vit(network)
    return vit is not None and hasattr(vit, "cls_token")


def attention_layers(network: nn.Module) -> list[LayerInfo]:
    """Every attention layer of a supported network, in forward order."""
    fam = family(network)
    layers: list[LayerInfo] = []
    if fam == "vit":
        vit = _find_monai_vit(network)
        for i, blk in enumerate(vit.blocks):
            a = blk.attn
            if getattr(a, "rel_positional_embedding", None) is not None or getattr(a, "causal", False):
                raise ModelError("attention with relative position embedding or a causal mask is not supported")
            if getattr(a, "use_flash_attention", False):
                raise ModelError("this ViT uses flash attention, which hides its attention weights; "
                                 "rebuild it with use_flash_attention=False to explain it")
            layers.append(LayerInfo(i, f"block {i}", "global", a, int(a.num_heads), 0, i))
    elif fam == "swin":
        swin = _find_swin(network)
        i = 0
        for s in range(swin.num_layers):
            stage = getattr(swin, f"layers{s + 1}")[0]
            if getattr(stage, "use_hyena", False):
                continue
            for b, blk in enumerate(stage.blocks):
                if getattr(blk, "use_checkpoint", False) or getattr(blk.attn, "use_flash_attention", False):
                    raise ModelError("Swin blocks use gradient checkpointing or flash attention; rebuild with "
                                     "use_checkpoint=False and use_flash_attention=False to explain")
                layers.append(LayerInfo(i, f"stage {s} block {b}", "window", blk.attn, int(blk.attn.num_heads),
                                        s, b, {"block": blk}))
                i += 1
    else:
        _, mods = _segformer_attn(network)
        for i, (s, b, stage, attn) in enumerate(mods):
            layers.append(LayerInfo(i, f"stage {s} block {b}", "reduced", attn, int(attn.num_heads), s, b,
                                    {"stage_module": stage}))
    return layers


class _LayerKind:
    """How one kind of attention layer (one attention family) is hooked, and where its tokens sit.

    One subclass per kind of :class:`LayerInfo` (``"global"``: MONAI SABlock in ViT/UNETR/ViTSeg;
    ``"window"``: Swin WindowAttention; ``"reduced"``: our SegFormer3D EfficientSelfAttention), so
    :class:`AttentionCapture` never branches on the kind."""

    #: whether full attention rows can be computed from the captured queries and keys
    full_rows = True

    def __init__(self, cap: AttentionCapture):
        self.cap = cap

    def hook(self, li: LayerInfo) -> None:
        raise NotImplementedError

    def query_grid(self, li: LayerInfo) -> TokenGrid:
        raise NotImplementedError

    def key_grid(self, li: LayerInfo) -> TokenGrid:
        return self.cap.query_grid(li.index)

    def n_prefix(self, li: LayerInfo) -> int:
        return 0


class _GlobalKind(_LayerKind):
    def hook(self, li: LayerInfo):
        cap = self.cap
        a, st = li.module, cap.store[li.index]
        h, dh = int(a.num_heads), int(a.dim_head)

        def split(t):  # (B, N, h*dh) -> (h, N, dh) for batch 0
            return t[0].reshape(t.shape[1], h, dh).transpose(0, 1).detach()

        if getattr(a, "use_combined_linear", True):
            def on_qkv(m, args, out):
                inner = h * dh
                # MONAI: "b h (qkv l d) -> qkv b l h d": q, k are the first two thirds
                st["q"], st["k"] = split(out[..., :inner]), split(out[..., inner:2 * inner])
            cap._handles.append(a.qkv.register_forward_hook(on_qkv))
        else:
            cap._handles.append(a.to_q.register_forward_hook(lambda m, args, out: st.__setitem__("q", split(out))))
            cap._handles.append(a.to_k.register_forward_hook(lambda m, args, out: st.__setitem__("k", split(out))))
        st["scale"] = float(a.scale)
        st["dtype"] = getattr(a, "attention_dtype", None)

    def query_grid(self, li: LayerInfo) -> TokenGrid:
        c = self.cap._patch_conv
        return TokenGrid.voxels(self.cap.input_shape).conv(c.kernel_size, c.stride, c.padding, self.cap._patch_grid)

    def n_prefix(self, li: LayerInfo) -> int:
        st = self.cap._need(li.index)
        return int(st["k"].shape[1]) - self.cap.query_grid(li.index).n_tokens


class _WindowKind(_LayerKind):
    full_rows = False

    def hook(self, li: LayerInfo):
        cap = self.cap
        blk, st = li.extra["block"], cap.store[li.index]

        def on_block(m, args):
            st["stage_shape"] = tuple(int(s) for s in args[0].shape[1:4])

        def on_attn(m, args, kwargs):
            x = args[0]
            mask = kwargs.get("mask", args[1] if len(args) > 1 else None)
            st["x"] = x.detach()
            st["mask"] = None if mask is None else mask.detach()

        cap._handles.append(blk.register_forward_pre_hook(on_block))
        cap._handles.append(li.module.register_forward_pre_hook(on_attn, with_kwargs=True))

    def query_grid(self, li: LayerInfo) -> TokenGrid:
        st = self.cap._need(li.index)
        return TokenGrid.tiles(self.cap.input_shape, st["stage_shape"])


class _ReducedKind(_LayerKind):
    def hook(self, li: LayerInfo):
        cap = self.cap
        a, st = li.module, cap.store[li.index]
        h, dh = int(a.num_heads), int(a.head_dim)

        def on_q(m, args, out):
            st["q"] = out[0].reshape(out.shape[1], h, dh).transpose(0, 1).detach()

        def on_kv(m, args, out):
            st["k"] = out[0, :, : h * dh].reshape(out.shape[1], h, dh).transpose(0, 1).detach()

        cap._handles.append(a.q.register_forward_hook(on_q))
        cap._handles.append(a.kv.register_forward_hook(on_kv))
        st["scale"] = float(a.scale)

    def query_grid(self, li: LayerInfo) -> TokenGrid:
        cap = self.cap
        net, mods = _segformer_attn(cap.network)
        g = TokenGrid.voxels(cap.input_shape)
        for s, stage in enumerate(net.stages):
            c = stage.patch_embed.proj
            shape = None
            for (s2, b2, st2, attn) in mods:
                if s2 == s and attn.last_q_shape is not None:
                    shape = attn.last_q_shape
            if shape is None:
                raise ModelError("SegFormer3D stage shapes unknown: run a forward pass inside the capture")
            g = g.conv(c.kernel_size, c.stride, c.padding, shape)
            if s == li.stage:
                return g
        raise ModelError(f"SegFormer3D has no stage {li.stage}")

    def key_grid(self, li: LayerInfo) -> TokenGrid:
        qg = self.cap.query_grid(li.index)
        a = li.module
        if a.sr_ratio > 1:
            c = a.sr
            return qg.conv(c.kernel_size, c.stride, c.padding, a.last_kv_shape)
        return qg


_KINDS = {"global": _GlobalKind, "window": _WindowKind, "reduced": _ReducedKind}


class AttentionCapture:
    """Context manager: attach capture hooks to ``network``; after a forward, compute attention rows.

    ``layers`` restricts capture to those layer indices (default: all). Usage::

        with AttentionCapture(net) as cap:
            net(x)
        row = cap.row(layer=5, token=(3, 2, 1))
    """

    def __init__(self, network: nn.Module, layers=None):
        self.network = network
        self.family = family(network)
        self.layers = attention_layers(network)
        wanted = set(range(len(self.layers))) if layers is None else {int(i) % len(self.layers) for i in layers}
        self.wanted = wanted
        self._handles: list = []
        self.store: dict[int, dict] = {}
        self.input_shape: tuple[int, int, int] | None = None
        self._grid_cache: dict = {}
        self._kinds = {name: cls(self) for name, cls in _KINDS.items()}

    # -- hooks ----------------------------------------------------------------------------------
    def __enter__(self):
        self.store.clear()
        self._grid_cache.clear()
        self._handles.append(self.network.register_forward_pre_hook(self._on_input))
        if self.family == "vit":
            vit = _find_monai_vit(self.network)
            pe = vit.patch_embedding.patch_embeddings
            conv = pe if isinstance(pe, nn.Conv3d) else None
            if conv is None:
                raise ModelError("only convolutional ViT patch embeddings are supported")
            self._handles.append(conv.register_forward_hook(self._on_patch_conv))
        elif self.family == "swin":
            self.swin = _find_swin(self.network)
        for li in self.layers:
            if li.index not in self.wanted:
                continue
            self.store[li.index] = {}
            self._kind(li).hook(li)
        return self

    def _kind(self, li: LayerInfo) -> _LayerKind:
        return self._kinds[li.kind]

    def __exit__(self, *exc):
        self.remove()
        return False

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _on_input(self, module, args):
        x = args[0]
        self.input_shape = tuple(int(s) for s in x.shape[2:])

    def _on_patch_conv(self, module, args, out):
        self._patch_conv = module
        self._patch_grid = tuple(int(s) for s in out.shape[2:])

    # -- geometry -------------------------------------------------------------------------------
    def _need(self, layer: int) -> dict:
        if layer not in self.store or not self.store[layer]:
            raise ModelError(f"attention of layer {layer} was not captured (run a forward pass inside the capture)")
        st = self.store[layer]
        if ("q" not in st or "k" not in st) and "x" not in st:
            raise ModelError(f"attention of layer {layer} was not captured (run a forward pass inside the capture)")
        return st

    def resolve_layer(self, layer) -> int:
        n = len(self.layers)
        if layer is None:
            layer = n - 1
        layer = int(layer)
        if not -n <= layer < n:
            raise ModelError(f"layer {layer} does not exist: this model has {n} attention layers (0..{n - 1})")
        return layer % n

    def query_grid(self, layer: int) -> TokenGrid:
        """Where the query tokens of ``layer`` sit in the input window."""
        key = ("q", layer)
        if key in self._grid_cache:
            return self._grid_cache[key]
        g = self._kind(self.layers[layer]).query_grid(self.layers[layer])
        self._grid_cache[key] = g
        return g

    def key_grid(self, layer: int) -> TokenGrid:
        return self._kind(self.layers[layer]).key_grid(self.layers[layer])

    def n_prefix(self, layer: int) -> int:
        """Tokens before the spatial ones in ``layer``'s sequence (the CLS token of a ViT)."""
        return self._kind(self.layers[layer]).n_prefix(self.layers[layer])

    # -- rows -----------------------------------------------------------------------------------
    @torch.no_grad()
    def rows(self, layer: int, tokens: torch.Tensor) -> torch.Tensor:
        """Full attention rows (heads, len(tokens), N_keys) of a global/reduced layer.

        ``tokens`` are indices into the layer's *full* token sequence (CLS included for ViTs).
        """
        if not self._kind(self.layers[layer]).full_rows:
            raise ModelError("full rows of windowed attention: use row() per query")
        st = self._need(layer)
        q, k = st["q"][:, tokens], st["k"]
        if st.get("dtype") is not None:
            q, k = q.to(st["dtype"]), k.to(st["dtype"])
        if q.shape[0] * q.shape[1] * k.shape[1] * k.shape[2] <= SMALL_WORK:
            # one click's rows: numpy, single-threaded. torch's thread pool costs tens of ms per tiny op
            # on a busy machine (threads waiting for each other), more than the arithmetic itself.
            qn, kn = q.detach().cpu().float().numpy(), k.detach().cpu().float().numpy()
            logits = np.einsum("hqd,hkd->hqk", qn, kn) * np.float32(st["scale"])
            logits -= logits.max(-1, keepdims=True)
            e = np.exp(logits)
            return torch.from_numpy(e / e.sum(-1, keepdims=True))
        return torch.softmax(torch.einsum("hqd,hkd->hqk", q, k) * st["scale"], dim=-1).float()

    @torch.no_grad()
    def row(self, layer, token) -> AttentionRow:
        """Attention of the query token ``token`` (grid index (a, b, c), or ``"cls"``) in ``layer``."""
        layer = self.resolve_layer(layer)
        li = self.layers[layer]
        qg = self.query_grid(layer)
        if not self._kind(li).full_rows:
            return self._window_row(layer, li, qg, token)
        npre = self.n_prefix(layer)
        if isinstance(token, str):
            if token != "cls" or npre == 0:
                raise ModelError("this model has no CLS token; choose a voxel as the query")
            seq = 0
            qtok = (-1, -1, -1)
        else:
            qtok = tuple(int(t) for t in token)
            seq = npre + qg.flat(qtok)
        r = self.rows(layer, torch.tensor([seq]))[:, 0]  # (heads, N)
        kg = self.key_grid(layer)
        spatial = r[:, npre:].reshape(r.shape[0], *kg.shape)
        return AttentionRow(layer, li.num_heads, spatial, kg, qtok, qg, r[:, :npre],
                            torch.zeros(r.shape[0]), {"kind": li.kind, "stage": li.stage, "block": li.block,
                                                     "name": li.name})

    def _window_row(self, layer: int, li: LayerInfo, qg: TokenGrid, token) -> AttentionRow:
        from monai.networks.nets.swin_unetr import get_window_size

        if isinstance(token, str):
            raise ModelError("Swin-UNETR has no CLS token; choose a voxel as the query")
        st = self._need(layer)
        blk, attn = li.extra["block"], li.module
        dims = st["stage_shape"]
        ws, ss = get_window_size(dims, blk.window_size, blk.shift_size)
        ws, ss = np.asarray(ws), np.asarray(ss)
        padded = np.ceil(np.asarray(dims) / ws).astype(int) * ws
        p = np.asarray(token, dtype=int)
        ps = (p - ss) % padded  # position after torch.roll(-shift)
        wgrid = padded // ws
        widx3, off = ps // ws, ps % ws
        w = int(np.ravel_multi_index(tuple(widx3), tuple(wgrid)))
        t = int(np.ravel_multi_index(tuple(off), tuple(ws)))
        # numpy throughout: tiny torch ops (zeros, clone) stall for ~10 ms each on a busy CPU, see rows()
        xw = st["x"][w].detach().cpu().float().numpy()  # (n, C)
        n, c = xw.shape
        h = attn.num_heads
        if "np" not in st:
            bq = attn.qkv.bias
            st["np"] = {"w": attn.qkv.weight.detach().cpu().float().numpy(),
                        "b": bq.detach().cpu().float().numpy() if bq is not None else np.zeros(3 * c, np.float32),
                        "rpi": attn.relative_position_index.detach().cpu().numpy(),
                        "table": attn.relative_position_bias_table.detach().cpu().float().numpy(),
                        "mask": None if st["mask"] is None else st["mask"].detach().cpu().float().numpy()}
        P = st["np"]
        d = c // h
        q = (xw[t] @ P["w"][:c].T + P["b"][:c]).reshape(h, d) * np.float32(attn.scale)
        kc = P.setdefault("k", {})  # keys per window, computed on the first click in that window
        if w not in kc:
            kc[w] = (xw @ P["w"][c:2 * c].T + P["b"][c:2 * c]).reshape(n, h, d)
        k = kc[w]
        logits = np.einsum("hd,nhd->hn", q, k)
        logits = logits + P["table"][P["rpi"][:n, :n][t]].T  # relative position bias, (h, n)
        if P["mask"] is not None:
            logits = logits + P["mask"][w % P["mask"].shape[0], t][None]
        logits -= logits.max(-1, keepdims=True)
        e = np.exp(logits)
        wts = e / e.sum(-1, keepdims=True)  # (h, n)
        # window offsets -> shifted padded coordinates -> original stage coordinates
        offs = np.stack(np.unravel_index(np.arange(n), tuple(ws)), axis=1)
        orig = (widx3 * ws + offs + ss) % padded
        valid = np.all(orig < np.asarray(dims), axis=1)
        spatial = np.zeros((h, int(np.prod(dims))), dtype=np.float32)
        spatial[:, np.ravel_multi_index(tuple(orig[valid].T), tuple(dims))] = wts[:, valid]
        pad_mass = torch.from_numpy(wts[:, ~valid].sum(-1).astype(np.float32))
        spatial = torch.from_numpy(spatial)
        info = {"kind": "window", "stage": li.stage, "block": li.block, "name": li.name,
                "window_index": tuple(int(v) for v in widx3), "window_size": tuple(int(v) for v in ws),
                "shift": tuple(int(v) for v in ss), "shifted": bool(np.any(ss > 0)),
                "padded_stage_shape": tuple(int(v) for v in padded), "stage_shape": tuple(int(v) for v in dims)}
        return AttentionRow(layer, h, spatial.reshape(h, *dims), qg, tuple(int(v) for v in p), qg,
                            torch.zeros(h, 0), pad_mass, info)

    def stored_bytes(self) -> int:
        tot = 0
        for st in self.store.values():
            for v in st.values():
                if isinstance(v, torch.Tensor):
                    tot += v.numel() * v.element_size()
        return tot
