"""Choosing the device a model runs on: the one home for device names (``auto``, ``cpu``, ``cuda[:N]``, ``mps``)
and for the precision a device runs at."""

from __future__ import annotations

import torch

from ..errors import ModelError

__all__ = ["autocast_dtype", "available_devices", "resolve_device"]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device="auto") -> torch.device:
    """``"auto"`` (or None / "") → CUDA > MPS > CPU; otherwise the named device (``cpu``, ``cuda``,
    ``cuda:N``, ``mps``), which must be available (:class:`ModelError` with a plain message if it is
    unknown or unavailable)."""
    name = str(device) if isinstance(device, torch.device) else str(device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ModelError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {name!r} was asked for but no CUDA GPU is available; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device {name!r} was asked for but there are only {torch.cuda.device_count()} CUDA GPU(s) "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if dev.type == "mps" and not _mps_available():
        raise ModelError(f"device {name!r} was asked for but Apple MPS is not available; use --device cpu or auto")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return dev


def available_devices() -> list[str]:
    """The device names a user can pick here: ``auto``, ``cpu`` and whichever accelerators exist."""
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if _mps_available():
        out.append("mps")
    return out


def autocast_dtype(device: torch.device, amp: bool = True) -> torch.dtype | None:
    """bf16 (or fp16 where bf16 is not supported) on CUDA when ``amp``; None (fp32) elsewhere."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
