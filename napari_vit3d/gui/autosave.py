"""Autosave a labels layer's corrections to a recovery file (every few edits, or a while after the last).

The array is copied on the GUI thread (milliseconds) and compressed/written in a thread worker, so
painting never waits for the disk. See :mod:`.recovery` for where the files go.
"""

from __future__ import annotations

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer

from . import recovery
from ._common import unwrap
from .session import now_iso

EDITS_PER_SAVE = 5
IDLE_SAVE_MS = 60_000

_savers: dict[int, Autosaver] = {}


class Autosaver:
    """Watches one labels layer; saves after ``edits_per_save`` edits or ``idle_ms`` after an edit."""

    def __init__(self, layer, scan_hash: str, info: dict, *, edits_per_save: int = EDITS_PER_SAVE,
                 idle_ms: int = IDLE_SAVE_MS):
        self.layer = layer
        self.scan_hash = scan_hash
        self.info = dict(info)
        self.edits_per_save = edits_per_save
        self.pending = 0
        self.saves = 0
        self.last_path = None
        self._worker = None
        self._again = False
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(idle_ms)
        self._timer.timeout.connect(self.save_now)
        layer.events.paint.connect(self._on_edit)

    def _on_edit(self, *_):
        self.pending += 1
        if self.pending >= self.edits_per_save:
            self.save_now()
        else:
            self._timer.start()

    def save_now(self):
        """Start a save (returns the worker, or None when nothing is pending or a save is running)."""
        self._timer.stop()
        if self.pending == 0:
            return None
        if self._worker is not None:
            self._again = True
            return None
        data = np.array(self.layer.data, copy=True)
        self.pending = 0
        info = {**self.info, "saved": now_iso(), "layer": self.layer.name}
        worker = create_worker(recovery.save_recovery, self.scan_hash, data, info, _start_thread=False,
                               _ignore_errors=True)
        worker.returned.connect(self._saved)
        worker.errored.connect(lambda exc: print(f"napari-vit3d: autosave failed: {exc}"))
        worker.finished.connect(self._finished)
        self._worker = worker
        worker.start()
        return worker

    def _saved(self, path):
        self.saves += 1
        self.last_path = path

    def _finished(self):
        self._worker = None
        if self._again:
            self._again = False
            self.pending = max(self.pending, 1)
            self.save_now()

    def stop(self):
        self._timer.stop()
        try:
            self.layer.events.paint.disconnect(self._on_edit)
        except (TypeError, ValueError, RuntimeError):
            pass


def attach(layer, scan_hash: str, info: dict, **kw) -> Autosaver:
    layer = unwrap(layer)
    old = _savers.pop(id(layer), None)
    if old is not None:
        old.stop()
    saver = Autosaver(layer, scan_hash, info, **kw)
    _savers[id(layer)] = saver
    return saver


def saver_of(layer) -> Autosaver | None:
    return _savers.get(id(unwrap(layer)))


def detach(layer) -> None:
    saver = _savers.pop(id(unwrap(layer)), None)
    if saver is not None:
        saver.stop()
