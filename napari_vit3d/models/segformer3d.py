"""SegFormer3D (Perera et al., CVPR Workshops 2024), written here from the paper.

A hierarchical transformer encoder (four stages, each an overlapping strided Conv3d patch embedding
followed by transformer blocks with *efficient* self-attention and Mix-FFN, no positional encoding)
and an all-MLP decoder.

Shapes, for an input ``(B, C_in, D, H, W)`` with ``D, H, W`` divisible by 32:

* stage 1: tokens on a ``(D/4, H/4, W/4)`` grid, ``embed_dims[0]`` channels
  (patch embedding kernel 7, stride 4, padding 3);
* stages 2–4: ``/8``, ``/16``, ``/32`` grids (kernel 3, stride 2, padding 1);
* keys/values of stage ``i`` come from a grid reduced by ``sr_ratios[i]`` (strided Conv3d + LayerNorm);
* decoder: each stage → Linear to ``decoder_dim`` → trilinear upsampling to the stage-1 grid →
  concatenation → 1³ Conv + BatchNorm + ReLU → 1³ Conv to classes → ×4 trilinear upsampling;
* output logits ``(B, out_channels, D, H, W)``.

Not in the paper (off by default): ``refine_dim > 0`` adds a *full-resolution refinement head*.
The decoder's logits live on the stage-1 grid (1/4 of the input), so at 2 mm input the labels are
drawn on an 8 mm grid and thin structures (cortex, sulcal CSF) cannot be represented. The head
reduces the fused decoder features to ``refine_dim`` channels (1³ Conv), upsamples them ×4
(trilinear), concatenates the input image, and applies one 3³ Conv + ReLU and a 1³ Conv to
classes; its output is *added* to the upsampled decoder logits. The last Conv starts at zero, so a
network with the head and weights copied from one without it computes exactly the same logits
until training changes the head.

Attention scale: ``attn_scale="head_dim"`` (default) uses the usual ``1/sqrt(head_dim)`` of scaled
dot-product attention; ``attn_scale="heads"`` uses ``1/sqrt(num_heads)``, the factor the authors'
released weights were trained with. Checkpoints record the choice in their spec's ``arch_kwargs``.

Explanation contract: every attention module is an :class:`EfficientSelfAttention` whose ``softmax``
submodule (an ``nn.Softmax(dim=-1)``) outputs the attention matrix ``(B, heads, N_q, N_kv)``, computed
explicitly. ``N_q`` tokens are row-major over the stage grid ``last_q_shape`` (D, H, W) and ``N_kv``
tokens row-major over the reduced grid ``last_kv_shape``; both shapes are stored on each forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError

__all__ = ["SegFormer3D", "EfficientSelfAttention", "MixFFN", "OverlapPatchEmbed", "SegFormerBlock", "DropPath"]

Grid = tuple[int, int, int]


def _to_grid(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B, N, C) tokens → (B, C, D, H, W)."""
    b, n, c = x.shape
    return x.transpose(1, 2).reshape(b, c, *grid)


def _to_tokens(x: torch.Tensor) -> tuple[torch.Tensor, Grid]:
    """(B, C, D, H, W) → (B, N, C) tokens (row-major over D, H, W) and the grid shape."""
    grid = tuple(int(s) for s in x.shape[2:])
    return x.flatten(2).transpose(1, 2), grid


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability ``p`` in training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: strided Conv3d then LayerNorm over channels."""

    def __init__(self, in_channels: int, dim: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=kernel_size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        tokens, grid = _to_tokens(self.proj(x))
        return self.norm(tokens), grid


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a grid reduced by ``sr_ratio``.

    Input ``(B, N, C)`` tokens on grid ``(D, H, W)``; the reduction is a Conv3d with kernel = stride =
    ``sr_ratio`` followed by LayerNorm. The attention matrix ``softmax(q kᵀ · scale)`` is produced by the
    ``softmax`` submodule (hookable), shape ``(B, num_heads, N_q, N_kv)``.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1, *, qkv_bias: bool = True,
                 attn_scale: str = "head_dim", attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ModelError(f"SegFormer3D: embedding dim {dim} is not divisible by {num_heads} heads")
        if attn_scale not in ("head_dim", "heads"):
            raise ModelError(f"SegFormer3D: attn_scale must be 'head_dim' or 'heads', not {attn_scale!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr_ratio = int(sr_ratio)
        self.attn_scale = attn_scale
        self.scale = (self.head_dim if attn_scale == "head_dim" else num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        if self.sr_ratio > 1:
            self.sr = nn.Conv3d(dim, dim, kernel_size=self.sr_ratio, stride=self.sr_ratio)
            self.sr_norm = nn.LayerNorm(dim)
        self.softmax = nn.Softmax(dim=-1)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.last_q_shape: Grid | None = None
        self.last_kv_shape: Grid | None = None

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        b, n, c = x.shape
        h, hd = self.num_heads, self.head_dim
        q = self.q(x).reshape(b, n, h, hd).transpose(1, 2)  # (B, h, N_q, hd)
        if self.sr_ratio > 1:
            reduced, kv_grid = _to_tokens(self.sr(_to_grid(x, grid)))
            reduced = self.sr_norm(reduced)
        else:
            reduced, kv_grid = x, tuple(grid)
        m = reduced.shape[1]
        kv = self.kv(reduced).reshape(b, m, 2, h, hd).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]  # (B, h, N_kv, hd)
        self.last_q_shape = tuple(int(g) for g in grid)
        self.last_kv_shape = tuple(int(g) for g in kv_grid)
        attn = self.softmax((q @ k.transpose(-2, -1)) * self.scale)
        attn = self.attn_drop(attn)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class MixFFN(nn.Module):
    """Linear → depthwise 3³ Conv3d (on the token grid) → GELU → Linear."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv3d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        x = self.fc1(x)
        x, _ = _to_tokens(self.dwconv(_to_grid(x, grid)))
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))


class SegFormerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)); x + MixFFN(LN(x))."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: float, *, attn_scale: str,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, qkv_bias=qkv_bias, attn_scale=attn_scale,
                                           attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = MixFFN(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        return x + self.drop_path(self.ffn(self.norm2(x), grid))


class SegFormer3DStage(nn.Module):
    def __init__(self, in_channels: int, dim: int, depth: int, num_heads: int, sr_ratio: int, mlp_ratio: float,
                 *, first: bool, attn_scale: str, drop_paths: Sequence[float], qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0):
        super().__init__()
        k, s, p = (7, 4, 3) if first else (3, 2, 1)
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, k, s, p)
        self.blocks = nn.ModuleList(
            SegFormerBlock(dim, num_heads, sr_ratio, mlp_ratio, attn_scale=attn_scale, qkv_bias=qkv_bias,
                           drop=drop, attn_drop=attn_drop, drop_path=dp)
            for dp in drop_paths)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.patch_embed(x)
        for blk in self.blocks:
            tokens = blk(tokens, grid)
        return _to_grid(self.norm(tokens), grid)


class SegFormer3D(nn.Module):
    """SegFormer3D: hierarchical efficient-attention encoder + all-MLP decoder (see module docstring).

    ``forward(x)`` → logits ``(B, out_channels, D, H, W)``; ``forward_features(x)`` → the four stage
    feature maps ``(B, embed_dims[i], D/2^(i+2), H/2^(i+2), W/2^(i+2))``.
    """

    def __init__(self, *, in_channels: int, out_channels: int,
                 embed_dims: Sequence[int] = (32, 64, 160, 256), depths: Sequence[int] = (2, 2, 2, 2),
                 num_heads: Sequence[int] = (1, 2, 5, 8), sr_ratios: Sequence[int] = (4, 2, 1, 1),
                 mlp_ratio: float = 4, decoder_dim: int = 256, attn_scale: str = "head_dim",
                 drop_path: float = 0.0, drop: float = 0.0, attn_drop: float = 0.0, decoder_dropout: float = 0.0,
                 qkv_bias: bool = True, refine_dim: int = 0):
        super().__init__()
        lists = dict(embed_dims=embed_dims, depths=depths, num_heads=num_heads, sr_ratios=sr_ratios)
        if any(len(v) != 4 for v in lists.values()):
            raise ModelError("SegFormer3D: embed_dims, depths, num_heads and sr_ratios need 4 values each "
                             "(one per stage)")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.embed_dims = tuple(int(d) for d in embed_dims)
        self.attn_scale = attn_scale
        total = sum(depths)
        rates = [drop_path * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        start, prev = 0, in_channels
        for i in range(4):
            self.stages.append(SegFormer3DStage(
                prev, embed_dims[i], depths[i], num_heads[i], sr_ratios[i], mlp_ratio, first=(i == 0),
                attn_scale=attn_scale, drop_paths=rates[start:start + depths[i]], qkv_bias=qkv_bias,
                drop=drop, attn_drop=attn_drop))
            start += depths[i]
            prev = embed_dims[i]
        # all-MLP decoder
        self.decoder_linears = nn.ModuleList(nn.Linear(d, decoder_dim) for d in embed_dims)
        self.fuse = nn.Sequential(
            nn.Conv3d(4 * decoder_dim, decoder_dim, kernel_size=1, bias=False),
            nn.BatchNorm3d(decoder_dim),
            nn.ReLU(inplace=True),
        )
        self.decoder_dropout = nn.Dropout(decoder_dropout)
        self.classifier = nn.Conv3d(decoder_dim, out_channels, kernel_size=1)
        self.refine_dim = int(refine_dim)
        if self.refine_dim < 0:
            raise ModelError(f"SegFormer3D: refine_dim must be >= 0, got {refine_dim}")
        if self.refine_dim:
            r = self.refine_dim
            self.refine_reduce = nn.Conv3d(decoder_dim, r, kernel_size=1)
            self.refine = nn.Sequential(
                nn.Conv3d(r + in_channels, r, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.Conv3d(r, out_channels, kernel_size=1))
        self.apply(self._init_weights)
        if self.refine_dim:
            nn.init.zeros_(self.refine[-1].weight)
            nn.init.zeros_(self.refine[-1].bias)
        #: stage grid shapes (D, H, W) of the last forward pass
        self.last_stage_shapes: list[Grid] = []

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if getattr(m, "weight", None) is not None and m.weight.is_meta:
            # a shape-only build (the pre-flight parameter count): nothing to fill, and PyTorch's meta
            # kernels for normal_ import torch._dynamo on first use (about 1.5 s of a one-click run)
            return
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv3d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.kernel_size[2] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def attention_modules(self) -> list[EfficientSelfAttention]:
        """All attention modules, stage by stage, block by block."""
        return [blk.attn for stage in self.stages for blk in stage.blocks]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ModelError(f"SegFormer3D expects (B, C, D, H, W) input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ModelError(f"SegFormer3D expects {self.in_channels} input channel(s), got {x.shape[1]}")
        if any(s % 32 for s in x.shape[2:]):
            raise ModelError(f"SegFormer3D needs spatial sizes divisible by 32, got {tuple(x.shape[2:])}")

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._check_input(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        self.last_stage_shapes = [tuple(int(s) for s in f.shape[2:]) for f in feats]
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_size = x.shape[2:]
        feats = self.forward_features(x)
        target = feats[0].shape[2:]
        ups = []
        for f, lin in zip(feats, self.decoder_linears):
            tokens, grid = _to_tokens(f)
            y = _to_grid(lin(tokens), grid)
            if tuple(y.shape[2:]) != tuple(target):
                y = F.interpolate(y, size=target, mode="trilinear", align_corners=False)
            ups.append(y)
        fused = self.fuse(torch.cat(ups[::-1], dim=1))
        y = self.classifier(self.decoder_dropout(fused))
        logits = F.interpolate(y, size=out_size, mode="trilinear", align_corners=False)
        if not self.refine_dim:
            return logits
        r = F.interpolate(self.refine_reduce(fused), size=out_size, mode="trilinear", align_corners=False)
        return logits + self.refine(torch.cat([r, x], dim=1))
