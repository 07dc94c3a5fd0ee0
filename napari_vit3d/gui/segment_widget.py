"""Segment dock widget: pick a scan and a model, press Segment, get an editable labels layer.

Thin: the scan comes from the layer (:mod:`._layers`), the model from ``models.registry``, the work from
``usecases.segment_scan`` (labels, probabilities, uncertainty and its regions) in a napari thread worker,
which also prepares what the layers need (display-order data, colormaps, feature tables, the napari
layer objects themselves, the scan's content hash). The GUI thread only inserts the prepared layers,
one per event-loop turn (labels first, then the probability and uncertainty maps), so the viewer keeps
repainting and reacting while the result appears (``docs/performance.md``, GUI responsiveness).
"""

from __future__ import annotations

import functools
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Labels
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import (
    ModelError,
    ModelWarning,
    ResourceLimitWarning,
    UntrustedCodeError,
    Vit3dError,
    VolumeError,
    VolumeWarning,
)
from ..io import Volume, keys, same_grid
from . import autosave, recovery
from ._common import (
    SEP,
    LayerCombo,
    ModelCombo,
    ask_yes_no_cancel,
    build_layer,
    find_layer,
    info,
    report_error,
    scan_layers,
    unique_name,
    unwrap,
    upsert_layer,
    warn,
)
from ._layers import layer_kwargs, volume_from_layer
from .jobs import JobRunner, StepQueue, run_controls
from .session import RunRecord, load_model_cached, now_iso
from .styles import labels_colormap, labels_features
from .viewer_setup import install_radiological_view
from .warmup import warm_up

AUTO = "auto"
#: seconds a first run waits for the engine preload thread before importing the engine itself
PRELOAD_WAIT_S = 120.0
#: the warnings a run shows as notifications (pre-flight, engine, model registry); others go to stderr
SHOWN_WARNINGS = (VolumeWarning, ResourceLimitWarning, ModelWarning)
#: the widget's options, as pre-flight messages name them
OPTION_NAMES = {"probabilities": "Advanced › probability layer per label",
                "uncertainty": "Advanced › uncertainty layer (entropy)", "overlap": "Advanced › Window overlap",
                "batch": "Advanced › Windows per batch", "roi": "Advanced › ROI",
                "multiscale": "Advanced › multi-scale"}


@dataclass
class NeedsTrust:
    """A worker's answer when a MONAI bundle is not trusted: nothing of it ran."""

    folder: Path
    error: UntrustedCodeError


def _wait_for_preload(thread) -> None:
    """Worker thread: let the engine preload finish before importing the engine here (two threads importing
    ``monai.bundle`` / ``monai.apps`` at once can hit a circular-import ``ImportError``)."""
    if thread is not None and thread is not threading.current_thread():
        thread.join(PRELOAD_WAIT_S)


def warning_lines(caught) -> list[str]:
    """Distinct messages of the recorded warnings (``warnings.catch_warnings(record=True)``) of
    :data:`SHOWN_WARNINGS`, in order; any other warning is printed to stderr as Python would."""
    out = []
    for w in caught or ():
        if not issubclass(w.category, SHOWN_WARNINGS):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
            continue
        msg = str(w.message)
        if msg not in out:
            out.append(msg)
    return out


@dataclass
class PreparedLayer:
    """A layer made ready in the worker: display-order data, napari kwargs and the layer object."""

    data: Any
    kwargs: dict
    layer_type: str
    layer: Any = None


def prepare_layer(volume: Volume, *, kind: str = "image", own_copy: bool = False, **style) -> PreparedLayer:
    """Worker thread: ``volume`` as display-order data + kwargs (``_layers.layer_kwargs``) and the built
    layer. ``own_copy``: the layer gets its own C-ordered array (a labels layer the user paints must not
    write through a view into the model's output)."""
    data, kwargs = layer_kwargs(volume, kind=kind, **style)
    if own_copy:
        data = np.array(data, copy=True, order="C")
    return PreparedLayer(data, kwargs, kind, build_layer(data, kind, **kwargs))


@dataclass
class SegmentOutput:
    """What the worker hands the GUI thread: the run record and the layers to show."""

    record: RunRecord
    layers: dict = field(default_factory=dict)  # "labels" / "probabilities" / "uncertainty" -> PreparedLayer
    n_labels: int = 0
    warnings: list = field(default_factory=list)  # messages of the warnings the run emitted


def _segment_job(volume: Volume, scan_name: str, model_key: str, settings: dict, started: str, progress, cancel,
                 preload_thread=None):
    """Runs in the worker thread: wait for the engine preload, load the model (cached; an untrusted bundle
    gives :class:`NeedsTrust`), the pre-flight checks (``inference.preflight``: refuse or warn before
    anything large is allocated), ``usecases.segment_scan``, then everything the layers need, so the GUI
    thread only inserts them. Warnings are recorded and handed back (``SegmentOutput.warnings``)."""
    _wait_for_preload(preload_thread)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _segment_work(volume, scan_name, model_key, settings, started, progress, cancel)
    if isinstance(out, SegmentOutput):
        out.warnings = warning_lines(caught)
    return out


def _segment_work(volume: Volume, scan_name: str, model_key: str, settings: dict, started: str, progress, cancel):
    from ..inference.engine import MULTISCALE
    from ..inference.preflight import check_scan_content, check_segmentation
    from ..io.labels import LabelTable
    from ..models.devices import resolve_device
    from ..usecases import segment_scan

    dev = str(resolve_device(settings["device"]))
    try:
        loaded = load_model_cached(model_key, dev)
    except UntrustedCodeError as exc:
        from ..models import registry

        return NeedsTrust(Path(registry.get_spec(model_key).root), exc)
    want_unc = bool(settings.get("uncertainty"))
    check_scan_content(volume, loaded.spec)
    check_segmentation(volume, loaded.spec, network=None if getattr(loaded, "bundle", None) is not None
                       else loaded.network, roi_size=settings.get("roi_size"), overlap=settings["overlap"],
                       sw_batch_size=settings["sw_batch_size"], probabilities=bool(settings.get("probabilities")),
                       uncertainty=want_unc, options=OPTION_NAMES)
    seg = segment_scan(volume, loaded, device=dev, overlap=settings["overlap"], sw_batch_size=settings["sw_batch_size"],
                       roi_size=settings.get("roi_size"), probabilities=bool(settings.get("probabilities")),
                       uncertainty=want_unc, regions=want_unc,
                       uncertainty_threshold=float(settings.get("uncertainty_threshold", 0.5)),
                       uncertainty_min_voxels=int(settings.get("uncertainty_min_voxels", 20)), max_regions=50,
                       progress=progress, cancel=cancel, scales=MULTISCALE if settings.get("multiscale") else None,
                       postprocess=bool(settings.get("postprocess", True)))
    spec = loaded.spec
    table = LabelTable.from_spec(spec).with_missing(seg.present.tolist())
    record = RunRecord(
        scan_layer=scan_name, scan_volume=volume, scan_hash=volume.content_hash(), model_name=spec.name,
        model_key=model_key, device=str(getattr(loaded, "device", dev)), settings=settings, started=started,
        finished=now_iso(), model_labels=seg.labels, label_table=table,
        weights_sha256=getattr(loaded, "weights_sha256", None), uncertainty=seg.uncertainty, regions=list(seg.regions))
    out = SegmentOutput(record, n_labels=int(np.count_nonzero(seg.present)))
    out.layers["labels"] = prepare_layer(seg.labels, kind="labels", own_copy=True, colormap=labels_colormap(table),
                                         features=labels_features(table), opacity=0.5,
                                         metadata={keys.RUN: record})
    if seg.probabilities is not None:
        out.layers["probabilities"] = prepare_layer(
            seg.probabilities, contrast_limits=(0.0, 1.0), colormap="magma", blending="additive",
            metadata={keys.MAP: {"method": "probability", "model": spec.name}})
    if seg.uncertainty is not None:
        out.layers["uncertainty"] = prepare_layer(
            seg.uncertainty, contrast_limits=(0.0, 1.0), colormap="viridis", visible=False, blending="additive",
            metadata={keys.MAP: {"method": "uncertainty", "model": spec.name, "units": "normalised entropy (0..1)"}})
    return out


_PRELOAD: list[threading.Thread] = []


def _preload_engine() -> None:
    try:
        from ..inference import preload

        preload()
    except (ImportError, OSError, RuntimeError):  # pragma: no cover - a broken install shows its error at the first run
        pass


def start_engine_preload() -> threading.Thread:
    """Import the engine (torch, MONAI, the model code) once per process in a background thread.

    A first import holds Python's GIL for stretches of up to about 0.25 s; done here, when the widget
    is created, those stretches no longer fall inside the first segmentation (see
    ``docs/performance.md``, GUI responsiveness). A run started before it finishes simply waits for the
    modules (Python's import locks)."""
    if not _PRELOAD:
        t = threading.Thread(target=_preload_engine, name="napari-vit3d engine preload", daemon=True)
        _PRELOAD.append(t)
        t.start()
    return _PRELOAD[0]


class SegmentWidget(QWidget):
    """Scan + model + device (+ advanced settings) → ``<scan> · labels``."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        install_radiological_view(self.viewer)  # the plugin's view, set by its widgets (not by the reader)
        self._preload = start_engine_preload()
        warm_up(self.viewer, self._preload)  # GC off during the preload and frozen after it; napari's first layers
        self._checked_recovery: set[str] = set()
        self._after_job = None  # GUI-thread work to do once the current job is over (a retry after trusting)
        self._build()
        autosave.watch_viewer(self.viewer)  # save on window close, quit, layer removal
        self._job = JobRunner("Segment", progress=self.progress, buttons=(self.segment_button, self.add_model_button),
                              cancel_button=self.cancel_button, status=self.status,
                              cancelled_text="cancelled; nothing was added")
        self._job.on_finished.append(self._on_finished)
        self._steps = StepQueue("Segment")  # showing the result, one layer per event-loop turn
        self._result_layer = None
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.destroyed.connect(lambda *_: self._disconnect(self.viewer))
        self._refresh_models()
        for layer in list(self.viewer.layers):
            self._offer_recovery(layer)

    # -- UI -------------------------------------------------------------------------------------
    def _build(self):
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.scan_combo = LayerCombo(self.viewer, lambda lyr: lyr in scan_layers(self.viewer))
        form.addRow("Scan", self.scan_combo)
        self.extra_channels = QWidget()
        self.extra_form = QFormLayout(self.extra_channels)
        self.extra_form.setContentsMargins(0, 0, 0, 0)
        self.channel_combos: list[QComboBox] = []
        form.addRow(self.extra_channels)

        row = QHBoxLayout()
        self.model_combo = ModelCombo()
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        row.addWidget(self.model_combo, 1)
        self.add_model_button = QToolButton()
        self.add_model_button.setText("Add model…")
        self.add_model_button.setPopupMode(QToolButton.InstantPopup)
        menu = QMenu(self.add_model_button)
        menu.addAction("Checkpoint or spec file…", lambda: self.add_model(self.ask_model_path(folder=False)))
        menu.addAction("MONAI bundle folder…", lambda: self.add_model(self.ask_model_path(folder=True)))
        self.add_model_button.setMenu(menu)
        row.addWidget(self.add_model_button)
        form.addRow("Model", row)
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        self.model_info.setStyleSheet("color: gray")
        form.addRow(self.model_info)

        from ..models.devices import available_devices  # imports torch: only when the widget is made

        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        form.addRow("Device", self.device_combo)
        lay.addLayout(form)

        self.advanced = QGroupBox("Advanced")
        self.advanced.setCheckable(True)
        self.advanced.setChecked(False)
        adv = QFormLayout(self.advanced)
        self.overlap = QDoubleSpinBox()
        self.overlap.setRange(0.0, 0.9)
        self.overlap.setSingleStep(0.05)
        self.overlap.setValue(0.25)
        self.overlap.setToolTip("fraction of each window shared with its neighbours (more = smoother, slower)")
        adv.addRow("Window overlap", self.overlap)
        roi_row = QHBoxLayout()
        self.roi = []
        for _ in range(3):
            s = QSpinBox()
            s.setRange(0, 512)
            s.setSingleStep(16)
            s.setSpecialValueText("model")
            roi_row.addWidget(s)
            self.roi.append(s)
        adv.addRow("ROI (R, A, S)", roi_row)
        self.batch = QSpinBox()
        self.batch.setRange(1, 64)
        self.batch.setValue(1)
        adv.addRow("Windows per batch", self.batch)
        self.prob_check = QCheckBox("probability layer per label")
        adv.addRow(self.prob_check)
        self.unc_check = QCheckBox("uncertainty layer (entropy)")
        self.unc_check.setChecked(True)
        adv.addRow(self.unc_check)
        self.multiscale_check = QCheckBox("multi-scale (3 passes: slower, a little more accurate)")
        self.multiscale_check.setToolTip("average the model over the scan seen 10 % smaller, as it is and 10 % larger "
                                         "(docs/inference.md, Multi-scale); the bar then shows percent of the run")
        adv.addRow(self.multiscale_check)
        self.postprocess_check = QCheckBox("tissue classes from the scan's own intensities")
        self.postprocess_check.setChecked(True)
        self._postprocess_choice = True      # the user's choice, kept while a model without the step is selected
        self.postprocess_check.toggled.connect(self._remember_postprocess)
        adv.addRow(self.postprocess_check)
        self._set_advanced_visible(False)
        self.advanced.toggled.connect(self._set_advanced_visible)
        lay.addWidget(self.advanced)

        buttons, self.segment_button, self.cancel_button, self.progress = run_controls(
            "Segment", self.run, fmt="%v / %m windows")
        self.segment_button.setDefault(True)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)

    def _set_advanced_visible(self, on: bool):
        for child in self.advanced.findChildren(QWidget):
            child.setVisible(on)

    def _disconnect(self, viewer):
        try:
            viewer.layers.events.inserted.disconnect(self._on_layer_inserted)
            viewer.layers.events.removed.disconnect(self._on_layer_removed)
        except (TypeError, RuntimeError, ValueError):
            pass

    # -- models ---------------------------------------------------------------------------------
    def _refresh_models(self, select: str | None = None):
        """Re-list the models; a registry problem (a corrupt ``models.json`` set aside: a ``ModelWarning``)
        is shown as a notification and the bundled models are still listed."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.model_combo.blockSignals(True)
            self.model_combo.refresh(select)
            self.model_combo.blockSignals(False)
        for msg in warning_lines(caught):
            warn(msg)
        self._on_model_changed()

    def model_spec(self):
        from ..models import registry

        name = self.model_combo.currentText()
        if not name:
            return None
        return registry.get_spec(name)

    def _on_model_changed(self, *_):
        try:
            spec = self.model_spec()
        except (ModelError, OSError, ValueError) as exc:
            self.model_info.setText(f"cannot read this model: {exc}")
            return
        if spec is None:
            self.model_info.setText("no model: use Add model…")
            return
        labels = ", ".join(e.name for e in spec.labels if e.index != 0)
        self.model_info.setText(f"{spec.architecture}, {spec.in_channels} channel(s) "
                                f"({', '.join(spec.channel_names)}); labels: {labels}")
        for s, v in zip(self.roi, spec.roi_size):
            s.setValue(int(v))
        self._show_postprocess(spec)
        self._build_channel_pickers(spec)

    def _remember_postprocess(self, checked: bool):
        if self.postprocess_check.isEnabled():
            self._postprocess_choice = bool(checked)

    def _show_postprocess(self, spec):
        """The tissue-step box is live only for a model whose spec asks for a post-processing step."""
        steps = dict(getattr(spec, "postprocess", None) or {})
        self.postprocess_check.setEnabled(bool(steps))
        self.postprocess_check.blockSignals(True)
        self.postprocess_check.setChecked(bool(steps) and self._postprocess_choice)   # greyed out = unticked
        self.postprocess_check.blockSignals(False)
        self.postprocess_check.setToolTip(
            "the model's tissue classes re-decided inside its brain mask by the scan's own intensities, the "
            "network's probabilities as prior (docs/inference.md, step 8); untick for the network's plain labels"
            if steps else f"model {spec.name!r} has no post-processing step")

    def _build_channel_pickers(self, spec):
        while self.extra_form.rowCount():
            self.extra_form.removeRow(0)
        self.channel_combos = []
        n = int(spec.in_channels)
        self.extra_channels.setVisible(n > 1)
        if n <= 1:
            return
        for name in spec.channel_names[1:]:
            combo = LayerCombo(self.viewer, lambda lyr: lyr in scan_layers(self.viewer))
            combo.insertItem(0, "(same scan, next channel)")
            combo.setCurrentIndex(0)
            self.extra_form.addRow(f"Channel {name}", combo)
            self.channel_combos.append(combo)

    def ask_model_path(self, folder: bool) -> str | None:
        """A file/folder dialog; tests patch this."""
        if folder:
            path = QFileDialog.getExistingDirectory(self, "MONAI bundle folder")
        else:
            path, _ = QFileDialog.getOpenFileName(
                self, "Model checkpoint or spec",
                filter="Models (*.safetensors *.pt *.pth *.ckpt *.json);;All files (*)")
        return path or None

    def ask_trust(self, folder, lines: list[str]) -> bool:
        """Show what a MONAI bundle's config would run and ask whether to trust it; tests patch this."""
        shown = "\n".join(lines[:30]) + (f"\n… and {len(lines) - 30} more" if len(lines) > 30 else "")
        return ask_yes_no_cancel(
            self, "Trust this MONAI bundle?",
            f"{folder}\n\nA bundle's config is code: loading it runs the following "
            f"({len(lines)} item(s)):\n\n{shown or '(no expressions)'}\n\n"
            "Only trust a bundle from a source you trust. Trust is recorded for this exact content "
            "(docs/security.md).", "Trust and load", None) == "yes"

    def _confirm_trust(self, folder) -> bool:
        """GUI thread: ask; on yes record the trust (``models.trust.trust_bundle``). False: nothing will run."""
        from ..models.trust import describe_bundle_code, trust_bundle

        try:
            lines = describe_bundle_code(folder)
        except (ModelError, OSError) as exc:
            report_error(exc, "MONAI bundle")
            return False
        if not self.ask_trust(folder, lines):
            info(f"{folder}: not trusted; nothing of the bundle was run")
            return False
        try:
            trust_bundle(folder)
        except (Vit3dError, OSError) as exc:
            report_error(exc, "trusting the bundle")
            return False
        return True

    def add_model(self, path: str | None) -> bool:
        """Register a checkpoint / bundle through the registry, test-loading it (``registry.add_model``) in
        the job runner's worker while the viewer keeps running; returns whether it was added. An untrusted
        bundle shows what its config runs (:meth:`ask_trust`); on yes the trust is recorded and it is added,
        on no nothing of it runs. Any error is shown as it is."""
        if not path:
            return False
        if self._job.busy:
            info("wait for the running job to finish before adding a model")
            return False
        spec = self._add_model_in_worker(path, trust=False)
        if isinstance(spec, NeedsTrust):
            if not self._confirm_trust(spec.folder):
                return False
            spec = self._add_model_in_worker(path, trust=True)
        if spec is None or isinstance(spec, NeedsTrust):
            return False
        name = getattr(spec, "name", spec)
        self._refresh_models(select=str(name))
        info(f"model {name!r} added")
        return True

    def _add_model_in_worker(self, path: str, trust: bool):
        """Run ``registry.add_model`` in the job runner and wait (a local event loop: the viewer repaints);
        returns the spec, a :class:`NeedsTrust`, or None after an error (already reported)."""
        from qtpy.QtCore import QEventLoop

        result: dict = {}
        loop = QEventLoop()

        def job(path, trust, preload_thread):
            _wait_for_preload(preload_thread)
            from ..models import registry

            try:
                return registry.add_model(path, trust_bundle=trust)
            except UntrustedCodeError as exc:
                return NeedsTrust(Path(path), exc)

        def done(out):
            result["out"] = out

        def finished():
            self._job.on_finished.remove(finished)
            loop.quit()

        self._job.on_finished.append(finished)
        worker = self._job.start(job, path, trust, self._preload, engine=False, on_done=done, what="Add model",
                                 status=f"checking that {Path(path).name} loads…")
        if worker is None:
            self._job.on_finished.remove(finished)
            return None
        loop.exec_()
        self.status.setText("")
        return result.get("out")

    # -- running ------------------------------------------------------------------------------
    def ask_replace(self, name: str) -> str:
        """Ask before replacing an existing labels layer: "yes" (replace), "no" (keep both) or "cancel"."""
        return ask_yes_no_cancel(self, "Replace labels?",
                                 f"'{name}' already exists and may contain your corrections.\n"
                                 "Replace it with the new result, or keep it and add a new layer?",
                                 "Replace", "Keep both")

    def _input_volume(self, layer, spec) -> Volume:
        vol = volume_from_layer(layer)
        if spec is None or spec.in_channels <= 1 or not self.channel_combos:
            return vol
        if vol.n_channels >= spec.in_channels:
            return vol
        chans = [vol.data if vol.data.ndim == 3 else vol.data[..., 0]]
        for combo in self.channel_combos:
            other = combo.layer() if combo.currentIndex() > 0 else None
            if other is None:
                raise VolumeError(f"model {spec.name!r} needs {spec.in_channels} channels "
                                  f"({', '.join(spec.channel_names)}): choose a scan for each")
            ov = volume_from_layer(other)
            if not same_grid(vol.affine, vol.spatial_shape, ov.affine, ov.spatial_shape):
                raise VolumeError(f"'{other.name}' is not on the grid of '{layer.name}'; "
                                  "channels must share voxels")
            chans.append(ov.data if ov.data.ndim == 3 else ov.data[..., 0])
        return vol.with_data(np.stack([np.asarray(c, np.float32) for c in chans], axis=-1))

    def settings(self) -> dict:
        roi = [s.value() for s in self.roi]
        return {"overlap": float(self.overlap.value()), "sw_batch_size": int(self.batch.value()),
                "roi_size": roi if all(roi) else None, "probabilities": self.prob_check.isChecked(),
                "uncertainty": self.unc_check.isChecked(), "device": self.device_combo.currentText(),
                "multiscale": self.multiscale_check.isChecked(),
                "postprocess": self.postprocess_check.isChecked()}   # unticked whenever greyed out

    @property
    def running(self) -> bool:
        """True while a segmentation runs or its result is being shown."""
        return self._job.busy or self._steps.busy

    def run(self):
        """Start a segmentation in a worker (returns immediately). Returns the worker or None."""
        if self.running:
            info("a segmentation is already running")
            return None
        layer = self.scan_combo.layer()
        if layer is None:
            report_error(VolumeError("open a scan first (File > Open, or File > Open Sample > napari-vit3d)"))
            return None
        model_name = self.model_combo.currentText()
        if not model_name:
            report_error(VolumeError("no model selected: use Add model…"))
            return None
        target = f"{layer.name}{SEP}labels"
        replace = None
        existing = find_layer(self.viewer, target)
        if isinstance(existing, Labels):
            answer = self.ask_replace(target)
            if answer == "cancel":
                return None
            replace = target if answer == "yes" else None
        try:
            volume = self._input_volume(layer, self.model_spec())
        except (Vit3dError, OSError, ValueError) as exc:
            report_error(exc, "Segment")
            return None
        self.progress.setFormat("%p %" if self.multiscale_check.isChecked() else "%v / %m windows")
        return self._job.start(_segment_job, volume, layer.name, model_name, self.settings(), now_iso(),
                               preload_thread=self._preload, on_done=lambda out: self._on_done(out, replace),
                               status=f"segmenting {layer.name} with {model_name}…")

    def cancel(self):
        self._job.cancel()

    def _rerun_replacing(self, name: str):
        saved, self.ask_replace = self.ask_replace, lambda _name: "yes"  # the user already said "Replace"
        try:
            self.run()
        finally:
            self.ask_replace = saved

    def _on_finished(self):
        if self._job.cancelled:
            info("Segment cancelled; nothing was added")
        after, self._after_job = self._after_job, None
        if after is not None:
            after()

    # -- results ------------------------------------------------------------------------------
    def _on_done(self, out: SegmentOutput, replace):
        """GUI thread: insert the prepared layers one per event-loop turn (see the module docstring). An
        untrusted bundle: ask (:meth:`ask_trust`), and on yes run again once this job is over."""
        if isinstance(out, NeedsTrust):
            self.status.setText("the bundle is not trusted: nothing of it ran")
            if self._confirm_trust(out.folder):
                self._after_job = self.run if replace is None else functools.partial(self._rerun_replacing, replace)
            return
        for msg in out.warnings:
            warn(f"Segment: {msg}")
        # one step per event-loop turn: insert the labels, make them the active layer (napari builds its
        # controls then), the maps, the rest
        steps = [functools.partial(self._show_labels, out, replace), self._select_result]
        for kind in ("probabilities", "uncertainty"):
            if kind in out.layers:
                steps.append(functools.partial(self._show_map, f"{out.record.scan_layer}{SEP}{kind}",
                                               out.layers[kind]))
        steps.append(functools.partial(self._show_done, out))
        self._steps.run(steps)

    def _show_labels(self, out: SegmentOutput, replace):
        lab = out.layers["labels"]
        name = replace or unique_name(self.viewer, f"{out.record.scan_layer}{SEP}labels")
        self._result_layer = upsert_layer(self.viewer, name, lab.data, "labels", update=("colormap", "features"),
                                          prebuilt=lab.layer, **lab.kwargs)
        return self._result_layer

    def _select_result(self):
        if self._result_layer in self.viewer.layers:
            self.viewer.layers.selection.active = self._result_layer

    def _show_map(self, name: str, prepared: PreparedLayer):
        return upsert_layer(self.viewer, name, prepared.data, prepared.layer_type, prebuilt=prepared.layer,
                            **prepared.kwargs)

    def _show_done(self, out: SegmentOutput):
        rec, labels_layer = out.record, self._result_layer
        autosave.attach(labels_layer, rec.scan_hash, {"scan": rec.scan_layer, "model": rec.model_name,
                                                      "label_table": rec.label_table.to_dict()})
        labels_layer.mode = "pan_zoom"
        self.status.setText(f"done: {out.n_labels} label(s) in '{labels_layer.name}'"
                            + (f"; {len(rec.regions)} uncertain region(s)" if rec.uncertainty is not None else ""))
        info(f"'{labels_layer.name}' added: paint to correct it, then use Review and correct, and Export")

    # -- recovery -----------------------------------------------------------------------------
    def ask_restore(self, scan_name: str, saved: dict) -> bool:
        """Offer a recovery file back; tests patch this."""
        when = saved.get("saved", "earlier")
        return ask_yes_no_cancel(self, "Recover labels?",
                                 f"Corrected labels for '{scan_name}' were autosaved ({when}) and not exported.\n"
                                 "Restore them as a labels layer?", "Restore", None) == "yes"

    def _on_layer_removed(self, event):
        autosave.detach(event.value, save=True)  # unsaved changes go to its recovery file first

    def _on_layer_inserted(self, event):
        self._offer_recovery(event.value)

    def _offer_recovery(self, layer):
        """A scan was opened: offer back every recovery file of it (one per labels layer not exported) whose
        layer is not open now, each with :meth:`ask_restore`."""
        if layer not in scan_layers(self.viewer) or keys.PLUGIN not in layer.metadata:
            return
        try:
            vol = volume_from_layer(layer)
        except Vit3dError:  # not a scan on a known grid: nothing to recover
            return
        h = vol.content_hash()
        if h in self._checked_recovery:  # offered once per session
            return
        found = recovery.load_all(h)
        if not found:
            return
        self._checked_recovery.add(h)
        open_ids = {lyr.metadata.get(keys.LAYER_ID) for lyr in self.viewer.layers if isinstance(lyr, Labels)}
        for path, labels, saved_info in reversed(found):  # oldest first
            lid = saved_info.get("layer_id")
            if lid is not None and lid in open_ids:
                continue
            if tuple(labels.shape) != tuple(np.shape(layer.data)):
                continue
            if not self.ask_restore(layer.name, saved_info):
                continue
            self._restore(layer, vol, h, labels, saved_info, path)

    def _restore(self, layer, vol, scan_hash, labels, saved_info, path):
        from ..io.labels import LabelTable

        table = LabelTable.from_dict(saved_info["label_table"]) if "label_table" in saved_info else \
            LabelTable.from_array(labels)
        lid = saved_info.get("layer_id") or recovery.new_layer_id()  # the same file keeps its autosaves
        data, kwargs = layer_kwargs(vol.with_data(np.zeros(vol.spatial_shape, labels.dtype)), kind="labels",
                                    metadata={keys.RECOVERED: saved_info, keys.LAYER_ID: lid})
        restored = self.viewer.add_labels(
            labels, name=unique_name(self.viewer, f"{layer.name}{SEP}labels (recovered)"),
            colormap=labels_colormap(table), features=labels_features(table), opacity=0.5, **kwargs)
        saver = autosave.attach(restored, scan_hash, {**saved_info, "label_table": table.to_dict()}, layer_id=lid)
        if "layer_id" not in saved_info:  # a file of the old one-per-scan layout: now kept per layer
            saver.save_now(force=True)
            recovery.discard_recovery(scan_hash)
        info(f"restored autosaved labels for '{layer.name}'")
