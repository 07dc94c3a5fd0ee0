"""The *Compare with another model* group of Review and correct.

``review.compare_with_model`` (``inference.segment`` for model B, then ``compare_labels`` against the
untouched output of model A, the run record's file-order labels) runs in a thread worker, which also
prepares the disagreement layer and the per-label text; the GUI thread shows them as the read-only
``<scan> · disagreement`` layer (replaced by the next comparison) and a Dice table.
"""

from __future__ import annotations

from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QFontDatabase
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QVBoxLayout

from ..errors import VolumeError
from ..io import keys
from ._common import SEP, ModelCombo, build_layer, find_layer, info, report_error, upsert_layer
from ._layers import layer_kwargs
from .jobs import JobRunner, run_controls
from .session import load_model_cached, run_of

#: colours of the disagreement layer (``review.compare`` codes): only A (orange), only B (blue),
#: different labels (magenta); agreement is transparent
COMPARE_COLORS = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (1.0, 0.55, 0.0, 1.0), 2: (0.1, 0.6, 1.0, 1.0),
                  3: (1.0, 0.1, 0.9, 1.0)}


def _compare_job(labels_a, scan, model_key: str, settings: dict, table, name_a: str, labels_name: str,
                 progress, cancel):
    """Worker thread: load model B (cached), segment the scan with it, compare with A; prepare the layer."""
    from ..models.devices import resolve_device
    from ..review.compare import CODE_NAMES, compare_with_model, format_comparison

    dev = str(resolve_device(str(settings.get("device", "auto"))))
    loaded = load_model_cached(model_key, dev)
    cmp = compare_with_model(labels_a, scan, loaded, label_table=table, name_a=name_a, name_b=model_key,
                             device=dev, overlap=float(settings.get("overlap", 0.25)),
                             sw_batch_size=settings.get("sw_batch_size"), progress=progress, cancel=cancel)
    result = cmp.to_dict()
    s = result["summary"]
    data, kw = layer_kwargs(cmp.map, kind="labels",
                            metadata={keys.COMPARE: {"of": labels_name, "a": s["name_a"], "b": s["name_b"],
                                                     "summary": s, "labels": result["labels"]}})
    kw.update(opacity=0.8, colormap=DirectLabelColormap(color_dict=COMPARE_COLORS),
              features={"index": list(CODE_NAMES), "name": list(CODE_NAMES.values())})
    return data, kw, build_layer(data, "labels", **kw), s, format_comparison(result)


class ComparePanel(QGroupBox):
    """Compare the Review widget's labels (their model's untouched output) with model B."""

    def __init__(self, review, parent=None):
        super().__init__("Compare with another model", parent)
        self.review = review
        self.viewer = review.viewer
        cl = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("Model B"))
        self.model_combo = ModelCombo()
        self.model_combo.refresh()
        self.model_combo.setToolTip("A is the model that made the chosen labels (its untouched output)")
        row.addWidget(self.model_combo, 1)
        cl.addLayout(row)
        row, self.compare_button, self.cancel_button, self.progress = run_controls(
            "Compare", self.compare, fmt="%v / %m windows")
        self.compare_button.setToolTip("segment the scan with model B and map where A and B disagree")
        cl.addLayout(row)
        cl.addWidget(self.progress)
        swatch = "<span style='color:{}'>■</span> {}"
        key = QLabel(" &nbsp; ".join(swatch.format(QColor.fromRgbF(*COMPARE_COLORS[c][:3]).name(), t)
                                     for c, t in ((1, "only A"), (2, "only B"), (3, "different labels"))))
        cl.addWidget(key)
        self.text = QLabel("")
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.text.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.text.setWordWrap(True)  # the summary line is long: wrap it rather than widen the dock
        cl.addWidget(self.text)
        self._job = JobRunner("Compare", progress=self.progress, buttons=(self.compare_button,),
                              cancel_button=self.cancel_button, status=review.status,
                              cancelled_text="comparison cancelled; nothing was added")

    @property
    def comparing(self) -> bool:
        return self._job.busy

    def suggest_model_b(self, rec) -> None:
        """Model B defaults to a model other than the one that made the labels."""
        combo = self.model_combo
        if rec is None or combo.currentText() not in (rec.model_key, rec.model_name):
            return
        others = [combo.itemText(i) for i in range(combo.count())
                  if combo.itemText(i) not in (rec.model_key, rec.model_name)]
        if others:
            combo.setCurrentText(others[0])

    def compare(self):
        """Segment the labels' scan with model B in a worker and compare (returns the worker or None)."""
        what = "Compare"
        if self.comparing:
            info("a comparison is already running")
            return None
        lyr = self.review.layer()
        rec = run_of(lyr)
        if lyr is None:
            report_error(VolumeError("choose a labels layer first"), what)
            return None
        if rec is None:
            report_error(VolumeError(f"'{lyr.name}' has no model output to compare with: make it with Segment"), what)
            return None
        model_b = self.model_combo.currentText()
        if not model_b:
            report_error(VolumeError("choose model B (models are added in the Segment widget)"), what)
            return None
        self.text.setText("")
        scan_name, labels_name = rec.scan_layer, lyr.name
        return self._job.start(_compare_job, rec.model_labels, rec.scan_volume, model_b, dict(rec.settings),
                               rec.label_table, rec.model_name, labels_name,
                               on_done=lambda out: self._show(out, scan_name, labels_name),
                               status=f"comparing {rec.model_name} with {model_b} on {scan_name}…")

    def cancel(self):
        self._job.cancel()

    def _show(self, out, scan_name: str, labels_name: str):
        """GUI thread: put the disagreement map in its layer (replacing an earlier one) and show the table."""
        data, kw, prebuilt, s, text = out
        layer = upsert_layer(self.viewer, f"{scan_name}{SEP}disagreement", data, "labels",
                             owned=lambda lyr: keys.COMPARE in lyr.metadata, update=("features",), prebuilt=prebuilt,
                             **kw)
        layer.visible = True
        layer.editable = False
        labels = find_layer(self.viewer, labels_name)
        if labels is not None:
            self.viewer.layers.selection.active = labels
        self.text.setText(text)
        self.review.status.setText(f"'{layer.name}': {s['voxels_only_a']} voxel(s) only A, "
                                   f"{s['voxels_only_b']} only B, {s['voxels_different_labels']} different labels; "
                                   f"mean Dice {s['mean_dice']:.3f}")
        return layer
