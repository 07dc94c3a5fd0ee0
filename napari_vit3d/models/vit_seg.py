"""A 3D ViT with a CLS token and a UNETR-style decoder, plus the DINO projection head.

:class:`ViTSeg` gives one model with both CLS attention (for DINO per-head maps) and a segmentation
output. The encoder is MONAI's ``ViT(classification=True)`` (its classification head is removed; the
CLS token stays), so ``encoder.blocks[i]`` are MONAI ``TransformerBlock`` s and ``encoder.blocks[i].attn``
are ``SABlock`` s (``save_attn`` / ``att_mat``, ``qkv``, ``num_heads``, ``scale``, ``drop_weights``).
Token 0 is CLS; patch tokens follow row-major over the ``(D/p, H/p, W/p)`` patch grid.

The decoder follows UNETR (Hatamizadeh et al. 2022) with the number of up-steps set by the patch size
``p = 2**n``: the last (normalised) tokens are reshaped to the patch grid and upsampled ``n`` times;
skip ``j`` (resolution ``1/2**j``, ``j = 1..n-1``) comes from hidden state ``skip_layers[j-1]`` through
``UnetrPrUpBlock``; skip 0 is a ``UnetrBasicBlock`` on the input. Patch 16 reproduces UNETR's layout,
patch 8 has 3 up-steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import UnetOutBlock
from monai.networks.nets import ViT
from torch import nn

from ..errors import ModelError

__all__ = ["ViTSeg", "DINOHead"]


def _triple(v, what: str) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 3:
        raise ModelError(f"ViTSeg: {what} needs 1 or 3 values, got {v}")
    return v


def vit_tokens(vit, x: torch.Tensor, grid, *, patch_mask: torch.Tensor | None = None,
               mask_token: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A MONAI ``ViT`` (conv patches, learned positional embedding, CLS token) on an input of any size
    divisible by the patch: ``(tokens after the final norm, each block's output)``.

    The computation of ``vit(x)`` — patch embedding + positional embedding, CLS, blocks, final norm —
    except that when the input's token grid differs from ``grid`` (the one the embedding was learned
    for) the positional embedding is resized trilinearly to it (DINO's way of showing attention on
    larger images). On ``grid`` itself it is ``vit(x)`` exactly.

    ``patch_mask`` ``(B, N)`` bool with ``mask_token`` ``(1, 1, C)`` (masked-image modelling, iBOT): the
    masked patches' embeddings are replaced by the mask token before the positional embedding is added.
    """
    pe = vit.patch_embedding
    t = pe.patch_embeddings(x)                      # (B, C, d, h, w)
    tokens_grid = tuple(int(s) for s in t.shape[2:])
    if tokens_grid == tuple(grid) and patch_mask is None:
        return vit(x)
    t = t.flatten(2).transpose(1, 2)
    pos = pe.position_embeddings                    # (1, N, C)
    if tokens_grid != tuple(grid):
        c = pos.shape[2]
        pos = F.interpolate(pos.transpose(1, 2).reshape(1, c, *grid), size=tokens_grid, mode="trilinear",
                            align_corners=False).flatten(2).transpose(1, 2)
    if patch_mask is not None:
        if mask_token is None or patch_mask.shape != t.shape[:2]:
            raise ModelError(f"vit_tokens: a patch mask of shape {tuple(t.shape[:2])} needs a mask token")
        t = torch.where(patch_mask[..., None], mask_token.to(t.dtype).expand_as(t), t)
    t = pe.dropout(t + pos)
    t = torch.cat([vit.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
    hidden = []
    for blk in vit.blocks:
        t = blk(t)
        hidden.append(t)
    return vit.norm(t), hidden


class ViTSeg(nn.Module):
    """3D ViT (CLS token) + UNETR-style decoder.

    ``forward(x)``: ``(B, in_channels, *img_size)`` → logits ``(B, out_channels, *img_size)``.
    ``forward_features(x)`` → ``(tokens, hidden_states)``: tokens ``(B, 1 + N, hidden_size)`` after
    the final LayerNorm (CLS first) and the list of each block's output (also with CLS).
    Both also take inputs of other sizes divisible by the patch (the positional embedding resized
    trilinearly: :func:`vit_tokens`); the network was trained on ``img_size`` and segmentation always
    uses that window (the architecture record's ``fixed_window``); explanations over a whole scan use
    the larger input.
    """

    def __init__(self, *, in_channels: int, out_channels: int, img_size, patch_size: int = 8,
                 hidden_size: int = 384, mlp_dim: int = 1536, num_layers: int = 12, num_heads: int = 6,
                 feature_size: int = 16, dropout_rate: float = 0.0, qkv_bias: bool = False,
                 norm_name: str = "instance", res_block: bool = True):
        super().__init__()
        self.img_size = _triple(img_size, "img_size")
        patch = _triple(patch_size, "patch_size")
        if len(set(patch)) != 1:
            raise ModelError(f"ViTSeg: the patch must be a cube, got {patch}")
        p = patch[0]
        n_up = p.bit_length() - 1
        if p < 2 or 2 ** n_up != p:
            raise ModelError(f"ViTSeg: patch size must be a power of two ≥ 2, got {p}")
        if any(s % p for s in self.img_size):
            raise ModelError(f"ViTSeg: img_size {self.img_size} is not divisible by the patch size {p}")
        if hidden_size % num_heads:
            raise ModelError(f"ViTSeg: hidden_size {hidden_size} is not divisible by {num_heads} heads")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.patch_size = p
        self.n_up = n_up
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.feat_size = tuple(s // p for s in self.img_size)
        self.encoder = ViT(in_channels=in_channels, img_size=self.img_size, patch_size=patch, hidden_size=hidden_size,
                           mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads, proj_type="conv",
                           pos_embed_type="learnable", classification=True, dropout_rate=dropout_rate,
                           spatial_dims=3, qkv_bias=qkv_bias)
        # segmentation only: keep the CLS token, drop the (unused) classification head so that every
        # parameter receives a gradient and ``encoder(x)`` returns all normalised tokens.
        del self.encoder.classification_head
        #: hidden-state index feeding skip j (j = 1 .. n_up-1)
        self.skip_layers = tuple(min(num_layers - 1, num_layers * j // n_up) for j in range(1, n_up))
        fs = feature_size
        enc = [UnetrBasicBlock(spatial_dims=3, in_channels=in_channels, out_channels=fs, kernel_size=3, stride=1,
                               norm_name=norm_name, res_block=res_block)]
        for j in range(1, n_up):
            enc.append(UnetrPrUpBlock(spatial_dims=3, in_channels=hidden_size, out_channels=fs * 2 ** j,
                                      num_layer=n_up - 1 - j, kernel_size=3, stride=1, upsample_kernel_size=2,
                                      norm_name=norm_name, conv_block=True, res_block=res_block))
        self.encoders = nn.ModuleList(enc)
        self.decoders = nn.ModuleList(
            UnetrUpBlock(spatial_dims=3, in_channels=hidden_size if j == n_up - 1 else fs * 2 ** (j + 1),
                         out_channels=fs * 2 ** j, kernel_size=3, upsample_kernel_size=2, norm_name=norm_name,
                         res_block=res_block)
            for j in range(n_up))
        self.out = UnetOutBlock(spatial_dims=3, in_channels=fs, out_channels=out_channels)

    @property
    def blocks(self) -> nn.ModuleList:
        """The encoder's transformer blocks (MONAI ``TransformerBlock``)."""
        return self.encoder.blocks

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels or any(int(s) % self.patch_size for s in x.shape[2:]):
            raise ModelError(f"ViTSeg expects input (B, {self.in_channels}, D, H, W) with sizes divisible by the "
                             f"patch {self.patch_size} (trained on {', '.join(map(str, self.img_size))}), "
                             f"got {tuple(x.shape)}")

    def token_grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        """The patch-token grid of input ``x``."""
        return tuple(int(s) // self.patch_size for s in x.shape[2:])

    def proj_feat(self, tokens: torch.Tensor, grid=None) -> torch.Tensor:
        """Patch tokens ``(B, N, C)`` (CLS removed) → ``(B, C, *grid)`` (default grid: ``feat_size``)."""
        b = tokens.shape[0]
        return tokens.transpose(1, 2).reshape(b, self.hidden_size, *(grid or self.feat_size))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self._check_input(x)
        return vit_tokens(self.encoder, x, self.feat_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, hidden = self.forward_features(x)
        grid = self.token_grid(x)
        skips = [self.encoders[0](x)]
        for j in range(1, self.n_up):
            skips.append(self.encoders[j](self.proj_feat(hidden[self.skip_layers[j - 1]][:, 1:], grid)))
        y = self.proj_feat(tokens[:, 1:], grid)
        for j in range(self.n_up - 1, -1, -1):
            y = self.decoders[j](y, skips[j])
        return self.out(y)


class DINOHead(nn.Module):
    """DINO projection head (Caron et al. 2021).

    3-layer MLP (``in_dim → hidden_dim → hidden_dim → bottleneck_dim``, GELU between), l2-normalised
    bottleneck, then a weight-normalised linear layer without bias to ``out_dim`` prototypes. With
    ``norm_last_layer=True`` the weight norm's magnitude is fixed to 1 (not trained), as in the paper.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 *, nlayers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        if nlayers < 1:
            raise ModelError("DINOHead: nlayers must be ≥ 1")
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        if norm_last_layer:
            g.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)
