"""Review & correct dock widget: label list with volumes, changes vs the model, uncertain regions, and
its panels: corrections (``gui.corrections_panel``), comparison with another model
(``gui.compare_panel``) and *Click to segment* (``gui.prompt_panel``: the promptable model).

Painting, filling and erasing are napari's own tools on the labels layer. After an edit (debounced),
a worker takes a copy of the labels and computes the label volumes (``usecases.label_volumes``) and
the changes against the model's untouched output (``review.diff``); the GUI thread fills the table
from those numbers (kept in Python: :meth:`ReviewWidget.volumes_ml`) and shows the changes layer.
"""

from __future__ import annotations

import zlib

import numpy as np
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import VolumeError
from ..io import keys
from ._common import SEP, LayerCombo, find_layer, info, is_result_labels, label_table_of, unwrap, upsert_layer
from ._layers import geometry_meta, ras_to_world
from .compare_panel import ComparePanel
from .corrections_panel import CorrectionsPanel
from .jobs import JobRunner
from .prompt_panel import PromptPanel
from .session import run_of
from .styles import labels_colormap
from .viewer_setup import install_radiological_view

#: colours of the changes layer: added (green), removed (red), relabelled (yellow)
DIFF_COLORS = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (0.1, 0.9, 0.2, 1.0), 2: (1.0, 0.15, 0.15, 1.0),
               3: (1.0, 0.85, 0.1, 1.0)}
DIFF_FEATURES = {"index": [0, 1, 2, 3], "change": ["unchanged", "added", "removed", "relabelled"]}


def _voxel_affine(lyr) -> np.ndarray:
    """An affine whose determinant is the layer's voxel volume (mm³): the scan's, else from the scale."""
    try:
        return np.asarray(geometry_meta(lyr)["affine"], float)
    except VolumeError:
        return np.diag([*np.abs(np.asarray(lyr.scale[-3:], float)), 1.0])


def _summary_job(data: np.ndarray, affine, model_display, last_crc):
    """Worker thread: label volumes and the changes vs the model for one snapshot of the labels; None when
    the labels did not change since the snapshot whose checksum is ``last_crc``."""
    from ..review import diff
    from ..usecases import label_volumes

    crc = zlib.crc32(np.ascontiguousarray(data).view(np.uint8).ravel()) if data.size else 0
    if last_crc is not None and crc == last_crc:
        return None
    volumes = label_volumes(data, affine) if data.ndim == 3 else {}
    changes = None
    if model_display is not None and model_display.shape == data.shape:
        d = diff(model_display, data)
        changes = (d.map, tuple(int(np.count_nonzero(d.map == code)) for code in (1, 2, 3)))
    return crc, volumes, changes


class ReviewWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        install_radiological_view(self.viewer)  # the plugin's view, set by its widgets (not by the reader)
        self._watched = None
        self._last_crc = None
        self._hidden: set[int] = set()
        self._create_diff = False
        self._table = None  # the label table of the rows shown
        self._volumes_ml: dict[int, float] = {}
        self._again = None  # a refresh asked for while one runs: its ``force``
        self._force_next = False
        self._debounce = QTimer(self)  # edits and layer changes are summarised 0.3 s after the last one
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(300)
        self._debounce.timeout.connect(self._debounced)
        self._build()
        self._summary = JobRunner("Review")
        self._summary.on_finished.append(self._summary_finished)
        self.labels_combo.currentIndexChanged.connect(self._on_layer_changed)
        self._on_layer_changed()

    # -- UI -------------------------------------------------------------------------------------
    def _build(self):
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.labels_combo = LayerCombo(self.viewer, is_result_labels)
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

        self.status = QLabel("")  # shared by the panels; added to the layout last
        self.status.setWordWrap(True)
        self.corrections = CorrectionsPanel(self)
        lay.addWidget(self.corrections)

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

        self.compare_panel = ComparePanel(self)
        self.compare_model_combo = self.compare_panel.model_combo
        lay.addWidget(self.compare_panel)

        self.prompt_panel = PromptPanel(self)
        lay.addWidget(self.prompt_panel)

        lay.addWidget(self.status)
        lay.addStretch(1)

    # -- what the panels use --------------------------------------------------------------------
    def layer(self) -> Labels | None:
        lyr = self.labels_combo.layer()
        return lyr if isinstance(lyr, Labels) else None

    def mark_edited(self, edited: bool = True) -> None:
        """The labels were edited: the changes layer appears (with the next refresh)."""
        self._create_diff = self._create_diff or bool(edited)

    def compare(self):
        """Compare with model B (:meth:`ComparePanel.compare`)."""
        return self.compare_panel.compare()

    @property
    def comparing(self) -> bool:
        return self.compare_panel.comparing

    # -- layer tracking -------------------------------------------------------------------------
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
        self._table = None
        self._create_diff = False  # the changes layer appears with the first edit (or the checkbox)
        rec = run_of(lyr)
        n = len(rec.regions) if rec is not None else 0
        self.next_button.setEnabled(n > 0)
        has_map = rec is not None and rec.uncertainty is not None
        self.region_label.setText(f"{n} region(s) above the threshold" if has_map
                                  else "run Segment with the uncertainty layer on")
        self.compare_panel.suggest_model_b(rec)
        if lyr is None:
            self.refresh(force=True)  # clears the table
        else:  # debounced: closing the viewer removes layer after layer, and nothing should start then
            self._force_next = True
            self._debounce.start()

    def _debounced(self):
        force, self._force_next = self._force_next, False
        self.refresh(force=force)

    def _schedule(self, event=None):
        if event is not None and getattr(event, "type", "") == "paint":
            self._create_diff = True
        self._debounce.start()

    def _on_diff_toggled(self, on):
        self._create_diff = bool(on)
        self.refresh(force=True)

    @property
    def refreshing(self) -> bool:
        """True while the label volumes and changes are due or being computed."""
        return self._summary.busy or self._again is not None or self._debounce.isActive()

    def refresh(self, force: bool = False):
        """Recompute the label list and the changes layer in a worker (skipped when the data did not change)."""
        lyr = self.layer()
        if lyr is None or lyr not in self.viewer.layers:
            self.table.setRowCount(0)
            self._volumes_ml = {}
            return
        if self._summary.busy:
            self._again = bool(force or self._again)
            return
        rec = run_of(lyr)
        model = rec.model_labels_display() if rec is not None else None
        self._summary.start(_summary_job, np.array(lyr.data, copy=True), _voxel_affine(lyr), model,
                            None if force else self._last_crc, engine=False,
                            on_done=lambda out: self._show_summary(lyr, out))

    def _summary_finished(self):
        if self._again is not None:
            force, self._again = self._again, None
            self.refresh(force=force)

    def _show_summary(self, lyr, out):
        if out is None or lyr is not self.layer():
            return
        self._last_crc, volumes, changes = out
        self._fill_table(lyr, volumes)
        self._show_changes(lyr, changes)

    def _fill_table(self, lyr, volumes: dict):
        table = self._table = label_table_of(lyr, present=volumes)
        entries = [e for e in table if e.index != 0]
        self._volumes_ml = {e.index: float(volumes.get(e.index, {}).get("ml", 0.0)) for e in entries}
        selected = self._selected_label()
        self.table.blockSignals(True)
        self.table.setRowCount(len(entries))
        for r, e in enumerate(entries):
            n = int(volumes.get(e.index, {}).get("voxels", 0))
            show = QTableWidgetItem()
            show.setFlags(Qt.ItemIsUserCheckable | Qt.ItemIsEnabled | Qt.ItemIsSelectable)
            show.setCheckState(Qt.Unchecked if e.index in self._hidden else Qt.Checked)
            show.setData(Qt.UserRole, e.index)
            show.setBackground(QColor.fromRgbF(*e.color[:3], 1.0))
            self.table.setItem(r, 0, show)
            name = QTableWidgetItem(f"{e.index}: {e.name}")
            name.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
            self.table.setItem(r, 1, name)
            for c, text in ((2, f"{self._volumes_ml[e.index]:.2f}"), (3, str(n))):
                it = QTableWidgetItem(text)
                it.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
                it.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.table.setItem(r, c, it)
            if e.index == selected:
                self.table.selectRow(r)
        self.table.blockSignals(False)

    def volumes_ml(self) -> dict[int, float]:
        """{label: mL} of the table's rows (``usecases.label_volumes`` of the last refresh)."""
        return dict(self._volumes_ml)

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
            lyr.colormap = labels_colormap(self._table or label_table_of(lyr), hidden=self._hidden)

    # -- changes vs model -----------------------------------------------------------------------
    def diff_layer_name(self, lyr) -> str:
        return f"{lyr.name}{SEP}changes"

    def _show_changes(self, lyr, changes):
        rec = run_of(lyr)
        if rec is None or changes is None:
            self.diff_summary.setText("no model output to compare with (run Segment)" if rec is None else "")
            return
        dmap, (added, removed, relab) = changes
        self.diff_summary.setText(f"vs model: {added} voxel(s) added, {removed} removed, {relab} relabelled")
        name = self.diff_layer_name(lyr)
        existing = find_layer(self.viewer, name)
        if not self.diff_check.isChecked():
            if existing is not None:
                existing.visible = False
            return
        if existing is None and not self._create_diff:
            return
        kw = {k: getattr(lyr, k) for k in ("scale", "translate", "units", "axis_labels")}
        if not np.allclose(lyr.affine.affine_matrix, np.eye(lyr.ndim + 1)):
            kw["affine"] = lyr.affine.affine_matrix
        layer = upsert_layer(self.viewer, name, dmap, "labels", update=("visible",), opacity=0.8, visible=True,
                             colormap=DirectLabelColormap(color_dict=DIFF_COLORS), features=DIFF_FEATURES,
                             metadata={keys.DIFF: {"of": lyr.name}}, **kw)
        layer.editable = False

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
