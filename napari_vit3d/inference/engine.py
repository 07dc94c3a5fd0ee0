"""Sliding-window segmentation of a scan, mapped back exactly onto the scan's own voxels.

``segment(volume, model)`` = :func:`~napari_vit3d.inference.preprocess.preprocess` → MONAI
``sliding_window_inference`` (gaussian blending) through a predictor that reports progress and checks
for cancellation per window batch → model-space logits (cached) → logits resampled onto the scan grid
→ labels (argmax of the resampled logits) and probabilities (softmax of the same logits), so the label
shown at a voxel is the most probable class there — unless the model's spec asks for a post-processing
step (``ModelSpec.postprocess``, :mod:`~napari_vit3d.inference.postprocess`; ``segment(...,
postprocess=False)`` turns it off): the default brain model re-decides its tissue classes inside the
brain by the scan's own intensities, with the probabilities (returned unchanged) as the prior.

Devices: ``"auto"`` picks CUDA > MPS > CPU. On CUDA the forward runs under bf16 (or fp16) autocast,
the window batch size follows the free memory, and an out-of-memory error retries with half the batch,
then on the CPU with a warning. On the CPU everything is fp32 and deterministic (two runs give
bit-identical logits). Nothing here imports Qt or napari.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import Cancelled, ModelError
from ..io.volume import Volume
from ..models.architectures import check_window
from ..models.devices import autocast_dtype, resolve_device
from .cache import forward_cache, network_fingerprint
from .postprocess import TISSUE_EM, tissue_em
from .predictor import BLEND_MODES, CancelFn, ProgressFn, count_windows, sliding_window_logits
from .preflight import check_scan_content, check_segmentation
from .preprocess import ModelInput, preprocess, select_channels
from .results import (
    SegmentationResult,
    label_values,
    labels_from_logits,
    logits_to_scan,
    output_volume,
    probabilities_from_logits,
)

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
        model = registry.load_model(str(model), resolve_device(device))
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
    return parts, spec, resolve_device(device), check_window(spec, roi_size if roi_size is not None else spec.roi_size)


def _preflight(volume: Volume, parts: _ModelParts, roi, overlap, sw_batch_size, channels, *,
               probabilities: bool, flips: int = 1) -> None:
    """Refuse, before anything large is allocated, a scan the model cannot say anything about and a run that
    would not fit (``inference.preflight``; the front ends warn, this only refuses)."""
    check_scan_content(volume, parts.spec, channels=channels)
    check_segmentation(volume, parts.spec, network=None if parts.bundle is not None else parts.network,
                       roi_size=roi, overlap=overlap, sw_batch_size=sw_batch_size, probabilities=probabilities,
                       flips=flips, warn=False)


def _check_finite(logits: torch.Tensor, spec) -> None:
    if not bool(torch.isfinite(logits).all()):
        raise ModelError(f"model {spec.name!r} produced NaN/Inf outputs on this scan; its labels would be "
                         "meaningless, so none are given (broken weights, or an input far outside what it was "
                         "trained on)")


def forward(volume: Volume, model, *, device="auto", overlap: float = 0.25, sw_batch_size: int | None = None,
            mode: str = "gaussian", roi_size=None, channels=None, amp: bool = True,
            progress: ProgressFn | None = None, cancel: CancelFn | None = None, use_cache: bool = True,
            _checked: bool = False) -> ForwardPass:
    """Preprocess ``volume`` and run the sliding-window forward pass (or take it from the cache).

    Pre-flight checks (``inference.preflight``) run first: a blank, constant or too small scan and a run that
    would not fit in memory are refused before anything large is allocated."""
    parts, spec, dev, roi = _prepare(model, device, overlap, mode, roi_size, "the model-space forward pass")
    if not _checked:
        _preflight(volume, parts, roi, overlap, sw_batch_size, channels, probabilities=False)
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
    _check_finite(logits, spec)
    if key is not None:
        forward_cache().put(key, (logits, mi))
    return ForwardPass(logits, mi, settings, fingerprint)


def _provenance(volume: Volume, parts: _ModelParts, fp: ForwardPass, sw_batch_size) -> dict:
    spec = parts.spec
    return {"model": spec.name, "architecture": spec.architecture, "weights_sha256": parts.weights_sha256,
            "network_fingerprint": fp.fingerprint, "source_path": volume.source_path, "scan": volume.name,
            "settings": {**fp.settings, "sw_batch_size": sw_batch_size},
            "model_spacing": list(fp.model_input.spacing), "resampled": fp.model_input.resampled,
            "label_names": spec.label_names}


#: the scales of multi-scale test-time augmentation (``segment(..., scales=MULTISCALE)``, ``segment
#: --multiscale``): the scan is seen as if the head were 10 % smaller, as it is, and 10 % larger
MULTISCALE: tuple[float, ...] = (0.9, 1.0, 1.1)


def check_scales(scales) -> tuple[float, ...]:
    """``scales`` as a tuple of floats, each finite and in [0.5, 2]; anything else is a :class:`ModelError`."""
    try:
        out = tuple(float(v) for v in scales)
    except (TypeError, ValueError):
        raise ModelError(f"scales must be numbers, got {scales!r}") from None
    if not out or not all(np.isfinite(v) and 0.5 <= v <= 2.0 for v in out):
        raise ModelError(f"scales must be one or more numbers in [0.5, 2] (1 = the model's own spacing), "
                         f"got {scales!r}")
    return out


def _at_scale(parts: _ModelParts, scale: float) -> _ModelParts:
    """The model with its input spacing divided by ``scale``: the scan is resampled finer (``scale`` > 1),
    so anatomy covers ``scale`` times more model voxels, as if it were that much larger."""
    if scale == 1.0:
        return parts
    spec = dataclasses.replace(parts.spec, spacing=tuple(float(v) / scale for v in parts.spec.spacing))
    return _ModelParts(parts.network, spec, parts.weights_sha256, parts.bundle)


def segment(volume: Volume, model, *, device="auto", overlap: float = 0.25, sw_batch_size: int | None = None,
            mode: str = "gaussian", roi_size=None, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
            return_probabilities: bool = True, use_cache: bool = True, channels=None,
            amp: bool = True, scales=None, postprocess: bool = True) -> SegmentationResult:
    """Segment ``volume`` with ``model`` (a loaded model, or a name / checkpoint / spec path for the registry).

    Returns labels (integer, on the scan's grid, in the file's voxel order, with the scan's affine and
    header) and, when asked, per-class probabilities (float32, classes last) on the same grid.
    ``progress(done, total)`` is called after every window batch; ``cancel()`` is checked before every
    batch and a True stops the run with :class:`~napari_vit3d.errors.Cancelled` (nothing is returned or
    cached). See the module docstring for devices and determinism.

    ``scales`` (e.g. :data:`MULTISCALE`): multi-scale test-time augmentation. The scan is segmented once
    per scale with the model's spacing divided by the scale, each pass's probabilities are mapped onto
    the scan's grid and averaged, and the labels are the argmax of the average. Costs one pass per scale;
    ``logits`` and ``model_input`` of the result are the scale-1 pass's (the first pass's when 1 is not
    among the scales). None or ``(1,)``: one pass, as without it.

    ``postprocess``: apply the spec's label post-processing (``ModelSpec.postprocess``, e.g. the default
    model's ``tissue_em``; recorded in the result's ``settings``); False: the network's argmax as it is.
    """
    parts = _resolve_model(model, device)
    scales = None if scales is None else check_scales(scales)
    multiscale = scales is not None and scales != (1.0,)
    if parts.bundle is not None:
        if multiscale:
            raise ModelError("multi-scale test-time augmentation needs a native model; a MONAI bundle runs its own "
                             "preprocessing")
        from .bundle import segment_bundle

        _preflight(volume, parts, parts.spec.roi_size, overlap, sw_batch_size, channels,
                   probabilities=return_probabilities)
        return segment_bundle(volume, parts.bundle, parts.spec, device=device, weights_sha256=parts.weights_sha256,
                              progress=progress, cancel=cancel, return_probabilities=return_probabilities, amp=amp)
    _check_args(overlap, mode)
    _no_bundle(parts, "segmentation")
    roi = check_window(parts.spec, roi_size if roi_size is not None else parts.spec.roi_size)
    if multiscale:
        return _segment_multiscale(volume, parts, scales, roi, device=device, overlap=overlap,
                                   sw_batch_size=sw_batch_size, mode=mode, roi_size=roi_size, progress=progress,
                                   cancel=cancel, return_probabilities=return_probabilities, use_cache=use_cache,
                                   channels=channels, amp=amp, postprocess=postprocess)
    _preflight(volume, parts, roi, overlap, sw_batch_size, channels, probabilities=return_probabilities)
    fp = forward(volume, parts, device=device, overlap=overlap, sw_batch_size=sw_batch_size, mode=mode,
                 roi_size=roi_size, channels=channels, amp=amp, progress=progress, cancel=cancel, use_cache=use_cache,
                 _checked=True)
    if cancel is not None and cancel():
        raise Cancelled("segmentation was cancelled; nothing was written")
    scan_logits = logits_to_scan(fp.logits, fp.model_input)
    meta = _provenance(volume, parts, fp, sw_batch_size)
    probs = probabilities_from_logits(scan_logits) if return_probabilities else None
    labels = labels_from_logits(scan_logits, parts.spec)
    if postprocess:
        labels = _postprocess(volume, parts.spec, labels, meta, channels, lambda mask: scan_logits[mask])
    return _result(volume, parts, fp, meta, labels, probs, fp.from_cache)


def _postprocess(volume: Volume, spec, labels, meta: dict, channels, log_probs_at) -> np.ndarray:
    """The spec's label post-processing; ``log_probs_at(mask)``: the (N, C) log-probabilities at ``mask`` up to
    a constant per voxel (logits will do)."""
    cfg = spec.postprocess.get(TISSUE_EM)
    if not cfg:
        return labels
    image, _ = select_channels(volume, spec, channels)
    columns = [int(np.flatnonzero(label_values(spec, spec.n_classes) == c)[0]) for c in cfg["labels"]]

    def prior(mask):
        lp = log_probs_at(mask)
        if lp.shape[1] <= max(columns):   # e.g. a single-logit (sigmoid) model: no per-class probabilities
            raise ModelError(f"model {spec.name!r}: postprocess.{TISSUE_EM} needs one output per class; the "
                             f"network gives {lp.shape[1]}")
        return lp[:, columns]

    labels, info = tissue_em(image[..., 0], labels, prior, cfg)
    meta["settings"]["postprocess"] = {TISSUE_EM: dict(cfg)}
    meta["postprocess"] = {TISSUE_EM: info}
    return labels


def _result(volume: Volume, parts: _ModelParts, fp: ForwardPass, meta: dict, labels, probs,
            from_cache: bool) -> SegmentationResult:
    """Scan-grid ``labels`` and, unless None, ``probs`` (classes last) as the result's volumes; ``fp``'s logits."""
    labels_vol = output_volume(volume, labels, kind="labels", name="labels", vit3d=meta)
    probs_vol = None
    if probs is not None:
        probs_vol = output_volume(volume, probs, kind="probabilities", name="probabilities", units="probability",
                                  vit3d=meta, classes=[int(v) for v in label_values(parts.spec, probs.shape[-1])])
    return SegmentationResult(labels=labels_vol, probabilities=probs_vol, logits=fp.logits,
                              model_input=fp.model_input, metadata=meta, from_cache=from_cache)


def _segment_multiscale(volume: Volume, parts: _ModelParts, scales, roi, *, device, overlap, sw_batch_size, mode,
                        roi_size, progress, cancel, return_probabilities, use_cache, channels,
                        amp, postprocess) -> SegmentationResult:
    # the largest scale has the largest model grid; on the scan grid the mean and one pass's probabilities
    _preflight(volume, _at_scale(parts, max(scales)), roi, overlap, sw_batch_size, channels, probabilities=True,
               flips=2)
    n = len(scales)
    mean = None
    keep = None
    for i, s in enumerate(scales):
        def step(done, total, i=i):   # passes differ in window count: report the fraction of all passes
            if progress is not None:
                progress(int(round(1000 * (i + done / max(total, 1)))), 1000 * n)

        fp = forward(volume, _at_scale(parts, s), device=device, overlap=overlap, sw_batch_size=sw_batch_size,
                     mode=mode, roi_size=roi_size, channels=channels, amp=amp, progress=step, cancel=cancel,
                     use_cache=use_cache, _checked=True)
        p = probabilities_from_logits(logits_to_scan(fp.logits, fp.model_input))
        mean = p / n if mean is None else mean + p / n
        if keep is None or s == 1.0:
            keep = fp
    if cancel is not None and cancel():
        raise Cancelled("segmentation was cancelled; nothing was written")
    meta = _provenance(volume, parts, keep, sw_batch_size)
    meta["settings"]["scales"] = [float(s) for s in scales]
    labels = labels_from_logits(np.log(np.maximum(mean, 1e-12)), parts.spec)   # argmax of the mean probabilities
    if postprocess:
        labels = _postprocess(volume, parts.spec, labels, meta, channels,
                              lambda mask: np.log(np.maximum(mean[mask], 1e-12)))
    return _result(volume, parts, keep, meta, labels, mean.astype(np.float32) if return_probabilities else None, False)


# ------------------------------------------------------------------------------------------
# first-use imports

def preload() -> None:
    """Import what a first :func:`segment` needs (torch, MONAI's sliding-window inferer, the model
    registry and architectures) without running anything.

    Importing these takes 1–2 s and holds Python's GIL for stretches of up to about 0.25 s (extension
    modules being initialised), which a thread cannot avoid. The GUI calls this in a background
    thread when the Segment widget is created, so that those stretches do not happen inside the first
    run (while the viewer should keep its 10 ms beat). Safe to call more than once and from any thread.
    ``monai.bundle`` (and through it ``monai.apps``) is imported here too: a run that imports it in another
    thread while this one imports MONAI can hit a circular-import ``ImportError``, so the GUI's first run
    waits for this to finish (``gui.segment_widget``).
    """
    import monai.bundle  # noqa: F401  (imports monai.apps)
    import monai.inferers  # noqa: F401  (also imports monai.networks)
    import monai.networks.nets  # noqa: F401
    import safetensors.torch  # noqa: F401

    from ..models import checkpoints, registry, segformer3d, vit_seg  # noqa: F401

    # the pre-flight parameter count builds a network on PyTorch's meta device (in-place initialisation
    # skipped there, so torch._dynamo is no longer imported); a tiny build here still warms up the ViT path
    from ..models.spec import ModelSpec
    from . import bundle, predictor  # noqa: F401

    registry.parameter_count(ModelSpec(
        name="preload", architecture="vit_seg", roi_size=(16, 16, 16),
        arch_kwargs={"img_size": [16, 16, 16], "patch_size": 8, "hidden_size": 8, "mlp_dim": 8, "num_layers": 1,
                     "num_heads": 1, "feature_size": 4},
        labels=({"index": 0, "name": "background"}, {"index": 1, "name": "object"})))


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
    _preflight(volume, parts, roi, overlap, sw_batch_size, channels, probabilities=True, flips=len(flips))
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
        _check_finite(lg, spec)
        if dims:
            lg = torch.flip(lg, [d - 1 for d in dims])
        outs.append(probabilities_from_logits(logits_to_scan(lg, mi)))
    meta = {"model": spec.name, "architecture": spec.architecture, "weights_sha256": parts.weights_sha256,
            "source_path": volume.source_path, "settings": settings}
    return [output_volume(volume, p, kind="probabilities", name=f"probabilities (flip {list(f)})",
                          units="probability", tta_flip=list(f), vit3d=meta)
            for p, f in zip(outs, flips)]


__all__ = ["MULTISCALE", "ForwardPass", "SegmentationResult", "check_scales", "forward", "predict_tta", "preload",
           "segment"]
