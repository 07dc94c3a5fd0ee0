"""Sliding-window segmentation of a scan, mapped back exactly onto the scan's own voxels.

``segment(volume, model)`` = :func:`~napari_vit3d.inference.preprocess.preprocess` → MONAI
``sliding_window_inference`` (gaussian blending) through a predictor that reports progress and checks
for cancellation per window batch → model-space logits (cached) → logits resampled onto the scan grid
→ labels (argmax of the resampled logits) and probabilities (softmax of the same logits), so the label
shown at a voxel is always the most probable class there.

Devices: ``"auto"`` picks CUDA > MPS > CPU. On CUDA the forward runs under bf16 (or fp16) autocast,
the window batch size follows the free memory, and an out-of-memory error retries with half the batch,
then on the CPU with a warning. On the CPU everything is fp32 and deterministic (two runs give
bit-identical logits). Nothing here imports Qt or napari.
"""

from __future__ import annotations

import json
import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import Cancelled, ModelError, ResourceLimitError
from ..io.nifti import label_dtype
from ..io.volume import Volume
from .cache import forward_cache, network_fingerprint
from .preprocess import ModelInput, check_roi, preprocess, to_scan_grid

ProgressFn = Callable[[int, int], Any]
CancelFn = Callable[[], bool]

BLEND_MODES = ("gaussian", "constant")


class DeviceFallbackWarning(UserWarning):
    """The GPU ran out of memory even with one window per batch; the run continued on the CPU."""


# ------------------------------------------------------------------------------------------
# devices

def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA if available, else MPS, else CPU; an explicit device must be available.

    :func:`napari_vit3d.models.registry.resolve_device` with ``"auto"`` as the default (one home for
    choosing devices)."""
    from ..models.registry import resolve_device

    return resolve_device("auto" if device is None or device == "" else device)


def autocast_dtype(device: torch.device, amp: bool = True) -> torch.dtype | None:
    """bf16 (or fp16 where bf16 is not supported) on CUDA when ``amp``; None (fp32) elsewhere."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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
    except Exception:  # pragma: no cover - driver without mem_get_info
        return 1
    voxels = int(np.prod(roi_size)) * max(1, in_channels)
    # rough activation budget per window voxel for 3D transformers/U-Nets (measured order of magnitude)
    per_window = voxels * (2 if dtype is not None else 4) * 96
    return int(max(1, min(16, n_windows, (0.5 * free) // max(per_window, 1))))


# ------------------------------------------------------------------------------------------
# the forward pass

class _Predictor:
    """Wraps a network for ``sliding_window_inference``: cancel check, autocast, progress per batch."""

    def __init__(self, network, total: int, progress: ProgressFn | None, cancel: CancelFn | None,
                 amp_dtype: torch.dtype | None, device: torch.device, done: int = 0, tta_flip=None):
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

    dev = pick_device(device)
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
        predictor = _Predictor(network, total, progress, cancel, amp_, dev_, done=progress_offset)
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


# ------------------------------------------------------------------------------------------
# models

@dataclass
class _ModelParts:
    network: torch.nn.Module
    spec: Any
    weights_sha256: str | None
    bundle: Any = None


def _resolve_model(model, device) -> _ModelParts:
    if isinstance(model, (str, Path)):
        from ..models import registry  # late import: models/ may still be growing
        model = registry.load_model(str(model), device if str(device) != "auto" else pick_device(device))
    bundle = getattr(model, "bundle", None)
    if bundle is None and hasattr(model, "inferer") and hasattr(model, "preprocessing"):
        bundle = model  # a models.bundle.BundleModel itself
    network = getattr(model, "network", None)
    spec = getattr(model, "spec", None)
    if not isinstance(network, torch.nn.Module) or spec is None:
        raise ModelError(f"cannot segment with {type(model).__name__}: expected a loaded model (network + spec), "
                         "a model name, a checkpoint or a spec file")
    return _ModelParts(network, spec, getattr(model, "weights_sha256", None), bundle)


def _no_bundle(parts: _ModelParts, what: str) -> None:
    if parts.bundle is not None:
        raise ModelError(f"model {parts.spec.name!r} is a MONAI bundle: {what} needs a model with a spec "
                         "(bundles run their own pipeline through segment())")


@dataclass
class ForwardPass:
    """Model-space logits of one scan and model, and how they were made."""

    logits: torch.Tensor  # (C, X, Y, Z) float32, CPU, padded model grid
    model_input: ModelInput
    settings: dict
    fingerprint: str
    from_cache: bool = False


def _settings(spec, roi, overlap, mode, dev, amp, channels) -> dict:
    return {"roi_size": list(roi), "overlap": float(overlap), "mode": mode, "device": dev.type,
            "precision": str(autocast_dtype(dev, amp) or torch.float32).replace("torch.", ""),
            "channels": None if channels is None else [int(c) for c in channels],
            "spacing": list(spec.spacing), "orientation": spec.orientation,
            "normalization": dict(spec.normalization)}


def _check_args(overlap, mode):
    if not 0 <= float(overlap) < 1:
        raise ModelError(f"overlap must be in [0, 1), got {overlap}")
    if mode not in BLEND_MODES:
        raise ModelError(f"blend mode must be one of {', '.join(BLEND_MODES)}, got {mode!r}")


def _prepare(model, device, overlap, mode, roi_size, what: str):
    """Checked arguments of a model-space pass: (model parts, spec, device, ROI); bundles are refused."""
    _check_args(overlap, mode)
    parts = _resolve_model(model, device)
    _no_bundle(parts, what)
    spec = parts.spec
    return parts, spec, pick_device(device), check_roi(spec, roi_size if roi_size is not None else spec.roi_size)


def forward(volume: Volume, model, *, device="auto", overlap: float = 0.25, sw_batch_size: int | None = None,
            mode: str = "gaussian", roi_size=None, channels=None, amp: bool = True,
            progress: ProgressFn | None = None, cancel: CancelFn | None = None, use_cache: bool = True) -> ForwardPass:
    """Preprocess ``volume`` and run the sliding-window forward pass (or take it from the cache)."""
    parts, spec, dev, roi = _prepare(model, device, overlap, mode, roi_size, "the model-space forward pass")
    settings = _settings(spec, roi, overlap, mode, dev, amp, channels)
    fingerprint = network_fingerprint(parts.network)
    key = None
    if use_cache:
        key = (volume.content_hash(), fingerprint, json.dumps(settings, sort_keys=True, default=str))
        hit = forward_cache().get(key)
        if hit is not None:
            logits, mi = hit
            if progress is not None:
                progress(1, 1)
            return ForwardPass(logits, mi, settings, fingerprint, from_cache=True)
    if cancel is not None and cancel():
        raise Cancelled("segmentation was cancelled; nothing was written")
    mi = preprocess(volume, spec, roi_size=roi, channels=channels)
    logits = sliding_window_logits(parts.network, mi.tensor, roi, overlap=overlap, mode=mode,
                                   sw_batch_size=sw_batch_size, device=dev, amp=amp, progress=progress,
                                   cancel=cancel)[0]
    if key is not None:
        forward_cache().put(key, (logits, mi))
    return ForwardPass(logits, mi, settings, fingerprint)


# ------------------------------------------------------------------------------------------
# results on the scan grid

@dataclass
class SegmentationResult:
    """Labels and probabilities on the scan's own grid, plus the model-space pass they came from.

    ``logits`` (C, X, Y, Z, padded model grid) and ``model_input`` may be shared with the forward-pass
    cache: read them, do not modify them in place.
    """

    labels: Volume
    probabilities: Volume | None
    logits: torch.Tensor
    model_input: ModelInput
    metadata: dict = field(default_factory=dict)
    from_cache: bool = False


def _label_values(spec, n_classes: int) -> np.ndarray:
    labels = getattr(spec, "labels", ()) or ()
    want = 2 if n_classes == 1 else n_classes
    if len(labels) == want:
        return np.array([int(l.index) for l in labels])
    return np.arange(want)


def logits_to_scan(logits, model_input: ModelInput) -> np.ndarray:
    """Model-space logits (C, X, Y, Z) → scan-grid logits (x, y, z, C), linear interpolation."""
    return to_scan_grid(logits, model_input, order=1)


def probabilities_from_logits(scan_logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (sigmoid → two classes for a single-channel output), float32."""
    x = np.asarray(scan_logits, dtype=np.float32)
    if x.shape[-1] == 1:
        p = 1.0 / (1.0 + np.exp(-x))
        return np.concatenate([1 - p, p], axis=-1).astype(np.float32)
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def labels_from_logits(scan_logits: np.ndarray, spec=None) -> np.ndarray:
    """Argmax over the last axis (threshold 0 for one channel), as the spec's label indices."""
    x = np.asarray(scan_logits)
    cls = (x[..., 0] > 0).astype(np.int64) if x.shape[-1] == 1 else np.argmax(x, axis=-1)
    values = _label_values(spec, x.shape[-1])
    out = values[cls]
    return out.astype(label_dtype(int(values.max()), signed=bool(values.min() < 0)))


def _provenance(volume: Volume, parts: _ModelParts, fp: ForwardPass, sw_batch_size) -> dict:
    spec = parts.spec
    return {"model": spec.name, "architecture": spec.architecture, "weights_sha256": parts.weights_sha256,
            "network_fingerprint": fp.fingerprint, "source_path": volume.source_path, "scan": volume.name,
            "settings": {**fp.settings, "sw_batch_size": sw_batch_size},
            "model_spacing": list(fp.model_input.spacing), "resampled": fp.model_input.resampled,
            "label_names": {int(l.index): l.name for l in (spec.labels or ())}}


def segment(volume: Volume, model, *, device="auto", overlap: float = 0.25, sw_batch_size: int | None = None,
            mode: str = "gaussian", roi_size=None, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
            return_probabilities: bool = True, use_cache: bool = True, channels=None,
            amp: bool = True) -> SegmentationResult:
    """Segment ``volume`` with ``model`` (a loaded model, or a name / checkpoint / spec path for the registry).

    Returns labels (integer, on the scan's grid, in the file's voxel order, with the scan's affine and
    header) and, when asked, per-class probabilities (float32, classes last) on the same grid.
    ``progress(done, total)`` is called after every window batch; ``cancel()`` is checked before every
    batch and a True stops the run with :class:`~napari_vit3d.errors.Cancelled` (nothing is returned or
    cached). See the module docstring for devices and determinism.
    """
    parts = _resolve_model(model, device)
    if parts.bundle is not None:
        from .bundle import segment_bundle

        return segment_bundle(volume, parts.bundle, parts.spec, device=device, weights_sha256=parts.weights_sha256,
                              progress=progress, cancel=cancel, return_probabilities=return_probabilities, amp=amp)
    fp = forward(volume, parts, device=device, overlap=overlap, sw_batch_size=sw_batch_size, mode=mode,
                 roi_size=roi_size, channels=channels, amp=amp, progress=progress, cancel=cancel, use_cache=use_cache)
    if cancel is not None and cancel():
        raise Cancelled("segmentation was cancelled; nothing was written")
    scan_logits = logits_to_scan(fp.logits, fp.model_input)
    meta = _provenance(volume, parts, fp, sw_batch_size)
    labels = labels_from_logits(scan_logits, parts.spec)
    labels_vol = Volume(data=labels, affine=volume.affine.copy(), header=volume.header,
                        name=f"{volume.name} · labels", source_path=None,
                        metadata={"kind": "labels", "protect_path": volume.source_path, "vit3d": meta})
    probs_vol = None
    if return_probabilities:
        probs = probabilities_from_logits(scan_logits)
        probs_vol = Volume(data=probs, affine=volume.affine.copy(), header=volume.header,
                           name=f"{volume.name} · probabilities", source_path=None,
                           metadata={"kind": "probabilities", "protect_path": volume.source_path, "units": "probability",
                                     "classes": [int(v) for v in _label_values(parts.spec, scan_logits.shape[-1])],
                                     "vit3d": meta})
    return SegmentationResult(labels=labels_vol, probabilities=probs_vol, logits=fp.logits,
                              model_input=fp.model_input, metadata=meta, from_cache=fp.from_cache)


# ------------------------------------------------------------------------------------------
# first-use imports

def preload() -> None:
    """Import what a first :func:`segment` needs (torch, MONAI's sliding-window inferer, the model
    registry and architectures) without running anything.

    Importing these takes 1–2 s and holds Python's GIL for stretches of up to about 0.25 s (extension
    modules being initialised), which a thread cannot avoid. The GUI calls this in a background
    thread when the Segment widget is created, so that those stretches do not happen inside the first
    run (while the viewer should keep its 10 ms beat). Safe to call more than once and from any thread.
    """
    import monai.inferers  # noqa: F401  (also imports monai.networks)
    import monai.networks.nets  # noqa: F401

    import safetensors.torch  # noqa: F401

    from ..models import checkpoints, registry, segformer3d, vit_seg  # noqa: F401
    from . import bundle  # noqa: F401


# ------------------------------------------------------------------------------------------
# test-time augmentation

DEFAULT_TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (2,))


def predict_tta(volume: Volume, model, *, flips: Sequence[Sequence[int]] = DEFAULT_TTA_FLIPS, device="auto",
                overlap: float = 0.25, sw_batch_size: int | None = None, mode: str = "gaussian", roi_size=None,
                channels=None, amp: bool = True, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None) -> list[Volume]:
    """Flip test-time augmentation: one probability :class:`Volume` (scan grid, classes last) per flip.

    Each entry of ``flips`` lists model-space spatial axes (0 = R, 1 = A, 2 = S for RAS models) to
    flip; the input is flipped, segmented, and the logits flipped back before mapping onto the scan.
    ``()`` is the plain prediction. ``progress`` counts windows over all flips.
    """
    parts, spec, dev, roi = _prepare(model, device, overlap, mode, roi_size, "test-time augmentation")
    flips = [tuple(int(a) for a in f) for f in flips]
    if not flips:
        raise ModelError("test-time augmentation needs at least one flip (use () for the plain prediction)")
    if any(a not in (0, 1, 2) for f in flips for a in f):
        raise ModelError(f"flip axes must be 0, 1 or 2, got {flips}")
    if cancel is not None and cancel():
        raise Cancelled("segmentation was cancelled; nothing was written")
    mi = preprocess(volume, spec, roi_size=roi, channels=channels)
    per = count_windows(mi.tensor.shape[2:], roi, overlap)
    total = per * len(flips)
    settings = _settings(spec, roi, overlap, mode, dev, amp, channels)
    outs = []
    for i, f in enumerate(flips):
        dims = [2 + a for a in f]
        x = torch.flip(mi.tensor, dims) if dims else mi.tensor
        lg = sliding_window_logits(parts.network, x, roi, overlap=overlap, mode=mode, sw_batch_size=sw_batch_size,
                                   device=dev, amp=amp, progress=progress, cancel=cancel,
                                   progress_offset=i * per, progress_total=total)[0]
        if dims:
            lg = torch.flip(lg, [d - 1 for d in dims])
        outs.append(probabilities_from_logits(logits_to_scan(lg, mi)))
    meta = {"model": spec.name, "architecture": spec.architecture, "weights_sha256": parts.weights_sha256,
            "source_path": volume.source_path, "settings": settings}
    return [Volume(data=p, affine=volume.affine.copy(), header=volume.header,
                   name=f"{volume.name} · probabilities (flip {list(f)})", source_path=None,
                   metadata={"kind": "probabilities", "protect_path": volume.source_path, "units": "probability",
                             "tta_flip": list(f), "vit3d": meta})
            for p, f in zip(outs, flips)]


__all__ = ["BLEND_MODES", "DEFAULT_TTA_FLIPS", "DeviceFallbackWarning", "ForwardPass", "SegmentationResult",
           "auto_batch_size", "autocast_dtype", "count_windows", "forward", "labels_from_logits", "logits_to_scan",
           "pick_device", "preload", "predict_tta", "probabilities_from_logits", "run_with_memory_fallback", "segment",
           "sliding_window_logits"]
