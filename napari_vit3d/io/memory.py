"""How much memory a request may use: the one home of "is there room for this?", asked *before* allocating.

:func:`available_memory` is the least of what the system has free (``psutil``), what is left of the
process's address-space limit (``ulimit -v`` / ``prlimit --as``, so a limited process refuses cleanly
instead of dying in ``MemoryError``) and what is left of the cgroup's memory limit (containers). The
readers (``io.nifti``), model loading (``models.registry``), segmentation and explanations
(``inference.preflight``, ``explain.memory``) compare their estimates with it through
:func:`check_memory_request`: over ``USABLE_FRACTION`` of it is a one-line
:class:`~napari_vit3d.errors.ResourceLimitError` naming what to change, over ``WARN_FRACTION`` a
:class:`~napari_vit3d.errors.ResourceLimitWarning`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..errors import ResourceLimitError, ResourceLimitWarning

__all__ = ["USABLE_FRACTION", "WARN_FRACTION", "available_memory", "check_memory_request", "format_bytes"]

#: share of the available memory one request may use
USABLE_FRACTION = 0.8
#: above this share of the available memory a request is allowed with a warning
WARN_FRACTION = 0.5


def format_bytes(n: float) -> str:
    n = float(n)
    for unit, div in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def _address_space_left() -> int | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    import psutil

    return int(soft) - int(psutil.Process().memory_info().vms)


def _cgroup_left() -> int | None:
    for limit, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            text = Path(limit).read_text().strip()
            if text == "max":
                return None
            cap, cur = int(text), int(Path(used).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap >= 1 << 60:  # cgroup v1 "no limit"
            return None
        return cap - cur
    return None


def available_memory() -> int:
    """Bytes this process can still allocate (see the module docstring); never negative."""
    import psutil

    avail = int(psutil.virtual_memory().available)
    for left in (_address_space_left(), _cgroup_left() if os.name == "posix" else None):
        if left is not None:
            avail = min(avail, left)
    return max(0, avail)


def check_memory_request(need: int, *, what: str, change: str, available: int | None = None) -> int:
    """Refuse (:class:`ResourceLimitError`) or warn (:class:`ResourceLimitWarning`) before ``need`` bytes are
    allocated for ``what``; ``change`` says what the user can do (an option, a smaller input). Returns the
    available bytes it compared with."""
    avail = available_memory() if available is None else int(available)
    if need > USABLE_FRACTION * avail:
        raise ResourceLimitError(f"{what} needs about {format_bytes(need)} of memory but only {format_bytes(avail)} "
                                 f"is available; refused before allocating: {change}")
    if need > WARN_FRACTION * avail:
        warnings.warn(f"{what} needs about {format_bytes(need)} of the {format_bytes(avail)} of memory available; "
                      f"if the system starts swapping: {change}", ResourceLimitWarning, stacklevel=3)
    return avail
