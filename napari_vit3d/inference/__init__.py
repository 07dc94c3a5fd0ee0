"""Inference: scan → model space → MONAI sliding-window inference → labels/probabilities on the scan grid.

Modules, one job each: ``preprocess`` (scan ↔ model grid, normalisation), ``predictor`` (the
sliding-window pass with progress, cancel and the GPU memory fallback), ``engine`` (model
resolution, the cached forward pass, :func:`segment`, test-time augmentation, preload), ``bundle``
(MONAI bundles' own pipelines), ``results`` (logits → labels/probabilities, output ``Volume``s),
``cache`` (forward-pass cache). Devices: :func:`napari_vit3d.models.devices.resolve_device`.
Nothing here imports Qt or napari.
"""

from ..models.devices import resolve_device
from .cache import ForwardCache, forward_cache, network_fingerprint
from .engine import ForwardPass, forward, predict_tta, preload, segment
from .predictor import DeviceFallbackWarning, Predictor, count_windows, sliding_window_logits
from .preprocess import ModelInput, normalize, preprocess, to_scan_grid
from .results import SegmentationResult, labels_from_logits, logits_to_scan, output_volume, probabilities_from_logits

__all__ = ["DeviceFallbackWarning", "ForwardCache", "ForwardPass", "ModelInput", "Predictor", "SegmentationResult",
           "count_windows", "forward", "forward_cache", "labels_from_logits", "logits_to_scan",
           "network_fingerprint", "normalize", "output_volume", "predict_tta", "preload", "preprocess",
           "probabilities_from_logits", "resolve_device", "segment", "sliding_window_logits", "to_scan_grid"]
