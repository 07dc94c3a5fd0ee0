"""The *Corrections* group of Review and correct: interpolate between drawn slices, remove small pieces,
fill holes, undo / redo.

The corrections are the engine's (``review.interpolate_slices``, ``remove_small_components``,
``fill_holes``); each runs in a thread worker on a copy of the labels, and its result is written back on
the GUI thread with ``_common.apply_labels`` (one ``Labels.data_setitem`` inside ``block_history``), so
each one is a single step of napari's undo (Ctrl+Z or the Undo button). The controls are magicgui
widgets (napari's own widget toolkit): a column of buttons and one number, with no layout code.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import Container, FloatSpinBox, PushButton
from qtpy.QtWidgets import QGroupBox, QVBoxLayout

from ..errors import VolumeError
from ..io import keys
from ._common import apply_labels, info, report_error
from ._layers import display_spacing
from .jobs import JobRunner


def _voxel_spacing(lyr) -> tuple[float, float, float]:
    """Voxel size (mm) along the layer's display axes: from the scan geometry, else the layer's scale."""
    if keys.PLUGIN in lyr.metadata:
        return display_spacing(lyr)
    return tuple(float(v) for v in np.abs(lyr.scale[-3:]))


class CorrectionsPanel(QGroupBox):
    """Corrections on the Review widget's chosen labels layer (``review.layer()``)."""

    def __init__(self, review, parent=None):
        super().__init__("Corrections (each one is a single undo step)", parent)
        self.review = review
        self.viewer = review.viewer
        self.interp_button = PushButton(text="Interpolate label between drawn slices",
                                        tooltip="fills the slices (along the axis you are scrolling) between "
                                                "slices where the selected label is drawn")
        self.remove_button = PushButton(text="Remove pieces smaller than (mL)")
        self.min_ml = FloatSpinBox(value=0.1, min=0.001, max=10000.0, step=0.001, tooltip="size in mL")
        self.min_ml.step = 0.05  # the first step (0.001) set three decimals; the arrows move by 0.05
        self.fill_button = PushButton(text="Fill holes")
        self.undo_button = PushButton(text="Undo")
        self.redo_button = PushButton(text="Redo")
        self.controls = Container(labels=False, widgets=[
            self.interp_button,
            Container(layout="horizontal", labels=False, widgets=[self.remove_button, self.min_ml]),
            self.fill_button,
            Container(layout="horizontal", labels=False, widgets=[self.undo_button, self.redo_button]),
        ])
        self.controls.margins = (0, 0, 0, 0)
        for button, action in ((self.interp_button, self.interpolate), (self.remove_button, self.remove_small),
                               (self.fill_button, self.fill), (self.undo_button, self.undo),
                               (self.redo_button, self.redo)):
            button.changed.connect(lambda *_, act=action: act())
        QVBoxLayout(self).addWidget(self.controls.native)
        self._job = JobRunner("Corrections", status=review.status, buttons=(
            self.interp_button.native, self.remove_button.native, self.fill_button.native))

    @property
    def busy(self) -> bool:
        return self._job.busy

    def _slice_axis(self) -> int:
        """The display axis the user scrolls through (the one not shown in the 2D view)."""
        dims = self.viewer.dims
        nd = dims.not_displayed
        return int(nd[-1]) - (dims.ndim - 3) if nd else 0

    def _run_op(self, what: str, fn):
        """Run ``fn(labels copy) -> (new labels, detail text)`` in a worker; apply it as one undo step."""
        lyr = self.review.layer()
        if lyr is None:
            report_error(VolumeError("choose a labels layer first"), what)
            return None
        if self._job.busy:
            info("a correction is already running")
            return None

        def done(out):
            new, detail = out
            if lyr.data.shape != new.shape:
                return
            n = apply_labels(lyr, new)
            self.review.mark_edited(n > 0)
            self.review.status.setText(f"{what}: {n} voxel(s) changed" + (f" ({detail})" if detail else "")
                                       + ("; Undo reverts it" if n else ""))
            self.review.refresh(force=True)

        return self._job.start(fn, np.array(lyr.data, copy=True), engine=False, what=what, on_done=done,
                               status=f"{what}…")

    def interpolate(self):
        from ..review import interpolate_slices

        lyr = self.review.layer()
        if lyr is None:
            return self._run_op("Interpolate", None)
        label, axis, spacing = int(lyr.selected_label), self._slice_axis(), _voxel_spacing(lyr)

        def job(data):
            new, n = interpolate_slices(data, label, axis, spacing=spacing)
            return new, f"label {label}, {n} voxel(s) painted"

        return self._run_op("Interpolate", job)

    def remove_small(self):
        from ..review import remove_small_components

        lyr = self.review.layer()
        vox_ml = float(np.prod(_voxel_spacing(lyr))) / 1000.0 if lyr is not None else 0.001
        min_ml = float(self.min_ml.value)

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
        lyr = self.review.layer()
        if lyr is not None:
            lyr.undo()
            self.review.refresh()

    def redo(self):
        lyr = self.review.layer()
        if lyr is not None:
            lyr.redo()
            self.review.refresh()
