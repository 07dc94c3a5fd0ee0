"""Export dock widget: corrected labels → NIfTI on the source scan's grid, label tables, provenance, maps.

Everything is written by the engine (``io.write_labels`` / ``io.write_image`` — atomic, never over the
scan — ``io.labels.LabelTable`` and ``review.build_provenance`` / ``write_json_atomic``) in a thread
worker; the widget only gathers the layers and the file names.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QCheckBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                            QVBoxLayout, QWidget)

from ..errors import VolumeError
from . import recovery
from ._common import SEP, LayerCombo, info, report_error, unwrap
from ._layers import volume_from_layer
from .review_widget import label_table_of
from .session import run_of


def safe_stem(name: str) -> str:
    stem = name.replace(SEP, "_")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return stem or "labels"


def export_files(labels_vol, table, out_dir: Path, stem: str, *, scan_vol=None, record=None,
                 labels_display=None, maps=(), protect=(), write_table=True, write_provenance=True) -> list[Path]:
    """Runs in the worker: write every requested file; returns the paths written."""
    from ..io import write_image, write_labels
    from ..review import build_provenance, write_json_atomic

    written = []
    protect = tuple(p for p in protect if p)
    path = out_dir / f"{stem}.nii.gz"
    written.append(write_labels(path, labels_vol.data, labels_vol.affine, header=labels_vol.header, protect=protect))
    if write_table:
        written.append(table.write_json(out_dir / f"{stem}.labels.json"))
        written.append(table.write_itksnap(out_dir / f"{stem}.itksnap.txt"))
    if write_provenance and record is not None and scan_vol is not None:
        from ..io import DisplayGeometry

        geom = DisplayGeometry.from_affine(scan_vol.affine, scan_vol.spatial_shape)
        model_file = np.ascontiguousarray(geom.from_display(record.model_labels))
        prov = build_provenance(
            scan_vol, {"name": record.model_name, "checkpoint_sha256": record.weights_sha256,
                       "device": record.device},
            {**record.settings, "started": record.started, "finished": record.finished},
            model_file, labels_vol.data, table)
        prov["exported_files"] = [Path(p).name for p in written] + [f"{stem}.provenance.json"]
        written.append(write_json_atomic(out_dir / f"{stem}.provenance.json", prov))
    for map_name, vol in maps:
        written.append(write_image(out_dir / f"{safe_stem(map_name)}.nii.gz", vol.data, vol.affine,
                                   header=vol.header, protect=protect))
    return [Path(p) for p in written]


class ExportWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        self._worker = None
        self.last_written: list[Path] = []
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.labels_combo = LayerCombo(self.viewer, lambda l: isinstance(l, Labels) and "vit3d_diff" not in l.metadata
                                       and "vit3d_prompt" not in l.metadata)  # a prompt preview is not a result
        self.labels_combo.currentIndexChanged.connect(self._suggest_name)
        form.addRow("Labels", self.labels_combo)
        row = QHBoxLayout()
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("folder to write into")
        browse = QPushButton("…")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._browse)
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        form.addRow("Folder", row)
        self.stem = QLineEdit()
        form.addRow("File name", self.stem)
        lay.addLayout(form)
        self.table_check = QCheckBox("label table (JSON + ITK-SNAP)")
        self.table_check.setChecked(True)
        self.prov_check = QCheckBox("provenance (scan and model hashes, settings, edits)")
        self.prov_check.setChecked(True)
        self.maps_check = QCheckBox("explanation and uncertainty maps of this scan")
        for cb in (self.table_check, self.prov_check, self.maps_check):
            lay.addWidget(cb)
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(self.export)
        lay.addWidget(self.export_button)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self._suggest_name()

    def _browse(self):
        path = QFileDialog.getExistingDirectory(self, "Export folder", self.folder.text() or str(Path.home()))
        if path:
            self.folder.setText(path)

    def _suggest_name(self, *_):
        lyr = self.labels_combo.layer()
        if lyr is None:
            return
        self.stem.setText(safe_stem(lyr.name))
        if not self.folder.text():
            src = (lyr.metadata.get("vit3d") or {}).get("source_path")
            rec = run_of(lyr)
            src = src or (rec.scan_volume.source_path if rec is not None else None)
            if src:
                self.folder.setText(str(Path(src).parent))

    def _map_layers(self, rec) -> list:
        if rec is None:
            return []
        prefix = f"{rec.scan_layer}{SEP}"
        return [l for l in self.viewer.layers if isinstance(l, Image) and l.name.startswith(prefix)
                and "vit3d_map" in l.metadata]

    def export(self):
        """Start the export in a worker; returns the worker (or None when the input is not usable)."""
        if self._worker is not None:
            info("an export is already running")
            return None
        lyr = self.labels_combo.layer()
        try:
            if not isinstance(lyr, Labels):
                raise VolumeError("choose a labels layer to export")
            folder = Path(self.folder.text().strip() or ".").expanduser()
            if not folder.is_dir():
                raise VolumeError(f"folder {folder} does not exist")
            stem = safe_stem(self.stem.text().strip() or lyr.name)
            labels_vol = volume_from_layer(lyr)
            rec = run_of(lyr)
            table = label_table_of(lyr)
            scan_vol = rec.scan_volume if rec is not None else None
            protect = [labels_vol.source_path, (lyr.metadata.get("vit3d") or {}).get("source_path")]
            if scan_vol is not None:
                protect.append(scan_vol.source_path)
            maps = [(m.name, volume_from_layer(m)) for m in self._map_layers(rec)] if self.maps_check.isChecked() else []
        except Exception as exc:
            report_error(exc, "Export")
            return None
        worker = create_worker(export_files, labels_vol, table, folder, stem, scan_vol=scan_vol, record=rec,
                               maps=maps, protect=tuple(protect), write_table=self.table_check.isChecked(),
                               write_provenance=self.prov_check.isChecked(), _start_thread=False,
                               _ignore_errors=True)
        scan_hash = rec.scan_hash if rec is not None else (lyr.metadata.get("vit3d_recovered") or {}).get("scan_hash")

        def done(paths):
            self.last_written = paths
            self.status.setText("written:\n" + "\n".join(str(p) for p in paths))
            info(f"exported {len(paths)} file(s) to {folder}")
            if scan_hash:
                recovery.discard_recovery(scan_hash)

        worker.returned.connect(done)
        worker.errored.connect(lambda exc: report_error(exc, "Export"))
        worker.finished.connect(self._finished)
        self._worker = worker
        self.export_button.setEnabled(False)
        self.status.setText("exporting…")
        worker.start()
        return worker

    def _finished(self):
        self._worker = None
        self.export_button.setEnabled(True)
