"""Memory estimates for explanations, checked *before* anything large is allocated.

The estimate is ``SAFETY × bytes_per_voxel[pass] × window voxels`` (+ the rollout work buffer), where
``bytes_per_voxel`` (the architecture's record in ``models.architectures``) is the peak growth of the
process's resident memory measured by ``benchmarks/bench_explain.py`` for the default-size models on CPU
(``docs/performance.md``, "Explanations"): ``forward`` for a captured forward pass without gradients
(attention, rollout, DINO heads), ``backward`` for one forward + backward pass (ERF). Architectures not measured get a
generous default. The margin ``SAFETY`` covers allocator slack and moderately wider models; a much
wider model than the defaults can exceed the estimate.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ..errors import ResourceLimitError
from ..models.architectures import UNKNOWN_BYTES_PER_VOXEL, architecture_of

SAFETY = 2.0
#: rollout computes one layer's fused attention this many bytes at a time (row chunks)
ROLLOUT_CHUNK_BYTES = 64 * 1024**2
#: fraction of the currently available memory a request may use
USABLE_FRACTION = 0.8


def estimate_bytes(network: nn.Module, roi, method: str, in_channels: int = 1) -> int:
    """Estimated peak memory (bytes) of ``method`` on one window of size ``roi``."""
    vox = float(np.prod([int(r) for r in roi]))
    arch = architecture_of(network)
    fwd, bwd = arch.bytes_per_voxel if arch is not None else UNKNOWN_BYTES_PER_VOXEL
    per = bwd if method == "erf" else fwd
    extra = ROLLOUT_CHUNK_BYTES if method == "rollout" else 0
    return int(SAFETY * per * vox * max(1, in_channels) ** 0.5 + extra)


def available_bytes() -> int:
    from ..io.memory import available_memory  # free memory, address-space and cgroup limits: one home

    return available_memory()


def check_memory(network: nn.Module, roi, method: str, in_channels: int = 1, *, available: int | None = None) -> int:
    """Raise :class:`ResourceLimitError` when the estimate exceeds the usable free memory; return it."""
    need = estimate_bytes(network, roi, method, in_channels)
    avail = available_bytes() if available is None else int(available)
    if need > USABLE_FRACTION * avail:
        raise ResourceLimitError(
            f"{method} for a {'×'.join(str(int(r)) for r in roi)} window needs about {need / 1024**3:.1f} GiB "
            f"but only {avail / 1024**3:.1f} GiB is free; use a smaller ROI, a smaller model or close other programs")
    return need
