"""Export dock widget: corrected labels → NIfTI on the source scan's grid, label tables, provenance, maps.

The widget gathers the inputs (the labels layer, its scan, the model's output and provenance from the
run record, the folder and file name) and calls the export use case (``usecases.export`` =
``review.export.export_review``) in a thread worker: the labels, the label table (JSON + ITK-SNAP) and
the provenance record, which is built and checked before anything is written. With the maps ticked,
each map layer of that scan is then written beside them (``io.write_image``). Everything is atomic and
never over the scan or the file the labels came from, and never over an existing file without asking
(:meth:`ExportWidget.ask_overwrite`). After an export the layer's own recovery file goes (other layers of
the scan keep theirs); a failed export saves the layer's recovery file at once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import Vit3dError, VolumeError
from ..io import keys, same_grid
from ..io.formats import scan_stem
from ..io.layers import protected_paths
from . import autosave, recovery
from ._common import (
    SEP,
    LayerCombo,
    ask_yes_no_cancel,
    info,
    is_result_labels,
    label_table_of,
    report_error,
    scan_layers,
    unwrap,
)
from ._layers import volume_from_layer
from .jobs import JobRunner
from .session import run_of
from .viewer_setup import install_radiological_view


def safe_stem(name: str) -> str:
    stem = name.replace(SEP, "_")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return stem or "labels"


def _refuse_protected(paths, protect) -> None:
    """Refuse to write over a protected file (the scan, the file the labels were read from)."""
    for path in paths:
        for src in protect:
            if os.path.exists(path) and os.path.exists(src) and os.path.samefile(path, src):
                raise VolumeError(f"{path}: refusing to overwrite {src}, which these labels come from; "
                                  "choose another file name")


def export_job(path: Path, scan, labels, export_kwargs: dict, maps=(), protect=()) -> list[Path]:
    """Worker thread: ``usecases.export`` (labels, label table, provenance), then the maps; returns the
    paths written."""
    from ..io import write_image
    from ..usecases import export

    map_paths = [path.with_name(f"{safe_stem(name)}.nii.gz") for name, _ in maps]
    _refuse_protected([path, *map_paths], protect)
    written = list(export(path, scan, labels, **export_kwargs).values())
    for map_path, (_, vol) in zip(map_paths, maps):
        written.append(write_image(map_path, vol.data, vol.affine, header=vol.header, protect=tuple(protect)))
    return [Path(p) for p in written]



#: the label formats the Export widget offers (``io.formats.write_labels_as`` writes each)
EXPORT_FORMATS = (("NIfTI (.nii.gz)", ".nii.gz"), ("3D Slicer segmentation (.seg.nrrd)", ".seg.nrrd"),
                  ("NRRD (.nrrd)", ".nrrd"), ("MetaImage (.mha)", ".mha"), ("DICOM SEG (.dcm)", ".dcm"))

class ExportWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        install_radiological_view(self.viewer)  # the plugin's view, set by its widgets (not by the reader)
        self.last_written: list[Path] = []
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.labels_combo = LayerCombo(self.viewer, is_result_labels)  # a preview or a derived map is not a result
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
        self.format_combo = QComboBox()
        for text, suffix in EXPORT_FORMATS:
            self.format_combo.addItem(text, suffix)
        self.format_combo.setToolTip("DICOM SEG references the DICOM series it segments: only for a scan read "
                                     "from DICOM (docs/formats.md)")
        form.addRow("Format", self.format_combo)
        lay.addLayout(form)
        written = QLabel("Writes the labels with their label table (JSON + ITK-SNAP) and provenance "
                         "(scan and model hashes, settings, edits).")
        written.setWordWrap(True)
        written.setStyleSheet("color: gray")
        lay.addWidget(written)
        self.maps_check = QCheckBox("explanation and uncertainty maps of this scan")
        lay.addWidget(self.maps_check)
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(self.export)
        lay.addWidget(self.export_button)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self._job = JobRunner("Export", buttons=(self.export_button,), status=self.status)
        self._suggest_name()

    @property
    def busy(self) -> bool:
        return self._job.busy

    @property
    def _worker(self):
        """The running export's worker, or None (``docs/make_screenshots.py`` waits on it)."""
        return self._job.worker

    def _browse(self):
        path = QFileDialog.getExistingDirectory(self, "Export folder", self.folder.text() or str(Path.home()))
        if path:
            self.folder.setText(path)

    def _suggest_name(self, *_):
        lyr = self.labels_combo.layer()
        if lyr is None or lyr is getattr(self, "_named_for", None):
            return  # the list was only refreshed (a layer added elsewhere): keep the name the user typed
        self._named_for = lyr
        self.stem.setText(safe_stem(lyr.name))
        if not self.folder.text():
            src = (lyr.metadata.get(keys.PLUGIN) or {}).get("source_path")
            rec = run_of(lyr)
            src = src or (rec.scan_volume.source_path if rec is not None else None)
            if src:
                self.folder.setText(str(Path(src).parent))

    def _map_layers(self, scan_name: str) -> list:
        prefix = f"{scan_name}{SEP}"
        return [m for m in self.viewer.layers if isinstance(m, Image) and m.name.startswith(prefix)
                and keys.MAP in m.metadata]

    def _scan_of(self, lyr, labels_vol):
        """(scan layer name, scan Volume) the labels belong to: the run record's scan, else an open scan on
        the labels' grid (the one a recovered layer names first)."""
        rec = run_of(lyr)
        if rec is not None:
            return rec.scan_layer, rec.scan_volume
        want = (lyr.metadata.get(keys.RECOVERED) or {}).get("scan")
        for scan in sorted(scan_layers(self.viewer), key=lambda s: s.name != want):
            try:
                vol = volume_from_layer(scan)
            except Vit3dError:
                continue
            if same_grid(vol.affine, vol.spatial_shape, labels_vol.affine, labels_vol.spatial_shape):
                return scan.name, vol
        raise VolumeError(f"no open scan lies on the grid of '{lyr.name}': open the scan these labels belong to "
                          "(the export records its hash), or write the labels alone with File > Save Selected "
                          "Layers…")

    def inputs(self) -> dict:
        """What the export is called with (``export_job``'s arguments), gathered from the widget."""
        lyr = self.labels_combo.layer()
        if not isinstance(lyr, Labels):
            raise VolumeError("choose a labels layer to export")
        folder = Path(self.folder.text().strip() or ".").expanduser()
        if not folder.is_dir():
            raise VolumeError(f"folder {folder} does not exist")
        stem = safe_stem(self.stem.text().strip() or lyr.name)
        labels_vol = volume_from_layer(lyr)
        scan_name, scan_vol = self._scan_of(lyr, labels_vol)
        rec = run_of(lyr)
        kwargs = {"label_table": label_table_of(lyr)}
        if rec is not None:
            kwargs.update(model_labels=rec.model_labels.data,
                          model_info={"name": rec.model_name, "checkpoint_sha256": rec.weights_sha256,
                                      "device": rec.device},
                          settings={**rec.settings, "started": rec.started, "finished": rec.finished})
        maps = [(m.name, volume_from_layer(m)) for m in self._map_layers(scan_name)] if self.maps_check.isChecked() \
            else []
        protect = {str(p) for p in (labels_vol.source_path, scan_vol.source_path, *protected_paths(lyr.metadata)) if p}
        path = folder / f"{stem}{self.format_combo.currentData()}"
        return {"path": path, "scan": scan_vol, "labels": labels_vol, "export_kwargs": kwargs,
                "maps": maps, "protect": tuple(sorted(protect))}

    def ask_overwrite(self, paths: list[Path]) -> bool:
        """Ask before replacing existing files; tests patch this."""
        shown = "\n".join(str(p) for p in paths[:10])
        return ask_yes_no_cancel(self, "Replace existing files?",
                                 f"These files exist already:\n{shown}\nReplace them?", "Replace", None) == "yes"

    def existing_outputs(self, inputs: dict) -> list[Path]:
        """The files this export would replace (the labels file and its sidecars, the maps)."""
        path = inputs["path"]
        stem = scan_stem(path)
        names = [path, path.with_name(f"{stem}.labels.json"), path.with_name(f"{stem}.itksnap.txt"),
                 path.with_name(f"{stem}.provenance.json"),
                 *(path.with_name(f"{safe_stem(name)}.nii.gz") for name, _ in inputs.get("maps", ()))]
        return [p for p in names if p.exists()]

    def export(self):
        """Start the export in a worker; returns the worker (or None when the input is not usable, or the user
        would not replace existing files)."""
        if self._job.busy:
            info("an export is already running")
            return None
        lyr = self.labels_combo.layer()
        try:
            inputs = self.inputs()
        except (Vit3dError, OSError, ValueError) as exc:
            report_error(exc, "Export")
            return None
        existing = self.existing_outputs(inputs)
        if existing and not self.ask_overwrite(existing):
            info(f"not exported: {existing[0].name} exists (choose another file name)")
            return None
        rec = run_of(lyr)
        scan_hash = rec.scan_hash if rec is not None else (lyr.metadata.get(keys.RECOVERED) or {}).get("scan_hash")
        folder = inputs["path"].parent

        def done(paths):
            self.last_written = paths
            self.status.setText("written:\n" + "\n".join(str(p) for p in paths))
            info(f"exported {len(paths)} file(s) to {folder}")
            saver = autosave.saver_of(lyr)
            if saver is not None:
                saver.exported()  # this layer's recovery file only: other layers of the scan keep theirs
            elif scan_hash:
                lid = recovery.layer_id(lyr, create=False)
                if lid:
                    recovery.discard_recovery(scan_hash, lid)

        def failed(_exc):
            saver = autosave.saver_of(lyr)
            if saver is not None:
                saver.flush()  # the corrections are kept in the recovery file whatever went wrong

        worker = self._job.start(export_job, engine=False, on_done=done, status="exporting…", **inputs)
        if worker is not None:
            worker.errored.connect(failed)
        return worker
