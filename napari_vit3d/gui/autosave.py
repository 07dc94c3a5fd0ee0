"""Autosave a labels layer's corrections to its own recovery file, shortly after every change.

**When**: every change to the voxels restarts a short timer (:data:`DEBOUNCE_MS`); when it fires, the
layer is saved. Changes are seen through the layer's ``paint`` / ``labels_update`` / ``data`` events
(brush, fill, ``Labels.paint``, ``data_setitem``, ``layer.data = ...``) and ``set_data`` (also undo/redo
and ``layer.data[...] = v; layer.refresh()``, but also every slice change: then the copy is compared with
the last one saved, in the worker, and nothing is written when no voxel changed). Also saved at once
(:meth:`Autosaver.flush`, on the GUI thread, waiting for a save in progress) when the viewer window
closes, when the application quits, when the layer is removed and when an export fails. So a ``kill -9``
at any moment loses at most the stroke in progress and the last :data:`DEBOUNCE_MS` (plus the save).

**Where**: one file per layer (:mod:`.recovery`: scan hash + the layer's uuid in its metadata), written
atomically, so a kill during a save keeps the previous file.

**Cost** (Colin27 labels, 181×217×181 = 7.1 M voxels, measured by ``tests/test_gui_autosave.py``
``test_save_cost``; figures in ``docs/user-guide.md``): the GUI thread only copies the array (a few
milliseconds); compressing and writing (about 0.1–0.3 s) run in a thread worker, and at most one save runs
per layer (changes during a save start one more save when it ends).
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import QEvent, QObject, QTimer

from . import recovery
from ._common import unwrap
from .session import now_iso

#: milliseconds after the last change before a save starts
DEBOUNCE_MS = 750
#: kept for callers of the old API (saves are no longer counted in edits)
EDITS_PER_SAVE = 1
IDLE_SAVE_MS = DEBOUNCE_MS

_savers: dict[int, Autosaver] = {}
_SURE = ("paint", "labels_update", "data")  # events that mean voxels changed
_MAYBE = ("set_data",)  # events after which voxels may have changed (undo, refresh) or not (slicing)


class Autosaver:
    """Watches one labels layer and keeps its recovery file up to date (module docstring)."""

    def __init__(self, layer, scan_hash: str, info: dict, *, debounce_ms: int = DEBOUNCE_MS, layer_id=None,
                 **_old):
        self.layer = layer
        self.scan_hash = scan_hash
        self.layer_id = layer_id or recovery.layer_id(layer)
        self.info = dict(info)
        self.pending = 0  # changes since the last save started (> 0: a save is due)
        self._maybe = False
        self.saves = 0
        self.last_path = None
        self.last_error: BaseException | None = None
        self._worker = None
        self._again = False
        self._discard_after = False
        self._lock = threading.Lock()
        self._seq = 0  # snapshot number; a write older than the last one written is dropped
        self._written_seq = 0
        self._idle = threading.Event()
        self._idle.set()
        self._last = np.array(layer.data, copy=True)  # what the file (or the model) holds: compared with
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(debounce_ms))
        self._timer.timeout.connect(self.save_now)
        for name in _SURE:
            getattr(layer.events, name).connect(self._on_edit)
        for name in _MAYBE:
            getattr(layer.events, name).connect(self._on_maybe)

    # -- events ------------------------------------------------------------------------------
    def _on_edit(self, *_):
        self.pending += 1
        self._timer.start()

    def _on_maybe(self, *_):
        self._maybe = True
        self._timer.start()

    # -- saving ------------------------------------------------------------------------------
    def _snapshot(self, sure: bool):
        self._seq += 1
        info = {**self.info, "saved": now_iso(), "layer": self.layer.name}
        return self._seq, np.array(self.layer.data, copy=True), info, sure

    def _write(self, seq: int, data, info: dict, sure: bool):
        """Any thread: write the snapshot unless a newer one was written or (not ``sure``) nothing changed."""
        with self._lock:
            if seq < self._written_seq:
                return None
            if not sure and self._last is not None and self._last.shape == data.shape \
                    and np.array_equal(self._last, data):
                return None
            path = recovery.save_recovery(self.scan_hash, data, info, self.layer_id)
            self._written_seq = seq
            self._last = data
            return path

    def _write_in_worker(self, *snapshot):
        try:
            return self._write(*snapshot)
        finally:
            self._idle.set()

    def save_now(self, *, force: bool = False):
        """Start a save in a thread worker (returns it), or None when nothing changed or a save is running
        (then one more save starts when it ends)."""
        self._timer.stop()
        if not (self.pending or self._maybe or force):
            return None
        if self._worker is not None:
            self._again = True
            return None
        sure = bool(self.pending or force)
        self.pending, self._maybe = 0, False
        snapshot = self._snapshot(sure)
        self._idle.clear()
        worker = create_worker(self._write_in_worker, *snapshot, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._saved)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._finished)
        self._worker = worker
        worker.start()
        return worker

    def flush(self, *, timeout: float = 30.0) -> bool:
        """GUI thread: save now and wait (for a close, a quit, a removal, a failed export). True when the file
        is up to date."""
        self._timer.stop()
        self._idle.wait(timeout)
        if not (self.pending or self._maybe):
            return True
        sure = bool(self.pending)
        self.pending, self._maybe = 0, False
        try:
            path = self._write(*self._snapshot(sure))
        except (OSError, ValueError) as exc:
            self._failed(exc)
            return False
        if path is not None:
            self._saved(path)
        return True

    def _saved(self, path):
        if path is not None:
            self.saves += 1
            self.last_path = path

    def _failed(self, exc):
        self.last_error = exc
        print(f"napari-vit3d: autosave failed: {exc}")

    def _finished(self):
        self._worker = None
        if self._discard_after:
            self._discard_after = False
            if not (self.pending or self._maybe):
                recovery.discard_recovery(self.scan_hash, self.layer_id)
        if self._again:
            self._again = False
            self.save_now(force=True)

    def exported(self) -> None:
        """The layer was exported: its recovery file goes (after a save in progress), later changes make a new one."""
        self._last = np.array(self.layer.data, copy=True)
        recovery.discard_recovery(self.scan_hash, self.layer_id)
        if self._worker is not None:
            self._discard_after = True

    def stop(self):
        self._timer.stop()
        for name in (*_SURE, *_MAYBE):
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                getattr(self.layer.events, name).disconnect(self._on_edit if name in _SURE else self._on_maybe)


def attach(layer, scan_hash: str, info: dict, **kw) -> Autosaver:
    """Autosave ``layer`` from now on (replacing a saver it had). A layer whose id another watched layer has
    (a duplicated layer copies its metadata) gets a new id, so each layer keeps its own file."""
    layer = unwrap(layer)
    old = _savers.pop(id(layer), None)
    if old is not None:
        old.stop()
    lid = kw.pop("layer_id", None) or recovery.layer_id(layer)
    if any(s.layer_id == lid and s.layer is not layer for s in _savers.values()):
        from ..io import keys

        lid = layer.metadata[keys.LAYER_ID] = recovery.new_layer_id()
    saver = Autosaver(layer, scan_hash, info, layer_id=lid, **kw)
    _savers[id(layer)] = saver
    _install_quit_hook()
    return saver


def saver_of(layer) -> Autosaver | None:
    return _savers.get(id(unwrap(layer)))


def savers() -> list[Autosaver]:
    return list(_savers.values())


def detach(layer, *, save: bool = False) -> None:
    """Stop autosaving ``layer`` (``save``: write its unsaved changes first)."""
    saver = _savers.pop(id(unwrap(layer)), None)
    if saver is not None:
        if save:
            saver.flush()
        saver.stop()


def flush_all(layers=None) -> None:
    """Save every watched layer (or those of ``layers``) that has unsaved changes, now."""
    wanted = None if layers is None else {id(unwrap(lyr)) for lyr in layers}
    for key, saver in list(_savers.items()):
        if wanted is None or key in wanted:
            saver.flush()


_quit_hooked = []


def _install_quit_hook() -> None:
    if _quit_hooked:
        return
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(flush_all)
        _quit_hooked.append(app)


class _CloseWatcher(QObject):
    """Saves a viewer's watched layers when its main window gets a close event."""

    def __init__(self, viewer, parent):
        super().__init__(parent)
        self._viewer = viewer

    def eventFilter(self, obj, event):  # noqa: N802 (Qt name)
        if event.type() == QEvent.Close:
            with contextlib.suppress(RuntimeError, AttributeError):
                flush_all(list(self._viewer.layers))
        return False


def watch_viewer(viewer) -> None:
    """Save on the viewer's window close and on the removal of a watched layer (then stop watching it)."""
    viewer = unwrap(viewer)
    if id(viewer) in _watched:
        return
    qt_window = getattr(getattr(viewer, "window", None), "_qt_window", None)
    if qt_window is not None:
        watcher = _CloseWatcher(viewer, qt_window)
        qt_window.installEventFilter(watcher)
    viewer.layers.events.removed.connect(lambda event: detach(event.value, save=True))
    _install_quit_hook()
    _watched.add(id(viewer))
    with contextlib.suppress(TypeError):  # a viewer that cannot be weakly referenced stays in the set
        weakref.finalize(viewer, _watched.discard, id(viewer))


_watched: set[int] = set()
