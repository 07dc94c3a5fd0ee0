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

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import GeometryError, ModelError, VolumeError
from ..explain.methods import METHODS, get_method
from ..io import keys
from ._common import (
    SEP,
    LayerCombo,
    build_layer,
    find_layer,
    model_names,
    report_error,
    robust_limits,
    scan_layers,
    set_mouse_callback,
    unwrap,
    upsert_layer,
)
from ._layers import file_voxel_to_world, inside, layer_kwargs, volume_from_layer, world_to_file_voxel
from .jobs import JobRunner, run_controls
from .session import load_model_cached, run_of
from .styles import labels_colormap, labels_features
from .viewer_setup import install_radiological_view

#: the model entry that explains the promptable network's last prediction (Review → Click to segment)
PROMPT_ENTRY = "segformer3d-prompt (last click)"


def _prepare(vol, method: str):
    """Worker thread: the layer data and keywords for a method's result (the GUI thread only inserts it)."""
    from ..io.labels import LabelTable

    m = get_method(method)
    if m.output == "labels":
        data, kw = layer_kwargs(vol, kind="labels", metadata={keys.MAP: dict(vol.metadata)})
        n_heads = int(vol.metadata.get("n_heads") or int(data.max()))
        table = LabelTable.default(range(n_heads + 1), {h + 1: f"head {h}" for h in range(n_heads)})
        kw.update(colormap=labels_colormap(table), features=labels_features(table), opacity=0.6)
        return vol, data, kw, None
    data, kw = layer_kwargs(vol, metadata={keys.MAP: dict(vol.metadata)})
    lo, hi = robust_limits(data, lo=60.0)  # the weakest 60 % of the map fade out: peaks stand out
    kw.update(colormap=m.colormap, blending="additive", opacity=0.8, contrast_limits=(lo, hi))
    # the layer object too (napari's layer models are plain Python): the GUI thread only inserts it
    layer = build_layer(data, "image", name=vol.name, **kw)
    layer.contrast_limits_range = (min(lo, 0.0), hi)
    layer.contrast_limits = (lo, hi)
    return vol, data, kw, layer


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
    vol = explain.run_method(method, loaded, volume, voxel=tuple(int(v) for v in voxel), session=session,
                             progress=progress, cancel=cancel, **{**get_method(method).gui_defaults, **options})
    return _prepare(vol, method)


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
    vol = explain.run_method(method, ps.model, ps.volume, voxel=tuple(int(v) for v in voxel),
                             session=ps.explain_session(), progress=progress, cancel=cancel,
                             **{**get_method(method).gui_defaults, **options})
    return _prepare(vol, method)


class ExplainWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        install_radiological_view(self.viewer)  # the plugin's view, set by its widgets (not by the reader)
        self._pending = None
        self._sessions: dict = {}
        self.query_voxel = None
        self.last_layer = None
        self._build()
        self._job = JobRunner("Explain", progress=self.progress, buttons=(self.explain_button,),
                              cancel_button=self.cancel_button, status=self.status, cancelled_text="cancelled")
        self._job.on_finished.append(self._after_job)
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
        row, self.explain_button, self.cancel_button, self.progress = run_controls("Explain at query", self.explain)
        lay.addLayout(row)
        self.masks_button = QPushButton("DINO head masks → labels layer")
        self.masks_button.clicked.connect(self.masks_to_labels)
        lay.addWidget(self.masks_button)
        lay.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self._refresh_models()
        self._on_method()

    def _refresh_models(self):
        from ..prompt import list_prompt_models

        names = model_names()

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
        upsert_layer(self.viewer, f"{scan.name}{SEP}query", centre[None, :], "points", size=4,
                     face_color="transparent", border_color="cyan", border_width=0.25, symbol="cross",
                     metadata={keys.QUERY: True}, units=scan.units[-3:], axis_labels=scan.axis_labels[-3:])
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
        if self.busy:
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
        scan_name = scan.name
        self._pending = None
        return self._job.start(_explain_job, self._sessions, key, model_key, volume, "auto", method,
                               self.query_voxel, options, on_done=lambda out: self._show(out, scan_name, method),
                               status=f"{self.method_combo.currentText()} at voxel {list(self.query_voxel)}…")

    @property
    def busy(self) -> bool:
        """True while an explanation runs."""
        return self._job.busy

    def cancel(self):
        self._pending = None
        self._job.cancel()

    def _after_job(self):
        if self._job.cancelled:
            self._pending = None
        elif self._pending:
            self.explain()

    # -- results --------------------------------------------------------------------------------
    def layer_name(self, scan_name: str, method: str) -> str:
        return f"{scan_name}{SEP}{get_method(method).layer_name}"

    def _show(self, out, scan_name: str, method: str):
        self.last_layer = self._put_map(out, scan_name, method)

    def _put_map(self, out, scan_name, method):
        vol, data, kw, prebuilt = out
        m = get_method(method)
        name = self.layer_name(scan_name, method)
        if m.output == "labels":
            lyr = upsert_layer(self.viewer, name, data, "labels", update=("colormap", "features"), **kw)
            self.status.setText(f"{name}: label h+1 = voxels head h attends to most")
            return lyr
        if prebuilt is not None:
            prebuilt.name = name
        lyr = upsert_layer(self.viewer, name, data, "image", prebuilt=prebuilt, **kw)
        lo, hi = kw["contrast_limits"]
        lyr.contrast_limits_range = (min(lo, 0.0), hi)
        lyr.contrast_limits = (lo, hi)
        pts = find_layer(self.viewer, f"{scan_name}{SEP}query")
        if pts is not None:  # keep the marker on top of the new map
            self.viewer.layers.move(self.viewer.layers.index(pts), len(self.viewer.layers))
        meta = vol.metadata
        desc = ", ".join(f"{k} {meta[k]}" for k in ("layer", "head") if meta.get(k) is not None)
        lyr.help = str(meta.get("units", ""))
        self.status.setText(f"{name}" + (f" ({desc})" if desc else "") + " — click another voxel to update")
        return lyr

    def masks_to_labels(self):
        """DINO head masks (top ``keep mass`` of each head's CLS attention) → one labels layer (head + 1)."""
        return self.explain(method="dino-masks")
