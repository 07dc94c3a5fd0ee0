"""Review & correct dock widget: label list, corrections, changes vs the model, uncertain regions,
comparison with another model, and *Click to segment* (``gui.prompt_panel``: the promptable model).

Painting, filling and erasing are napari's own tools on the labels layer. The corrections
(``review.interpolate_slices``, ``remove_small_components``, ``fill_holes``) run in a thread worker
on a copy; their result is applied on the GUI thread through ``Labels.data_setitem`` inside one
``block_history`` so each one is a single step of napari's undo (Ctrl+Z or the Undo button).
The changes layer comes from ``review.diff`` against the model's untouched output.
"Compare with another model" runs ``review.compare_with_model`` (``inference.segment`` for model B,
then ``compare_labels`` against that same untouched output of model A) in a thread worker and shows
the result as a read-only ``<scan> · disagreement`` layer and a per-label Dice table.
"""

from __future__ import annotations

import threading
import zlib

import numpy as np
from napari.layers import Labels
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor, QFontDatabase
from qtpy.QtWidgets import (QCheckBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QHeaderView, QLabel,
                            QProgressBar, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from ..errors import VolumeError
from ..io.labels import LabelTable
from ..io.layers import volume_from_layer_data
from ._common import create_engine_worker, SEP, LayerCombo, ModelCombo, ProgressBridge, find_layer, info, report_error, unique_name, unwrap
from ._layers import display_geometry, display_spacing, layer_kwargs, ras_to_world
from .prompt_panel import PROMPT_KEY, PromptPanel
from .session import load_model_cached, run_of
from .styles import labels_colormap

#: colours of the changes layer: added (green), removed (red), relabelled (yellow)
DIFF_COLORS = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (0.1, 0.9, 0.2, 1.0), 2: (1.0, 0.15, 0.15, 1.0),
               3: (1.0, 0.85, 0.1, 1.0)}
#: colours of the disagreement layer (``review.compare`` codes): only A (orange), only B (blue),
#: different labels (magenta); agreement is transparent
COMPARE_COLORS = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (1.0, 0.55, 0.0, 1.0), 2: (0.1, 0.6, 1.0, 1.0),
                  3: (1.0, 0.1, 0.9, 1.0)}
#: metadata key of the disagreement layer (derived: replaced by the next comparison, never edited)
COMPARE_KEY = "vit3d_compare"


def _compare_job(labels_a, scan, model_key: str, device: str, settings: dict, table, name_a: str, progress, cancel):
    """Runs in the worker thread: load model B (cached), segment the scan with it, compare with A."""
    from ..models.devices import resolve_device
    from ..review.compare import compare_with_model

    dev = str(resolve_device(device))
    loaded = load_model_cached(model_key, dev)
    return compare_with_model(labels_a, scan, loaded, label_table=table, name_a=name_a, name_b=model_key,
                              device=dev, overlap=float(settings.get("overlap", 0.25)),
                              sw_batch_size=settings.get("sw_batch_size"), progress=progress, cancel=cancel)


def label_table_of(layer) -> LabelTable:
    """The layer's label table: from its run record, else from its features, else defaults."""
    rec = run_of(layer)
    values = np.unique(np.asarray(layer.data)).tolist() if layer.data.size <= 64_000_000 else []
    if rec is not None:
        return rec.label_table.with_missing(values)
    names = {}
    try:
        feats = layer.features
        if "index" in feats and "name" in feats:
            names = {int(i): str(n) for i, n in zip(feats["index"], feats["name"])}
    except Exception:
        pass
    return LabelTable.default(sorted(set(values) | set(names)), names)


def apply_labels(layer: Labels, new: np.ndarray) -> int:
    """Write ``new`` into ``layer`` as ONE undoable step; returns the number of voxels changed."""
    old = np.asarray(layer.data)
    changed = np.nonzero(old != new)
    n = int(changed[0].size)
    if n:
        with layer.block_history():
            layer.data_setitem(changed, new[changed])
    return n


class ReviewWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        self._worker = None
        self._watched = None
        self._last_crc = None
        self._hidden: set[int] = set()
        self._create_diff = False
        self._compare_worker = None
        self._compare_cancel = threading.Event()
        self._compare_bridge = ProgressBridge()
        self._compare_bridge.progress.connect(self._on_compare_progress)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(300)
        self._debounce.timeout.connect(self.refresh)
        self._build()
        self.labels_combo.currentIndexChanged.connect(self._on_layer_changed)
        self._on_layer_changed()

    # -- UI -------------------------------------------------------------------------------------
    def _build(self):
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.labels_combo = LayerCombo(self.viewer, lambda l: isinstance(l, Labels) and not l.name.endswith(
            f"{SEP}changes") and "vit3d_diff" not in l.metadata and COMPARE_KEY not in l.metadata
            and PROMPT_KEY not in l.metadata)
        form.addRow("Labels", self.labels_combo)
        lay.addLayout(form)

        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["show", "label", "volume (mL)", "voxels"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.Stretch)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.setSelectionMode(QTableWidget.SingleSelection)
        self.table.itemChanged.connect(self._on_item_changed)
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self.table.setMinimumHeight(120)
        lay.addWidget(self.table)
        hint = QLabel("Paint, fill and erase with the layer controls (top left); select a row to paint that label.")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: gray")
        lay.addWidget(hint)

        tools = QGroupBox("Corrections (each one is a single undo step)")
        tl = QVBoxLayout(tools)
        self.interp_button = QPushButton("Interpolate label between drawn slices")
        self.interp_button.setToolTip("fills the slices (along the axis you are scrolling) between slices where "
                                      "the selected label is drawn")
        self.interp_button.clicked.connect(self.interpolate)
        tl.addWidget(self.interp_button)
        row = QHBoxLayout()
        self.remove_button = QPushButton("Remove pieces smaller than")
        self.remove_button.clicked.connect(self.remove_small)
        self.min_ml = QDoubleSpinBox()
        self.min_ml.setDecimals(3)
        self.min_ml.setRange(0.001, 10000)
        self.min_ml.setValue(0.1)
        self.min_ml.setSuffix(" mL")
        row.addWidget(self.remove_button)
        row.addWidget(self.min_ml)
        tl.addLayout(row)
        self.fill_button = QPushButton("Fill holes")
        self.fill_button.clicked.connect(self.fill)
        tl.addWidget(self.fill_button)
        row = QHBoxLayout()
        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(self.undo)
        self.redo_button = QPushButton("Redo")
        self.redo_button.clicked.connect(self.redo)
        row.addWidget(self.undo_button)
        row.addWidget(self.redo_button)
        tl.addLayout(row)
        lay.addWidget(tools)

        self.diff_check = QCheckBox("Show changes vs the model (green added, red removed, yellow relabelled)")
        self.diff_check.setChecked(True)
        self.diff_check.toggled.connect(self._on_diff_toggled)
        lay.addWidget(self.diff_check)
        self.diff_summary = QLabel("")
        self.diff_summary.setWordWrap(True)
        lay.addWidget(self.diff_summary)

        unc = QGroupBox("Uncertain regions")
        ul = QHBoxLayout(unc)
        self.next_button = QPushButton("Next uncertain region ▶")
        self.next_button.clicked.connect(self.next_region)
        self.region_label = QLabel("")
        self.region_label.setWordWrap(True)
        ul.addWidget(self.next_button)
        ul.addWidget(self.region_label, 1)
        lay.addWidget(unc)

        cmp = QGroupBox("Compare with another model")
        cl = QVBoxLayout(cmp)
        row = QHBoxLayout()
        row.addWidget(QLabel("Model B"))
        self.compare_model_combo = ModelCombo()
        self.compare_model_combo.refresh()
        self.compare_model_combo.setToolTip("A is the model that made the chosen labels (its untouched output)")
        row.addWidget(self.compare_model_combo, 1)
        cl.addLayout(row)
        row = QHBoxLayout()
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip("segment the scan with model B and map where A and B disagree")
        self.compare_button.clicked.connect(self.compare)
        self.compare_cancel_button = QPushButton("Cancel")
        self.compare_cancel_button.setEnabled(False)
        self.compare_cancel_button.clicked.connect(self.cancel_compare)
        row.addWidget(self.compare_button, 1)
        row.addWidget(self.compare_cancel_button)
        cl.addLayout(row)
        self.compare_progress = QProgressBar()
        self.compare_progress.setRange(0, 1)
        self.compare_progress.setValue(0)
        self.compare_progress.setFormat("%v / %m windows")
        cl.addWidget(self.compare_progress)
        key = QLabel(" &nbsp; ".join(f"<span style='color:{QColor.fromRgbF(*COMPARE_COLORS[c][:3]).name()}'>■</span> {t}"
                                     for c, t in ((1, "only A"), (2, "only B"), (3, "different labels"))))
        cl.addWidget(key)
        self.compare_text = QLabel("")
        self.compare_text.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.compare_text.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.compare_text.setWordWrap(True)  # the summary line is long: wrap it rather than widen the dock
        cl.addWidget(self.compare_text)
        lay.addWidget(cmp)

        self.prompt_panel = PromptPanel(self)
        lay.addWidget(self.prompt_panel)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)

    # -- layer tracking -------------------------------------------------------------------------
    def layer(self) -> Labels | None:
        lyr = self.labels_combo.layer()
        return lyr if isinstance(lyr, Labels) else None

    def _on_layer_changed(self, *_):
        lyr = self.layer()
        if self._watched is not None and self._watched is not lyr:
            for ev in (self._watched.events.paint, self._watched.events.set_data):
                try:
                    ev.disconnect(self._schedule)
                except (TypeError, ValueError, RuntimeError):
                    pass
        if lyr is not None and lyr is not self._watched:
            lyr.events.paint.connect(self._schedule)
            lyr.events.set_data.connect(self._schedule)
        self._watched = lyr
        self._hidden = set()
        self._last_crc = None
        self._create_diff = False  # the changes layer appears with the first edit (or the checkbox)
        rec = run_of(lyr)
        n = len(rec.regions) if rec is not None else 0
        self.next_button.setEnabled(n > 0)
        self.region_label.setText(f"{n} region(s) above the threshold" if rec is not None and rec.uncertainty is not None
                                  else "run Segment with the uncertainty layer on")
        self._suggest_model_b(rec)
        self.refresh(force=True)

    def _schedule(self, event=None):
        if event is not None and getattr(event, "type", "") == "paint":
            self._create_diff = True
        self._debounce.start()

    def _on_diff_toggled(self, on):
        self._create_diff = bool(on)
        self.refresh(force=True)

    def refresh(self, force: bool = False):
        """Recompute the label list and the changes layer (skipped when the data did not change)."""
        lyr = self.layer()
        if lyr is None or lyr not in self.viewer.layers:
            self.table.setRowCount(0)
            return
        data = np.asarray(lyr.data)
        crc = zlib.crc32(np.ascontiguousarray(data).view(np.uint8).ravel()) if data.size else 0
        if not force and crc == self._last_crc:
            return
        self._last_crc = crc
        self._fill_table(lyr, data)
        self._update_diff(lyr, data)

    def _fill_table(self, lyr, data):
        table = label_table_of(lyr)
        try:
            vox_ml = abs(float(np.linalg.det(display_geometry(lyr).display_affine[:3, :3]))) / 1000.0
        except VolumeError:
            vox_ml = float(np.prod(np.abs(lyr.scale[-3:]))) / 1000.0
        counts = np.bincount(data.ravel().astype(np.int64, copy=False)) if data.size and data.min() >= 0 else np.zeros(1)
        selected = self._selected_label()
        self.table.blockSignals(True)
        entries = [e for e in table if e.index != 0]
        self.table.setRowCount(len(entries))
        for r, e in enumerate(entries):
            n = int(counts[e.index]) if e.index < counts.size else 0
            show = QTableWidgetItem()
            show.setFlags(Qt.ItemIsUserCheckable | Qt.ItemIsEnabled | Qt.ItemIsSelectable)
            show.setCheckState(Qt.Unchecked if e.index in self._hidden else Qt.Checked)
            show.setData(Qt.UserRole, e.index)
            show.setBackground(QColor.fromRgbF(*e.color[:3], 1.0))
            self.table.setItem(r, 0, show)
            name = QTableWidgetItem(f"{e.index}: {e.name}")
            name.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
            self.table.setItem(r, 1, name)
            for c, text in ((2, f"{n * vox_ml:.2f}"), (3, str(n))):
                it = QTableWidgetItem(text)
                it.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
                it.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.table.setItem(r, c, it)
            if e.index == selected:
                self.table.selectRow(r)
        self.table.blockSignals(False)

    def volumes_ml(self) -> dict[int, float]:
        """{label: mL} as shown in the table."""
        out = {}
        for r in range(self.table.rowCount()):
            out[int(self.table.item(r, 0).data(Qt.UserRole))] = float(self.table.item(r, 2).text())
        return out

    def _selected_label(self) -> int:
        """The label the tools act on: the layer's selected label (a table row selects it)."""
        lyr = self.layer()
        return int(lyr.selected_label) if lyr is not None else 1

    def _on_row_selected(self):
        lyr = self.layer()
        rows = self.table.selectionModel().selectedRows()
        if lyr is not None and rows:
            lyr.selected_label = int(self.table.item(rows[0].row(), 0).data(Qt.UserRole))

    def _on_item_changed(self, item):
        if item.column() != 0:
            return
        idx = int(item.data(Qt.UserRole))
        if item.checkState() == Qt.Checked:
            self._hidden.discard(idx)
        else:
            self._hidden.add(idx)
        lyr = self.layer()
        if lyr is not None:
            lyr.colormap = labels_colormap(label_table_of(lyr), hidden=self._hidden)

    # -- changes vs model -----------------------------------------------------------------------
    def diff_layer_name(self, lyr) -> str:
        return f"{lyr.name}{SEP}changes"

    def _update_diff(self, lyr, data):
        from ..review import diff

        rec = run_of(lyr)
        name = self.diff_layer_name(lyr)
        existing = find_layer(self.viewer, name)
        if rec is None or rec.model_labels.shape != data.shape:
            self.diff_summary.setText("no model output to compare with (run Segment)" if rec is None else "")
            return
        d = diff(rec.model_labels, data)
        added = int(np.count_nonzero(d.map == 1))
        removed = int(np.count_nonzero(d.map == 2))
        relab = int(np.count_nonzero(d.map == 3))
        self.diff_summary.setText(f"vs model: {added} voxel(s) added, {removed} removed, {relab} relabelled")
        if not self.diff_check.isChecked():
            if existing is not None:
                existing.visible = False
            return
        if isinstance(existing, Labels) and existing.data.shape == d.map.shape:
            existing.data = d.map
            existing.visible = True
        elif self._create_diff and existing is None:
            kw = {k: getattr(lyr, k) for k in ("scale", "translate", "units", "axis_labels")}
            if not np.allclose(lyr.affine.affine_matrix, np.eye(lyr.ndim + 1)):
                kw["affine"] = lyr.affine.affine_matrix
            existing = self.viewer.add_labels(
                d.map, name=name, colormap=DirectLabelColormap(color_dict=DIFF_COLORS), opacity=0.8,
                features={"index": [0, 1, 2, 3], "change": ["unchanged", "added", "removed", "relabelled"]},
                metadata={"vit3d_diff": {"of": lyr.name}}, **kw)
            existing.editable = False
            self.viewer.layers.selection.active = lyr

    # -- comparison with another model ----------------------------------------------------------
    def _suggest_model_b(self, rec) -> None:
        """Model B defaults to a model other than the one that made the labels."""
        combo = self.compare_model_combo
        if rec is None or combo.currentText() not in (rec.model_key, rec.model_name):
            return
        others = [combo.itemText(i) for i in range(combo.count())
                  if combo.itemText(i) not in (rec.model_key, rec.model_name)]
        if others:
            combo.setCurrentText(others[0])

    @property
    def comparing(self) -> bool:
        return self._compare_worker is not None

    def compare(self):
        """Segment the labels' scan with model B in a worker and compare (returns the worker or None)."""
        what = "Compare"
        if self._compare_worker is not None:
            info("a comparison is already running")
            return None
        lyr = self.layer()
        rec = run_of(lyr)
        if lyr is None:
            report_error(VolumeError("choose a labels layer first"), what)
            return None
        if rec is None:
            report_error(VolumeError(f"'{lyr.name}' has no model output to compare with: make it with Segment"), what)
            return None
        model_b = self.compare_model_combo.currentText()
        if not model_b:
            report_error(VolumeError("choose model B (models are added in the Segment widget)"), what)
            return None
        try:  # model A's untouched output, back in the scan file's voxel order with the scan's affine
            labels_a = volume_from_layer_data(rec.model_labels, lyr.metadata, name=rec.scan_layer, kind="labels")
        except Exception as exc:
            report_error(exc, what)
            return None
        self._compare_cancel.clear()
        worker = create_engine_worker(_compare_job, labels_a, rec.scan_volume, model_b,
                                      str(rec.settings.get("device", "auto")), dict(rec.settings), rec.label_table,
                                      rec.model_name, bridge=self._compare_bridge, cancel_event=self._compare_cancel)
        scan_name = rec.scan_layer
        worker.returned.connect(lambda cmp: self._on_compared(cmp, scan_name, lyr.name))
        worker.errored.connect(lambda exc: report_error(exc, what))
        worker.finished.connect(self._compare_finished)
        self._compare_worker = worker
        self.compare_button.setEnabled(False)
        self.compare_cancel_button.setEnabled(True)
        self.compare_progress.setRange(0, 0)
        self.compare_text.setText("")
        self.status.setText(f"comparing {rec.model_name} with {model_b} on {scan_name}…")
        worker.start()
        return worker

    def cancel_compare(self):
        if self._compare_worker is not None:
            self._compare_cancel.set()
            self._compare_worker.quit()
            self.status.setText("cancelling the comparison…")

    def _on_compare_progress(self, done: int, total: int):
        self.compare_progress.setRange(0, max(total, 1))
        self.compare_progress.setValue(done)

    def _compare_finished(self):
        self._compare_worker = None
        self.compare_button.setEnabled(True)
        self.compare_cancel_button.setEnabled(False)
        self.compare_progress.setRange(0, 1)
        if self._compare_cancel.is_set():
            self.compare_progress.setValue(0)
            self.status.setText("comparison cancelled; nothing was added")

    def _on_compared(self, cmp, scan_name: str, labels_name: str):
        if self._compare_cancel.is_set():
            return
        try:
            self._show_comparison(cmp, scan_name, labels_name)
        except Exception as exc:
            report_error(exc, "Compare")

    def _show_comparison(self, cmp, scan_name: str, labels_name: str):
        """GUI thread: put the disagreement map in its layer (replacing an earlier one) and show the table."""
        from ..review.compare import CODE_NAMES, format_comparison

        result = cmp.to_dict()
        s = result["summary"]
        data, kw = layer_kwargs(cmp.map, kind="labels",
                                metadata={COMPARE_KEY: {"of": labels_name, "a": s["name_a"], "b": s["name_b"],
                                                        "summary": s, "labels": result["labels"]}})
        name = f"{scan_name}{SEP}disagreement"
        existing = find_layer(self.viewer, name)
        features = {"index": list(CODE_NAMES), "name": list(CODE_NAMES.values())}
        if isinstance(existing, Labels) and COMPARE_KEY in existing.metadata:
            existing.data = data
            for key in ("scale", "translate", "affine"):
                if key in kw:
                    setattr(existing, key, kw[key])
            existing.metadata.update(kw["metadata"])
            existing.features = features
            existing.visible = True
            layer = existing
        else:
            layer = self.viewer.add_labels(data, name=unique_name(self.viewer, name), opacity=0.8,
                                           colormap=DirectLabelColormap(color_dict=COMPARE_COLORS),
                                           features=features, **kw)
            layer.editable = False
        labels = find_layer(self.viewer, labels_name)
        if labels is not None:
            self.viewer.layers.selection.active = labels
        self.compare_text.setText(format_comparison(result))
        self.status.setText(f"'{layer.name}': {s['voxels_only_a']} voxel(s) only A, {s['voxels_only_b']} only B, "
                            f"{s['voxels_different_labels']} different labels; mean Dice {s['mean_dice']:.3f}")
        return layer

    # -- corrections ----------------------------------------------------------------------------
    def _slice_axis(self) -> int:
        """The display axis the user scrolls through (the one not shown in the 2D view)."""
        nd = self.viewer.dims.not_displayed
        return int(nd[-1]) - (self.viewer.dims.ndim - 3) if nd else 0

    def _run_op(self, what: str, fn, *args, **kwargs):
        lyr = self.layer()
        if lyr is None:
            report_error(VolumeError("choose a labels layer first"), what)
            return None
        if self._worker is not None:
            info("a correction is already running")
            return None
        data = np.array(lyr.data, copy=True)
        worker = create_worker(fn, data, *args, _start_thread=False, _ignore_errors=True, **kwargs)

        def done(out):
            new, detail = out
            if lyr.data.shape != new.shape:
                return
            n = apply_labels(lyr, new)
            self._create_diff = self._create_diff or n > 0
            self.status.setText(f"{what}: {n} voxel(s) changed" + (f" ({detail})" if detail else "")
                                + ("; Undo reverts it" if n else ""))
            self.refresh(force=True)

        worker.returned.connect(done)
        worker.errored.connect(lambda exc: report_error(exc, what))
        worker.finished.connect(self._op_finished)
        self._worker = worker
        for b in (self.interp_button, self.remove_button, self.fill_button):
            b.setEnabled(False)
        self.status.setText(f"{what}…")
        worker.start()
        return worker

    def _op_finished(self):
        self._worker = None
        for b in (self.interp_button, self.remove_button, self.fill_button):
            b.setEnabled(True)

    def interpolate(self):
        from ..review import interpolate_slices

        lyr = self.layer()
        if lyr is None:
            return self._run_op("Interpolate", None)
        label, axis = self._selected_label(), self._slice_axis()
        spacing = display_spacing(lyr) if "vit3d" in lyr.metadata else tuple(np.abs(lyr.scale[-3:]))

        def job(data):
            new, n = interpolate_slices(data, label, axis, spacing=spacing)
            return new, f"label {label}, {n} voxel(s) painted"

        return self._run_op("Interpolate", job)

    def remove_small(self):
        from ..review import remove_small_components

        lyr = self.layer()
        vox_ml = float(np.prod(display_spacing(lyr))) / 1000.0 if lyr is not None and "vit3d" in lyr.metadata else \
            (float(np.prod(np.abs(lyr.scale[-3:]))) / 1000.0 if lyr is not None else 0.001)
        min_ml = float(self.min_ml.value())

        def job(data):
            new, removed = remove_small_components(data, min_ml=min_ml, voxel_volume_ml=vox_ml)
            return new, ", ".join(f"label {k}: −{v}" for k, v in removed.items())

        return self._run_op("Remove small pieces", job)

    def fill(self):
        from ..review import fill_holes

        def job(data):
            new, filled = fill_holes(data)
            return new, ", ".join(f"label {k}: +{v}" for k, v in filled.items())

        return self._run_op("Fill holes", job)

    def undo(self):
        lyr = self.layer()
        if lyr is not None:
            lyr.undo()
            self.refresh()

    def redo(self):
        lyr = self.layer()
        if lyr is not None:
            lyr.redo()
            self.refresh()

    # -- uncertain regions ----------------------------------------------------------------------
    def next_region(self):
        """Move the view to the next most uncertain region (by rank); returns its world position."""
        lyr = self.layer()
        rec = run_of(lyr)
        if rec is None or not rec.regions:
            info("no uncertain regions (run Segment with the uncertainty layer on)")
            return None
        rec.region_cursor = (rec.region_cursor + 1) % len(rec.regions)
        region = rec.regions[rec.region_cursor]
        world = ras_to_world(region.peak_ras)
        nd = self.viewer.dims.ndim
        point = list(self.viewer.dims.point)
        point[nd - 3:] = [float(v) for v in world]
        self.viewer.dims.point = point
        self.viewer.camera.center = tuple(float(v) for v in world[-2:]) if self.viewer.dims.ndisplay == 2 \
            else tuple(float(v) for v in world)
        unc = find_layer(self.viewer, f"{rec.scan_layer}{SEP}uncertainty")
        if unc is not None:
            unc.visible = True
        self.region_label.setText(f"region {rec.region_cursor + 1}/{len(rec.regions)}: {region.volume_ml:.2f} mL, "
                                  f"mean uncertainty {region.mean_uncertainty:.2f}")
        return world
