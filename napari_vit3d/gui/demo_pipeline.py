"""The demo's GUI part: dock the four widgets, segment the open sample, show one explanation.

``run_demo_pipeline(viewer, headless=True)`` blocks (processing Qt events) until the segmentation and
the point-attention map are shown, and returns what it made; with ``headless=False`` it starts the
segmentation and returns at once, the explanation following when the segmentation is done, so the
window stays live. Everything goes through the widgets exactly as a user's clicks would.
"""

from __future__ import annotations

import time

import numpy as np

from ._common import SEP, scan_layers

WIDGETS = (("1 Segment", "segment"), ("2 Explain", "explain"), ("3 Review and correct", "review"),
           ("4 Export", "export"))


def dock_widgets(viewer) -> dict:
    """Dock the plugin's four widgets (tabbed on the right); returns them by short name."""
    out = {}
    for display_name, key in WIDGETS:
        dw, widget = viewer.window.add_plugin_dock_widget("napari-vit3d", display_name, tabify=True)
        out[key] = widget
        out[f"{key}_dock"] = dw
    return out


def wait_until(predicate, timeout_s: float = 1800.0) -> None:
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    t0 = time.perf_counter()
    while not predicate():
        app.processEvents()
        time.sleep(0.005)
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError("the demo step did not finish in time")
    app.processEvents()


def query_voxel_in_labels(labels_layer) -> tuple[int, int, int]:
    """A display voxel inside the largest label (near its centre of mass), for the demo's click."""
    data = np.asarray(labels_layer.data)
    values, counts = np.unique(data[data > 0], return_counts=True)
    if values.size == 0:
        return tuple(s // 2 for s in data.shape)
    inside = np.argwhere(data == values[np.argmax(counts)])
    centre = inside.mean(0)
    return tuple(int(v) for v in inside[np.argmin(((inside - centre) ** 2).sum(1))])


def widgets_from_docked(docked) -> dict:
    """The same dict as :func:`dock_widgets` from ``(dock widget, widget)`` pairs docked elsewhere
    (``napari_vit3d.demo`` docks every manifest widget itself)."""
    from .explain_widget import ExplainWidget
    from .export_widget import ExportWidget
    from .review_widget import ReviewWidget
    from .segment_widget import SegmentWidget

    kinds = {SegmentWidget: "segment", ExplainWidget: "explain", ReviewWidget: "review", ExportWidget: "export"}
    out = {}
    for dw, widget in docked:
        for cls, key in kinds.items():
            if isinstance(widget, cls):
                out[key], out[f"{key}_dock"] = widget, dw
    return out


def run_demo_pipeline(viewer, *, headless: bool = True, scan_name: str | None = None, model: str | None = None,
                      method_index: int = 0, docked=None) -> dict:
    """Segment the scan (default: the newest one) with ``model`` (default: the bundled default) and
    show point attention at a voxel inside the largest label. ``docked``: the ``(dock, widget)`` pairs
    already docked (else the four widgets are docked here)."""
    widgets = widgets_from_docked(docked) if docked else {}
    if not {"segment", "explain"} <= set(widgets):
        widgets = dock_widgets(viewer)
    seg, ex = widgets["segment"], widgets["explain"]
    scans = scan_layers(viewer)
    if not scans:
        raise RuntimeError("open a scan first (the demo opens the Colin27 sample)")
    scan = viewer.layers[scan_name] if scan_name else scans[-1]
    seg.scan_combo.select(scan.name)
    if model:
        seg.model_combo.setCurrentText(model)
    worker = seg.run()
    if worker is None:
        return widgets

    def explain_now(*_):
        labels = viewer.layers[f"{scan.name}{SEP}labels"] if f"{scan.name}{SEP}labels" in viewer.layers else None
        if labels is None:
            return
        ex.scan_combo.select(scan.name)
        ex._suggest_model()
        ex.method_combo.setCurrentIndex(method_index)
        ex.click_world(scan.data_to_world(query_voxel_in_labels(labels)))
        viewer.layers.selection.active = labels

    if not headless:
        worker.finished.connect(explain_now)
        return widgets
    wait_until(lambda: not seg.running)
    explain_now()
    wait_until(lambda: not ex.busy)
    widgets["labels"] = viewer.layers[f"{scan.name}{SEP}labels"] if f"{scan.name}{SEP}labels" in viewer.layers else None
    widgets["map"] = ex.last_layer
    return widgets
