"""What the dock widgets share: loaded models and the record of each segmentation run.

A run record is attached to the labels layer it produced (``layer.metadata[io.keys.RUN]``), so the
Explain, Review and Export widgets find the model, the scan and the model's original output from
the layer itself, whatever widget made it and in whatever order the widgets were opened. Like the
engine, the record keeps volumes in the scan file's own voxel order (``Volume``s with the scan's
affine); only what is shown is converted to napari's display order.
"""

from __future__ import annotations

import datetime as _dt
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io import keys

_models: dict[tuple[str, str], Any] = {}
_models_lock = threading.Lock()


def load_model_cached(name_or_path: str, device: str):
    """``models.load_model`` once per (model, device); safe to call from a worker thread."""
    from ..models import registry

    key = (str(name_or_path), str(device))
    with _models_lock:
        if key in _models:
            return _models[key]
    loaded = registry.load_model(name_or_path, device)
    with _models_lock:
        _models[key] = loaded
    return loaded


def forget_models() -> None:
    with _models_lock:
        _models.clear()


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass
class RunRecord:
    """One Segment run: inputs, settings and the model's untouched output (file order, scan's affine)."""

    scan_layer: str
    scan_volume: Any  # Volume (file order), kept for explanations and provenance
    scan_hash: str
    model_name: str
    model_key: str  # what load_model_cached was called with
    device: str
    settings: dict
    started: str
    finished: str
    model_labels: Any  # Volume: the model's labels in the scan file's voxel order, never edited
    label_table: Any  # io.labels.LabelTable
    weights_sha256: str | None = None
    uncertainty: Any = None  # Volume or None
    regions: list = field(default_factory=list)
    region_cursor: int = -1
    extras: dict = field(default_factory=dict)

    def model_labels_display(self) -> np.ndarray:
        """The model's labels in napari display order, to compare with the layer's data: a view (no copy),
        read it, never write to it."""
        return self.model_labels.geometry.to_display(self.model_labels.data)


def run_of(layer) -> RunRecord | None:
    if layer is None:
        return None
    rec = layer.metadata.get(keys.RUN)
    return rec if isinstance(rec, RunRecord) else None


#: scan layer name → its ``prompt.PromptSession`` (the Review widget's clicks; Explain reads it)
prompt_sessions: dict[str, Any] = {}
