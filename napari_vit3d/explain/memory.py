"""Memory estimates for explanations, checked *before* anything large is allocated.

The estimate is deliberately simple and errs high: it counts

* the window's activations during a forward pass: ``ACT_FACTOR[method] × voxels × width`` float32
  values, where ``width`` is the widest full-resolution feature map of the architecture (the stem
  channels: ``feature_size`` for UNETR / Swin-UNETR / ViTSeg, the stage-1 width ÷ 4³·… for
  SegFormer3D, see :func:`full_res_width`) -- a forward without gradients keeps a few such maps alive
  at once; a backward (ERF) keeps every layer's activations, hence a larger factor;
* what the capture keeps (queries and keys per layer: ``2 · N · C`` floats, Swin: ``N · C``);
* for rollout, one row-chunk of one layer's attention: ``heads × chunk × N`` floats (see
  :data:`ROLLOUT_CHUNK_BYTES`).

``benchmarks/bench_explain.py`` measures the real peak next to this estimate
(``docs/performance.md``).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ..errors import ResourceLimitError

#: live full-resolution feature maps during a forward (no grad) / forward + backward (ERF)
ACT_FACTOR = {"attention": 6.0, "rollout": 6.0, "dino-heads": 6.0, "erf": 40.0}
#: rollout computes one layer's fused attention this many bytes at a time (row chunks)
ROLLOUT_CHUNK_BYTES = 64 * 1024**2
#: fraction of the currently available memory a request may use
USABLE_FRACTION = 0.8


def full_res_width(network: nn.Module) -> int:
    """Channels of the widest map kept at (near) input resolution, a proxy for activation size."""
    for attr in ("feature_size",):
        v = getattr(network, attr, None)
        if isinstance(v, int):
            return max(v, 1)
    widths = [m.out_channels for m in network.modules() if isinstance(m, nn.Conv3d)]
    if not widths:
        return 16
    # the first convolutions of a U-shaped decoder run at full resolution; use the widest early one
    return int(max(widths[:3]))


def capture_bytes(network: nn.Module, roi) -> int:
    """Upper bound of what AttentionCapture keeps: every linear layer's input width × tokens is not
    known before a pass, so bound it by 2 × (voxels / smallest patch volume) × widest embedding."""
    from .capture import attention_layers

    layers = attention_layers(network)
    vox = float(np.prod([int(r) for r in roi]))
    total = 0.0
    for li in layers:
        m = li.module
        width = int(getattr(m, "inner_dim", 0) or getattr(m, "dim", 0) or m.num_heads * getattr(m, "head_dim", 64))
        tokens = vox / 8.0 if li.kind == "window" else vox / 64.0  # patch ≥ 2³ (Swin) / ≥ 4³ (others)
        total += 2.0 * tokens * width * 4
    return int(total)


def estimate_bytes(network: nn.Module, roi, method: str, in_channels: int = 1) -> int:
    vox = float(np.prod([int(r) for r in roi]))
    act = ACT_FACTOR.get(method, 6.0) * vox * max(full_res_width(network), in_channels) * 4
    extra = capture_bytes(network, roi) if method != "erf" else 0
    if method == "rollout":
        extra += ROLLOUT_CHUNK_BYTES
    return int(act + extra)


def available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(network: nn.Module, roi, method: str, in_channels: int = 1, *, available: int | None = None) -> int:
    """Raise :class:`ResourceLimitError` when the estimate exceeds the usable free memory; return it."""
    need = estimate_bytes(network, roi, method, in_channels)
    avail = available_bytes() if available is None else int(available)
    if need > USABLE_FRACTION * avail:
        raise ResourceLimitError(
            f"{method} for a {'×'.join(str(int(r)) for r in roi)} window needs about {need / 1024**3:.1f} GiB "
            f"but only {avail / 1024**3:.1f} GiB is free; use a smaller ROI, a smaller model or close other programs")
    return need
