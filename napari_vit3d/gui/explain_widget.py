"""Explain dock widget: click a voxel of the scan, see why the model labelled it.

Methods come from ``napari_vit3d.explain`` (point attention, attention rollout, DINO heads, ERF) and
run in a thread worker with an ``explain.ExplainSession`` kept per (scan, model, device), so a new
click inside a window already captured reuses that forward pass. Maps come back as ``Volume``s on
the scan's grid and are shown as additive Image layers on the scan (``<scan> · <method>``).
The query marker is a Points layer ``<scan> · query`` at the clicked voxel's centre. The model entry
"segformer3d-prompt (last click)" explains the promptable model's last prediction (Review › Click to
segment) on its crop, with the clicks and previous mask as it ran.
"""

from __future__ import annotations

import threading

import numpy as np
from napari.layers import Image, Points
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import GeometryError, ModelError, VolumeError
from ..explain.methods import METHODS, get_method
from ._common import (
    SEP,
    LayerCombo,
    create_engine_worker,
    find_layer,
    report_error,
    robust_limits,
    scan_layers,
    set_mouse_callback,
    unwrap,
)
from ._layers import file_voxel_to_world, inside, layer_kwargs, volume_from_layer, world_to_file_voxel
from .session import load_model_cached, run_of
from .styles import labels_colormap, labels_features
from .viewer_setup import install_radiological_view

#: the model entry that explains the promptable network's last prediction (Review → Click to segment)
PROMPT_ENTRY = "segformer3d-prompt (last click)"


class _Progress(QObject):
    progress = Signal(int, int)


def _explain_job(session_holder: dict, key: tuple, model_key: str, volume, device: str, method: str,
                 voxel, options: dict, progress, cancel):
    """Worker thread: reuse or build the ExplainSession, then run one explanation method.

    ``method`` is a name of the explanation-method registry (``explain.methods``); the GUI's fixed options
    (``gui_defaults``, e.g. ERF on a log scale) are added.
    """
    from .. import explain
    from ..models.devices import resolve_device

    if model_key == PROMPT_ENTRY:
        return _explain_prompt(key[0], method, voxel, options, progress, cancel)
    dev = str(resolve_device(device))
    loaded = load_model_cached(model_key, dev)
    session = session_holder.get(key)
    if session is None:
        session = explain.ExplainSession(loaded, volume)
        session_holder.clear()  # one scan/model at a time: captured windows are large
        session_holder[key] = session
    return explain.run_method(method, loaded, volume, voxel=tuple(int(v) for v in voxel), session=session,
                              progress=progress, cancel=cancel, **{**get_method(method).gui_defaults, **options})


def _explain_prompt(scan_name: str, method: str, voxel, options: dict, progress, cancel):
    """Worker thread: explain the promptable network's last prediction on ``scan_name`` (its crop, its
    clicks and previous mask as it ran), at the query voxel."""
    from .. import explain
    from .session import prompt_sessions

    ps = prompt_sessions.get(scan_name)
    if ps is None or ps.last is None:
        raise ModelError("Ctrl+click a structure in Review and correct › Click to segment first: the promptable "
                         "model is explained on its last prediction")
    if not explain.supports(ps.model.network, method):
        raise ModelError(f"the promptable model (SegFormer3D) does not support {get_method(method).title.lower()}; "
                         "use point attention or the effective receptive field")
    world = ps.volume.affine[:3, :3] @ np.asarray(voxel, float) + ps.volume.affine[:3, 3]
    if not ps.last.crop.contains(world):
        raise GeometryError("the query lies outside the promptable model's last crop; click inside the object's crop")
    return explain.run_method(method, ps.model, ps.volume, voxel=tuple(int(v) for v in voxel),
                              session=ps.explain_session(), progress=progress, cancel=cancel,
                              **{**get_method(method).gui_defaults, **options})


class ExplainWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        install_radiological_view(self.viewer)  # the plugin's view, set by its widgets (not by the reader)
        self._worker = None
        self._pending = None
        self._sessions: dict = {}
        self._cancel = threading.Event()
        self._bridge = _Progress()
        self._bridge.progress.connect(self._on_progress)
        self.query_voxel = None
        self.last_layer = None
        self._build()
        self.set_active(True)
        self.destroyed.connect(lambda *_: self._remove_callback(self.viewer))

    # -- UI -------------------------------------------------------------------------------------
    def _build(self):
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.scan_combo = LayerCombo(self.viewer, lambda lyr: lyr in scan_layers(self.viewer))
        self.scan_combo.currentIndexChanged.connect(self._suggest_model)
        form.addRow("Scan", self.scan_combo)
        self.model_combo = QComboBox()
        form.addRow("Model", self.model_combo)
        self.method_combo = QComboBox()
        for name, m in METHODS.items():
            if m.cli:  # composite methods (DINO head masks) have their own button
                self.method_combo.addItem(m.title, name)
        self.method_combo.currentIndexChanged.connect(self._on_method)
        form.addRow("Method", self.method_combo)
        self.layer_spin = QSpinBox()
        self.layer_spin.setRange(-1, 64)
        self.layer_spin.setValue(-1)
        self.layer_spin.setSpecialValueText("last")
        form.addRow("Attention layer", self.layer_spin)
        self.head_spin = QSpinBox()
        self.head_spin.setRange(-1, 64)
        self.head_spin.setValue(-1)
        self.head_spin.setSpecialValueText("mean of heads")
        form.addRow("Head", self.head_spin)
        self.mass_spin = QDoubleSpinBox()
        self.mass_spin.setRange(0.05, 1.0)
        self.mass_spin.setSingleStep(0.05)
        self.mass_spin.setValue(0.6)
        form.addRow("DINO mask: keep mass", self.mass_spin)
        lay.addLayout(form)
        self.active_check = QCheckBox("Clicking the scan sets the query voxel")
        self.active_check.toggled.connect(self.set_active)
        lay.addWidget(self.active_check)
        self.query_label = QLabel("query: click a voxel of the scan (pan/zoom mode)")
        self.query_label.setWordWrap(True)
        lay.addWidget(self.query_label)
        row = QHBoxLayout()
        self.explain_button = QPushButton("Explain at query")
        self.explain_button.clicked.connect(self.explain)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.explain_button, 1)
        row.addWidget(self.cancel_button)
        lay.addLayout(row)
        self.masks_button = QPushButton("DINO head masks → labels layer")
        self.masks_button.clicked.connect(self.masks_to_labels)
        lay.addWidget(self.masks_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        lay.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self._refresh_models()
        self._on_method()

    def _refresh_models(self):
        from ..models import registry

        try:
            names = [m.name for m in registry.list_models() if getattr(m, "error", None) is None]
        except Exception as exc:  # noqa: BLE001 - a widget callback reports every failure, never crashes the viewer
            report_error(exc, "listing models")
            names = []
        from ..prompt import list_prompt_models

        if list_prompt_models():
            names.append(PROMPT_ENTRY)
        self.model_combo.clear()
        self.model_combo.addItems(names)
        self._suggest_model()

    def _suggest_model(self, *_):
        """Preselect the model that segmented this scan (the one whose labels the user is reviewing)."""
        scan = self.scan_combo.layer()
        if scan is None or (scan.name == getattr(self, "_suggested_for", None) and self.model_combo.currentText()):
            return  # only when the scan changes: never override the user's choice on other layer events
        for lyr in reversed(list(self.viewer.layers)):
            rec = run_of(lyr)
            if rec is not None and rec.scan_layer == scan.name:
                if self.model_combo.findText(rec.model_key) < 0:
                    self.model_combo.addItem(rec.model_key)
                self.model_combo.setCurrentText(rec.model_key)
                self._suggested_for = scan.name
                return

    def method(self) -> str:
        return self.method_combo.currentData()

    def _on_method(self, *_):
        m = get_method(self.method())
        self.layer_spin.setEnabled(m.uses_layer)
        self.head_spin.setEnabled(m.uses_head)
        self.mass_spin.setEnabled(m.name == "dino-heads")
        self.masks_button.setEnabled(m.name == "dino-heads")

    # -- clicks ---------------------------------------------------------------------------------
    def set_active(self, on: bool):
        if self.active_check.isChecked() != on:
            self.active_check.setChecked(on)
            return
        set_mouse_callback(self.viewer, self._on_mouse, on)

    def _remove_callback(self, viewer):
        set_mouse_callback(viewer, self._on_mouse, False)

    def _on_mouse(self, viewer, event):
        """A click (press and release without dragging) in pan/zoom mode sets the query voxel."""
        if getattr(event, "button", 1) != 1 or event.modifiers:
            return
        active = viewer.layers.selection.active
        if active is not None and getattr(active, "mode", "pan_zoom") not in ("pan_zoom", "transform"):
            return  # painting, picking …: not a query
        start_pos = np.asarray(event.pos, float)
        world = np.asarray(event.position, float)
        yield
        while event.type == "mouse_move":
            if np.hypot(*(np.asarray(event.pos, float) - start_pos)) > 4:
                return  # a drag pans the view
            yield
        self.click_world(world)

    def click_world(self, world) -> tuple[int, int, int] | None:
        """What a click at napari world ``world`` (S, A, R mm) does: set the query and explain there."""
        scan = self.scan_combo.layer()
        if scan is None:
            return None
        world = np.asarray(world, float)
        if not inside(scan, world):
            self.status.setText("that point is outside the scan")
            return None
        voxel = world_to_file_voxel(scan, world)
        self.set_query(voxel)
        self.explain()
        return voxel

    def set_query(self, voxel) -> None:
        scan = self.scan_combo.layer()
        self.query_voxel = tuple(int(v) for v in voxel)
        centre = file_voxel_to_world(scan, self.query_voxel)
        name = f"{scan.name}{SEP}query"
        pts = find_layer(self.viewer, name)
        if isinstance(pts, Points):
            pts.data = centre[None, :]
        else:
            active = self.viewer.layers.selection.active
            pts = self.viewer.add_points(centre[None, :], name=name, size=4, face_color="transparent",
                                         border_color="cyan", border_width=0.25, symbol="cross",
                                         metadata={"vit3d_query": True}, units=scan.units[-3:],
                                         axis_labels=scan.axis_labels[-3:])
            if active is not None:
                self.viewer.layers.selection.active = active
        ras = (np.asarray(centre)[::-1]).round(1).tolist()
        self.query_label.setText(f"query: voxel {list(self.query_voxel)} of {scan.name}, RAS {ras} mm")

    # -- running --------------------------------------------------------------------------------
    def options(self) -> dict:
        m = get_method(self.method())
        opts = {}
        if m.uses_layer and self.layer_spin.value() >= 0:
            opts["layer"] = int(self.layer_spin.value())
        if m.uses_head:
            opts["head"] = int(self.head_spin.value()) if self.head_spin.value() >= 0 else "mean"
        return opts

    def explain(self, method: str | None = None):
        """Run the chosen method at the query voxel in a worker (a newer click waits for the running one)."""
        scan = self.scan_combo.layer()
        if scan is None:
            report_error(VolumeError("open a scan first"), "Explain")
            return None
        if self.query_voxel is None:
            report_error(GeometryError("click a voxel of the scan first"), "Explain")
            return None
        model_key = self.model_combo.currentText()
        if not model_key:
            report_error(VolumeError("no model: add one in the Segment widget"), "Explain")
            return None
        if self._worker is not None:
            self._pending = True  # explain the newest click when this one is done
            return None
        try:
            volume = volume_from_layer(scan)
        except Exception as exc:  # noqa: BLE001 - a widget callback reports every failure, never crashes the viewer
            report_error(exc, "Explain")
            return None
        method = method or self.method()
        options = self.options() if method != "dino-masks" else {**self.options(), "keep_mass": self.mass_spin.value()}
        # the session is kept per scan data (not re-hashed here: hashing a scan takes tens of ms on this thread)
        key = (scan.name, id(scan.data), model_key, "auto")
        self._cancel.clear()
        worker = create_engine_worker(_explain_job, self._sessions, key, model_key, volume, "auto", method,
                                      self.query_voxel, options, bridge=self._bridge, cancel_event=self._cancel)
        scan_name = scan.name
        worker.returned.connect(lambda vol: self._show(vol, scan_name, method))
        worker.errored.connect(lambda exc: report_error(exc, "Explain"))
        worker.finished.connect(self._finished)
        self._worker = worker
        self._pending = None
        self.explain_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.status.setText(f"{self.method_combo.currentText()} at voxel {list(self.query_voxel)}…")
        worker.start()
        return worker

    def cancel(self):
        if self._worker is not None:
            self._cancel.set()
            self._worker.quit()
            self._pending = None

    def _on_progress(self, done, total):
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def _finished(self):
        self._worker = None
        self.explain_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(0 if self._cancel.is_set() else 1)
        if self._cancel.is_set():
            self.status.setText("cancelled")
        elif self._pending:
            self.explain()

    # -- results --------------------------------------------------------------------------------
    def layer_name(self, scan_name: str, method: str) -> str:
        return f"{scan_name}{SEP}{get_method(method).layer_name}"

    def _show(self, vol, scan_name: str, method: str):
        if self._cancel.is_set():
            return
        try:
            self.last_layer = self._put_map(vol, scan_name, method)
        except Exception as exc:  # noqa: BLE001 - a widget callback reports every failure, never crashes the viewer
            report_error(exc, "Explain")

    def _put_map(self, vol, scan_name, method):
        if get_method(method).output == "labels":
            return self._put_masks(vol, scan_name, method)
        meta = dict(vol.metadata)
        data, kw = layer_kwargs(vol, metadata={"vit3d_map": meta})
        lo, hi = robust_limits(data, lo=60.0)  # the weakest 60 % of the map fade out: peaks stand out
        name = self.layer_name(scan_name, method)
        existing = find_layer(self.viewer, name)
        active = self.viewer.layers.selection.active
        if isinstance(existing, Image) and existing.data.shape == data.shape:
            existing.data = data
            existing.metadata.update(kw["metadata"])
            existing.contrast_limits_range = (min(lo, 0.0), hi)
            existing.contrast_limits = (lo, hi)
            lyr = existing
        else:
            if existing is not None:
                self.viewer.layers.remove(existing)
            kw.update(colormap=get_method(method).colormap, blending="additive", opacity=0.8,
                      contrast_limits=(lo, hi))
            lyr = self.viewer.add_image(data, name=name, **kw)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        pts = find_layer(self.viewer, f"{scan_name}{SEP}query")
        if pts is not None:  # keep the marker on top of the new map
            self.viewer.layers.move(self.viewer.layers.index(pts), len(self.viewer.layers))
        desc = ", ".join(f"{k} {meta[k]}" for k in ("layer", "head") if meta.get(k) is not None)
        lyr.help = str(meta.get("units", ""))
        self.status.setText(f"{name}" + (f" ({desc})" if desc else "") + " — click another voxel to update")
        return lyr

    def masks_to_labels(self):
        """DINO head masks (top ``keep mass`` of each head's CLS attention) → one labels layer (head + 1)."""
        return self.explain(method="dino-masks")

    def _put_masks(self, vol, scan_name, method):
        from ..io.labels import LabelTable

        data, kw = layer_kwargs(vol, kind="labels", metadata={"vit3d_map": dict(vol.metadata)})
        n_heads = int(vol.metadata.get("n_heads") or int(data.max()))
        table = LabelTable.default(range(n_heads + 1), {h + 1: f"head {h}" for h in range(n_heads)})
        name = self.layer_name(scan_name, method)
        existing = find_layer(self.viewer, name)
        if existing is not None:
            self.viewer.layers.remove(existing)
        lyr = self.viewer.add_labels(data, name=name, colormap=labels_colormap(table), opacity=0.6,
                                     features=labels_features(table), **kw)
        self.status.setText(f"{name}: label h+1 = voxels head h attends to most")
        return lyr
