"""Results on the scan grid: logits → probabilities and labels, and the one constructor of output
``Volume``s (labels, probabilities, maps) that lie on a scan: same affine and header, the scan's path
protected from being overwritten, kind and provenance in ``metadata``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..io.nifti import label_dtype
from ..io.volume import Volume
from .preprocess import ModelInput, to_scan_grid


def output_volume(scan: Volume, data: np.ndarray, *, kind: str, name: str, **metadata) -> Volume:
    """A result ``Volume`` on ``scan``'s grid: ``data`` (spatial axes of the scan first), the scan's affine
    and header, ``metadata`` = kind + protect_path (the scan's file) + the given entries. Named
    ``"<scan> · <name>"``."""
    return Volume(data=data, affine=np.array(scan.affine, dtype=float, copy=True), header=scan.header,
                  name=f"{scan.name} · {name}", source_path=None,
                  metadata={"kind": kind, "protect_path": scan.source_path, **metadata})


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


def label_values(spec, n_classes: int) -> np.ndarray:
    labels = getattr(spec, "labels", ()) or ()
    want = 2 if n_classes == 1 else n_classes
    if len(labels) == want:
        return np.array([int(lab.index) for lab in labels])
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
    values = label_values(spec, x.shape[-1])
    out = values[cls]
    return out.astype(label_dtype(int(values.max()), signed=bool(values.min() < 0)))


__all__ = ["SegmentationResult", "label_values", "labels_from_logits", "logits_to_scan", "output_volume",
           "probabilities_from_logits"]
