"""Click to segment: the promptable model inside *Review and correct*.

With **Interactive** on, **Ctrl+click** on the scan adds a positive point (this is the object) and
**Ctrl+Shift+click** a negative point (this is not), in any layer mode: a plain click still pans,
paints or sets the Explain query as before. Each click runs ``prompt.PromptSession.predict`` in a
thread worker (clicks made while one runs are queued) and shows the mask as the preview layer
``<scan> · prompt preview`` with the points as ``<scan> · prompt points``. **Accept** merges the
preview into the labels layer chosen above, as the selected label, in ONE undo step, writing only
voxels that are background or already that label (other labels are never overwritten); without a
labels layer it creates ``<scan> · labels``. **Reset** forgets the clicks (a new object).

With **Correct the selected label** ticked, the first click starts from the selected label of the chosen
labels layer (``PromptSession.set_previous``: e.g. the whole brain the Segment widget drew) and every
click edits it locally; the preview then shows the change only (1 = voxels the clicks add, 2 = voxels
they remove) and Accept writes both in one undo step, touching no other label and no voxel the clicks
did not change.

The widget only gathers clicks and shows results; the engine is ``napari_vit3d.prompt``. The
session is shared through ``gui.session`` so the Explain widget can explain the last prediction
(point attention / ERF of the promptable network as it ran).
"""

from __future__ import annotations

import numpy as np
from napari.layers import Points
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtWidgets import QCheckBox, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ..errors import Vit3dError, VolumeError
from ..io import keys
from ..io.geometry import napari_world_to_ras
from ._common import SEP, apply_labels, find_layer, report_error, scan_layers, set_mouse_callback, upsert_layer
from ._layers import inside, layer_kwargs, volume_from_layer
from .jobs import JobRunner, job_progress
from .session import prompt_sessions, run_of

PREVIEW_COLOR = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (1.0, 0.85, 0.1, 1.0)}
# correcting a label: the preview is the change (1 = added, 2 = removed)
CHANGE_COLOR = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (0.2, 1.0, 0.3, 1.0), 2: (1.0, 0.15, 0.6, 1.0)}
ADDED, REMOVED = 1, 2


def _prompt_job(scan_name: str, volume, ras, positive: bool, start, progress, cancel):
    """Worker thread: the scan's prompt session (made on first use), one more click, one prediction;
    the preview's display-order data, its layer kwargs and its volume (mL) are prepared here so the GUI
    thread only swaps it in. ``start`` (a 0/1 ``Volume`` on the labels layer's grid, or None) is the label
    being corrected: the first click of a session starts from it, and the preview is the change from it."""
    from ..prompt import PromptSession, load_prompt_model

    entry = prompt_sessions.get(scan_name)
    if entry is None or entry.volume is not volume:
        entry = PromptSession(load_prompt_model(), volume)
        prompt_sessions[scan_name] = entry
    if start is not None and not entry.clicks:
        entry.reset()
        entry.set_previous(start)        # checks that the label lies on the scan's grid
    start = None if start is None else start.data > 0
    entry.add_point(world=ras, positive=positive)
    try:
        result = entry.predict(progress=progress, cancel=cancel)
    except BaseException:
        entry.clicks.pop()
        if start is not None and not entry.clicks:
            entry.reset()
        raise
    if start is None:
        shown, colours = result.mask, PREVIEW_COLOR
        vol_ml = float(np.count_nonzero(result.mask.data)) * result.mask.voxel_volume_ml
    else:
        mask = result.mask.data > 0
        change = np.zeros(mask.shape, np.uint8)
        change[mask & ~start] = ADDED
        change[start & ~mask] = REMOVED
        shown, colours = result.mask.with_data(change), CHANGE_COLOR
        vol_ml = float(np.count_nonzero(mask)) * result.mask.voxel_volume_ml
    data, kw = layer_kwargs(shown, kind="labels", opacity=0.5 if start is None else 0.8,
                            colormap=DirectLabelColormap(color_dict=colours), metadata={keys.PROMPT: "preview"})
    return result, data, kw, vol_ml


class PromptPanel(QGroupBox):
    """The *Click to segment* group of the Review widget (see the module docstring)."""

    def __init__(self, review, parent=None):
        super().__init__("Click to segment (promptable model)", parent)
        self.review = review
        self.viewer = review.viewer
        self._queue: list = []
        self._volumes: dict = {}
        self.last_result = None
        lay = QVBoxLayout(self)
        self.active_check = QCheckBox("Interactive: Ctrl+click = object, Ctrl+Shift+click = not the object")
        self.active_check.toggled.connect(self.set_active)
        lay.addWidget(self.active_check)
        self.correct_check = QCheckBox("Correct the selected label (clicks edit it; Accept adds and removes)")
        self.correct_check.setToolTip("start from the selected label of the labels layer above (e.g. the brain "
                                      "Segment drew): a Ctrl+click adds the missed part it is on, a "
                                      "Ctrl+Shift+click removes the wrong part it is on")
        self.correct_check.toggled.connect(lambda *_: self.reset())
        lay.addWidget(self.correct_check)
        self._correcting = None        # (labels layer name, label, start Volume) being corrected
        row = QHBoxLayout()
        self.accept_button = QPushButton("Accept into labels")
        self.accept_button.setToolTip("merge the preview into the selected label (one undo step)")
        self.accept_button.clicked.connect(self.accept)
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("forget the clicks and the preview: start a new object")
        self.reset_button.clicked.connect(self.reset)
        row.addWidget(self.accept_button, 1)
        row.addWidget(self.reset_button)
        lay.addLayout(row)
        self.progress = job_progress()
        lay.addWidget(self.progress)
        self.status = QLabel("turn Interactive on, then Ctrl+click the structure")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self._job = JobRunner("Click to segment", progress=self.progress, status=self.status)
        self._job.on_finished.append(self._next)
        self.destroyed.connect(lambda *_: self._remove_callback(self.viewer))

    # -- clicks ---------------------------------------------------------------------------------
    def set_active(self, on: bool):
        set_mouse_callback(self.viewer, self._on_mouse, on, first=True)

    def _remove_callback(self, viewer):
        set_mouse_callback(viewer, self._on_mouse, False)

    def _on_mouse(self, viewer, event):
        mods = set(getattr(event, "modifiers", ()) or ())
        if getattr(event, "button", 1) != 1 or "Control" not in mods:
            return
        self.click(np.asarray(event.position, float), positive="Shift" not in mods)

    def scan_layer(self):
        """The scan the clicks are on: the one the chosen labels layer was segmented from, else the newest scan."""
        rec = run_of(self.review.layer())
        if rec is not None and find_layer(self.viewer, rec.scan_layer) is not None:
            return self.viewer.layers[rec.scan_layer]
        scans = scan_layers(self.viewer)
        return scans[-1] if scans else None

    def click(self, world, positive: bool = True):
        """What a Ctrl(+Shift)+click at napari world ``world`` (S, A, R mm) does; returns the worker or None."""
        scan = self.scan_layer()
        if scan is None:
            report_error(VolumeError("open a scan first"), "Click to segment")
            return None
        world = np.asarray(world, float)[-3:]
        if not inside(scan, world):
            self.status.setText("that point is outside the scan")
            return None
        ras = napari_world_to_ras(world)
        self._add_marker(scan.name, world, positive)
        self._queue.append((scan, ras, bool(positive)))
        return self._next()

    @property
    def busy(self) -> bool:
        """True while a prediction runs (clicks made meanwhile are queued)."""
        return self._job.busy

    def _next(self):
        if self._job.busy or not self._queue:
            return self._job.worker
        scan, ras, positive = self._queue.pop(0)
        try:
            key = (scan.name, id(scan.data))
            volume = self._volumes.get(key)
            if volume is None:
                volume = volume_from_layer(scan)
                self._volumes = {key: volume}
        except Vit3dError as exc:
            report_error(exc, "Click to segment")
            return None
        try:
            start = self._start_mask(scan)
        except Vit3dError as exc:
            self._queue.clear()
            report_error(exc, "Click to segment")
            return None
        return self._job.start(_prompt_job, scan.name, volume, ras, positive, start,
                               on_done=lambda out, name=scan.name: self._show(name, *out),
                               status=f"{'object' if positive else 'not the object'} click at RAS "
                                      f"{np.round(ras, 1).tolist()} mm…")

    def _start_mask(self, scan):
        """With *Correct the selected label*: the label being corrected, a 0/1 ``Volume`` on the labels layer's
        grid (the first click of a session reads it from the layer; later clicks go on from the session's
        mask; the session's ``set_previous`` refuses a layer not on the scan's grid)."""
        if not self.correct_check.isChecked():
            self._correcting = None
            return None
        sess = prompt_sessions.get(scan.name)
        if self._correcting is not None and sess is not None and sess.clicks:
            return self._correcting[2]
        lyr = self.review.layer()
        if lyr is None:
            raise VolumeError("Correct the selected label needs a labels layer: choose one above (or segment first)")
        label = int(lyr.selected_label)
        labels = volume_from_layer(lyr)
        start = labels.with_data((np.asarray(labels.data if labels.data.ndim == 3 else labels.data[..., 0]) == label)
                                 .astype(np.uint8))
        if not start.data.any():
            raise VolumeError(f"{lyr.name} has no voxel of label {label} to correct: select the label to correct "
                              "(or untick Correct the selected label to segment a new object)")
        self._correcting = (lyr.name, label, start)
        return start

    # -- layers ---------------------------------------------------------------------------------
    def preview_name(self, scan_name: str) -> str:
        return f"{scan_name}{SEP}prompt preview"

    def points_name(self, scan_name: str) -> str:
        return f"{scan_name}{SEP}prompt points"

    def _add_marker(self, scan_name: str, world, positive: bool):
        name = self.points_name(scan_name)
        pts = find_layer(self.viewer, name)
        colour = "lime" if positive else "red"
        active = self.viewer.layers.selection.active
        if isinstance(pts, Points):
            pts.add(np.asarray(world, float)[None, :])
            fc = list(pts.face_color)
            fc[-1] = (0.2, 1.0, 0.2, 1.0) if positive else (1.0, 0.2, 0.2, 1.0)
            pts.face_color = fc
        else:
            self.viewer.add_points(np.asarray(world, float)[None, :], name=name, size=4, face_color=colour,
                                   border_color="white", border_width=0.1, metadata={keys.PROMPT: "points"})
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

    def _show(self, scan_name: str, result, data, kw, vol_ml: float):
        self.last_result = result
        active = self.viewer.layers.selection.active
        upsert_layer(self.viewer, self.preview_name(scan_name), data, "labels", **kw)
        pts = find_layer(self.viewer, self.points_name(scan_name))
        if pts is not None:
            self.viewer.layers.move(self.viewer.layers.index(pts), len(self.viewer.layers))
        if active is not None and active in self.viewer.layers and self.viewer.layers.selection.active is not active:
            self.viewer.layers.selection.active = active
        n = len(prompt_sessions[scan_name].clicks) if scan_name in prompt_sessions else 0
        if self._correcting is not None:
            added, removed = int(np.count_nonzero(data == ADDED)), int(np.count_nonzero(data == REMOVED))
            self.status.setText(f"label {self._correcting[1]} would be {vol_ml:.2f} mL after {n} click(s): "
                                f"+{added} / −{removed} voxel(s) (green added, pink removed; crop "
                                f"{result.crop.spacing:g} mm); Accept writes the change")
        else:
            self.status.setText(f"{vol_ml:.2f} mL after {n} click(s) (crop {result.crop.spacing:g} mm); "
                                "Accept merges it")

    def accept(self):
        """Merge the preview into the labels layer as the selected label (one undo step); returns voxels changed."""
        scan = self.scan_layer()
        preview = find_layer(self.viewer, self.preview_name(scan.name)) if scan is not None else None
        if preview is None or not np.any(preview.data):
            report_error(VolumeError("nothing to accept: the clicks changed nothing" if self._correcting is not None
                                     and preview is not None else "nothing to accept: Ctrl+click the structure first"),
                         "Accept")
            return 0
        if self._correcting is not None:
            return self._accept_change(preview)
        lyr = self.review.layer()
        if lyr is None:
            vol = volume_from_layer(scan)
            data, kw = layer_kwargs(vol.with_data(np.zeros(vol.spatial_shape, np.uint8)), kind="labels")
            lyr = self.viewer.add_labels(data, name=f"{scan.name}{SEP}labels", **kw)
            self.review.labels_combo.setCurrentText(lyr.name)
        if lyr.data.shape != preview.data.shape:
            report_error(VolumeError(f"{lyr.name} is not on the scan's grid "
                                     f"({lyr.data.shape} vs {preview.data.shape})"), "Accept")
            return 0
        label = int(lyr.selected_label) or 1
        old = np.asarray(lyr.data)
        new = old.copy()
        sel = (np.asarray(preview.data) > 0) & ((old == 0) | (old == label))
        new[sel] = label
        n = apply_labels(lyr, new)
        self.status.setText(f"accepted: {n} voxel(s) set to label {label} in {lyr.name} (Undo reverts it)")
        self.review.refresh(force=True)
        self.reset(keep_status=True)
        return n

    def _accept_change(self, preview) -> int:
        """Correct mode: write the clicks' change into the label they corrected (one undo step): added voxels
        that are background (or already the label) become the label, removed voxels that are still the label
        become background; nothing else is touched."""
        name, label, _ = self._correcting
        lyr = find_layer(self.viewer, name)
        if lyr is None or lyr.data.shape != preview.data.shape:
            report_error(VolumeError(f"the labels layer {name!r} being corrected is gone or changed its grid"),
                         "Accept")
            return 0
        change = np.asarray(preview.data)
        old = np.asarray(lyr.data)
        new = old.copy()
        new[(change == ADDED) & (old == 0)] = label
        new[(change == REMOVED) & (old == label)] = 0
        n = apply_labels(lyr, new)
        self.status.setText(f"accepted: {n} voxel(s) of label {label} changed in {lyr.name} (Undo reverts it)")
        self.review.refresh(force=True)
        self.reset(keep_status=True)
        return n

    def reset(self, keep_status: bool = False):
        scan = self.scan_layer()
        if scan is not None:
            sess = prompt_sessions.get(scan.name)
            if sess is not None:
                sess.reset()
            for name in (self.preview_name(scan.name), self.points_name(scan.name)):
                lyr = find_layer(self.viewer, name)
                if lyr is not None:
                    self.viewer.layers.remove(lyr)
        self._queue.clear()
        self.last_result = None
        self._correcting = None
        if not keep_status:
            self.status.setText("reset: Ctrl+click the next structure")
