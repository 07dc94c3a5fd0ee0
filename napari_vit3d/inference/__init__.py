"""Inference: scan → model space → MONAI sliding-window inference → labels/probabilities on the scan grid.

Public API: :func:`segment`, :func:`predict_tta`, :func:`forward` (model-space pass, cached),
:func:`preprocess` / :func:`to_scan_grid` (the geometry both inference and explanations use),
:func:`pick_device`. Nothing here imports Qt or napari.
"""

from .cache import ForwardCache, forward_cache, network_fingerprint
from .engine import (DeviceFallbackWarning, ForwardPass, SegmentationResult, count_windows, forward,
                     labels_from_logits, logits_to_scan, pick_device, predict_tta, preload, probabilities_from_logits,
                     segment, sliding_window_logits)
from .preprocess import ModelInput, normalize, preprocess, to_scan_grid

__all__ = ["DeviceFallbackWarning", "ForwardCache", "ForwardPass", "ModelInput", "SegmentationResult",
           "count_windows", "forward", "forward_cache", "labels_from_logits", "logits_to_scan",
           "network_fingerprint", "normalize", "pick_device", "predict_tta", "preload", "preprocess",
           "probabilities_from_logits", "segment", "sliding_window_logits", "to_scan_grid"]
