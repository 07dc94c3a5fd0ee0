"""The sliding-window forward pass: MONAI ``sliding_window_inference`` through a :class:`Predictor` that
reports progress and checks for cancellation per window batch, with the CUDA out-of-memory fallback.

Used by ``inference.engine`` (our models) and ``inference.bundle`` (MONAI bundles' own inferers).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from ..errors import Cancelled, ModelError, ResourceLimitError
from ..models.devices import autocast_dtype, resolve_device

ProgressFn = Callable[[int, int], Any]
CancelFn = Callable[[], bool]

BLEND_MODES = ("gaussian", "constant")


class DeviceFallbackWarning(UserWarning):
    """The GPU ran out of memory even with one window per batch; the run continued on the CPU."""


def count_windows(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Number of windows MONAI's ``sliding_window_inference`` visits for this image, ROI and overlap."""
    n = 1
    for size, roi in zip(image_size, roi_size):
        size, roi = int(size), int(roi)
        if size <= roi:
            continue
        interval = max(int(roi * (1 - overlap)), 1)
        n *= int(math.ceil((size - roi) / interval)) + 1
    return n


def auto_batch_size(device: torch.device, roi_size, in_channels: int, n_windows: int,
                    dtype: torch.dtype | None) -> int:
    """Windows per batch: 1 on CPU/MPS; on CUDA as many as fit comfortably in free memory (≤ 16)."""
    if device.type != "cuda":
        return 1
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except (RuntimeError, AttributeError):  # pragma: no cover - driver without mem_get_info
        return 1
    voxels = int(np.prod(roi_size)) * max(1, in_channels)
    # rough activation budget per window voxel for 3D transformers/U-Nets (measured order of magnitude)
    per_window = voxels * (2 if dtype is not None else 4) * 96
    return int(max(1, min(16, n_windows, (0.5 * free) // max(per_window, 1))))


# ------------------------------------------------------------------------------------------
# the forward pass

class Predictor:
    """Wraps a network for ``sliding_window_inference`` (ours or a bundle's inferer): cancel check,
    autocast, progress per window batch."""

    def __init__(self, network, total: int, progress: ProgressFn | None, cancel: CancelFn | None,
                 amp_dtype: torch.dtype | None, device: torch.device, done: int = 0):
        self.network, self.total, self.progress, self.cancel = network, total, progress, cancel
        self.amp_dtype, self.device, self.done = amp_dtype, device, done

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.cancel is not None and self.cancel():
            raise Cancelled("segmentation was cancelled; nothing was written")
        ctx = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        with ctx:
            out = self.network(x)
        if isinstance(out, (tuple, list)):  # deep supervision: the first output is the full-resolution one
            out = out[0]
        if isinstance(out, dict):
            raise ModelError("the network returns a dict; wrap it so it returns the logits tensor")
        out = out.float()
        self.done += int(x.shape[0])
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)
        return out


def sliding_window_logits(network: torch.nn.Module, tensor: torch.Tensor, roi_size, *, overlap: float = 0.25,
                          mode: str = "gaussian", sw_batch_size: int | None = None, device="auto",
                          amp: bool = True, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                          progress_offset: int = 0, progress_total: int | None = None) -> torch.Tensor:
    """MONAI sliding-window inference of ``network`` on ``tensor`` (1, C, X, Y, Z) → float32 CPU logits.

    Windows are moved to the device one batch at a time and blended on the CPU. On CUDA
    out-of-memory, the batch is halved and the pass restarts; at one window per batch it restarts on
    the CPU with a :class:`DeviceFallbackWarning`. The network is returned to its original device.
    """
    from monai.inferers import sliding_window_inference

    dev = resolve_device(device)
    roi = tuple(int(r) for r in roi_size)
    n_windows = count_windows(tensor.shape[2:], roi, overlap)
    total = progress_total if progress_total is not None else n_windows
    try:
        home = next(network.parameters()).device
    except StopIteration:
        home = torch.device("cpu")
    amp_dtype = autocast_dtype(dev, amp)
    bs = int(sw_batch_size) if sw_batch_size is not None else auto_batch_size(dev, roi, tensor.shape[1], n_windows,
                                                                              amp_dtype)
    if bs < 1:
        raise ModelError(f"window batch size must be at least 1, got {sw_batch_size}")
    was_training = network.training
    network.eval()

    def attempt(dev_: torch.device, bs_: int, amp_: torch.dtype | None) -> torch.Tensor:
        predictor = Predictor(network, total, progress, cancel, amp_, dev_, done=progress_offset)
        network.to(dev_)
        with torch.inference_mode():
            out = sliding_window_inference(tensor, roi, bs_, predictor, overlap=overlap, mode=mode,
                                           sw_device=dev_, device=torch.device("cpu"))
        return out.float()

    try:
        return run_with_memory_fallback(attempt, dev, bs, amp_dtype)
    finally:
        network.to(home)
        network.train(was_training)


def run_with_memory_fallback(attempt: Callable[[torch.device, int, torch.dtype | None], torch.Tensor],
                             device: torch.device, batch_size: int, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """Call ``attempt(device, batch_size, amp_dtype)``; on CUDA out-of-memory halve the batch and retry, and
    at one window per batch continue on the CPU (fp32) with a :class:`DeviceFallbackWarning`. Running out
    of CPU memory is a :class:`~napari_vit3d.errors.ResourceLimitError` with a plain message."""
    dev, bs = device, int(batch_size)
    while True:
        try:
            return attempt(dev, bs, amp_dtype)
        except torch.OutOfMemoryError:
            if dev.type != "cuda":
                raise ResourceLimitError(f"out of {dev.type} memory with {bs} window(s) per batch; "
                                         "use a smaller ROI or another device") from None
            torch.cuda.empty_cache()
            if bs > 1:
                bs = max(1, bs // 2)
                warnings.warn(f"GPU out of memory; retrying with {bs} window(s) per batch", DeviceFallbackWarning,
                              stacklevel=3)
            else:
                warnings.warn("GPU out of memory even with one window per batch; continuing on the CPU (slower)",
                              DeviceFallbackWarning, stacklevel=3)
                dev, amp_dtype, bs = torch.device("cpu"), None, 1
        except (MemoryError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and "can't allocate memory" not in str(exc):
                raise
            raise ResourceLimitError(f"not enough memory on the {dev.type} for {bs} window(s) per batch; "
                                     "close other programs, use --sw-batch-size 1 or a smaller ROI") from None


__all__ = ["BLEND_MODES", "CancelFn", "DeviceFallbackWarning", "Predictor", "ProgressFn", "auto_batch_size",
           "count_windows", "run_with_memory_fallback", "sliding_window_logits"]
