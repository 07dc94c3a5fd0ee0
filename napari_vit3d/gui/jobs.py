"""Running engine work from a dock widget: one job at a time in a napari thread worker, and GUI-thread
work split over event-loop turns.

* :class:`JobRunner`: start(job, *args) runs ``job(*args, progress, cancel)`` in a worker and wires the
  widget's progress bar, start/cancel buttons and status line; a busy flag; errors reported through
  ``_common.report_error`` (a cancel is an info, not an error); ``on_done(result)`` on the GUI thread
  (skipped after a cancel); ``on_finished`` callbacks whatever the outcome.
* :class:`StepQueue`: GUI-thread steps run one per event-loop turn (``QTimer.singleShot(0)``), so the
  viewer repaints and reacts between two napari layer operations (adding a layer costs napari tens
  of milliseconds; three in a row would be one long stall).
* :func:`create_engine_worker` and :class:`ProgressBridge`: the worker and the queued progress signal
  both are built on.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QPushButton

__all__ = ["JobRunner", "ProgressBridge", "StepQueue", "create_engine_worker", "job_progress", "run_controls"]


class ProgressBridge(QObject):
    """Carries ``progress(done, total)`` from a worker thread to the GUI thread (queued signal)."""

    progress = Signal(int, int)


def create_engine_worker(job: Callable, *args, bridge: ProgressBridge, cancel_event):
    """A napari thread worker (not started) running ``job(*args, progress, cancel)``.

    ``progress(done, total)`` reaches the GUI thread through ``bridge.progress``; ``cancel()`` is True
    once ``cancel_event`` is set or the worker was asked to quit, so the engine stops within one
    window batch. Errors are left to the caller's ``errored`` handler.
    """
    holder = {}

    def progress(done, total):
        bridge.progress.emit(int(done), int(total))

    def cancel():
        w = holder.get("worker")
        return cancel_event.is_set() or (w is not None and w.abort_requested)

    worker = create_worker(job, *args, progress, cancel, _start_thread=False, _ignore_errors=True)
    holder["worker"] = worker
    return worker


def run_controls(text: str, slot: Callable, *, fmt: str | None = None):
    """The controls a job runner drives: ``(row, run_button, cancel_button, progress)``, the run button
    (calling ``slot``) and Cancel side by side in ``row``, and an empty progress bar (``fmt``: its text,
    e.g. "%v / %m windows"). Add ``row`` and ``progress`` to the layout where they belong."""
    row = QHBoxLayout()
    button = QPushButton(text)
    button.clicked.connect(slot)
    cancel = QPushButton("Cancel")  # wired by the JobRunner given it
    row.addWidget(button, 1)
    row.addWidget(cancel)
    return row, button, cancel, job_progress(fmt)


def job_progress(fmt: str | None = None) -> QProgressBar:
    """An empty progress bar for a :class:`JobRunner` (``fmt``: its text format)."""
    bar = QProgressBar()
    bar.setRange(0, 1)
    bar.setValue(0)
    if fmt:
        bar.setFormat(fmt)
    return bar


class JobRunner:
    """One job at a time for a widget (or a panel of one), with its controls wired up.

    ``progress``: a ``QProgressBar`` (busy indicator while running, then ``done / total`` as the engine
    reports it; full when done, empty after a cancel or an error). ``buttons``: disabled while a job
    runs. ``cancel_button``: enabled while a job runs; it calls :meth:`cancel`. ``status``: a ``QLabel``
    for the start text and ``cancelled_text``. ``what`` prefixes error messages ("Segment: …").
    """

    def __init__(self, what: str, *, progress=None, buttons=(), cancel_button=None, status=None,
                 cancelled_text: str | None = None):
        self.what = what
        self.progress = progress
        self.buttons = tuple(buttons)
        self.cancel_button = cancel_button
        self.status = status
        self.cancelled_text = cancelled_text
        self.worker = None
        self._what_now = what
        self.on_finished: list[Callable[[], None]] = []
        self._failed = False
        self._cancel = threading.Event()
        self._bridge = ProgressBridge()
        self._bridge.progress.connect(self._on_progress)
        if cancel_button is not None:
            cancel_button.setEnabled(False)
            cancel_button.clicked.connect(self.cancel)

    @property
    def busy(self) -> bool:
        return self.worker is not None

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called for the current (or last) job."""
        return self._cancel.is_set()

    def start(self, job: Callable, *args, on_done: Callable | None = None, status: str | None = None,
              engine: bool = True, what: str | None = None, **kwargs):
        """Run ``job(*args, **kwargs, progress, cancel)`` (``engine=False``: ``job(*args, **kwargs)``) in a
        worker; ``on_done(result)`` runs on the GUI thread when it returns. ``what`` names this job in
        error messages (default: the runner's). Returns the started worker, or None when a job is already
        running."""
        if self.busy:
            return None
        self._what_now = what or self.what
        self._cancel.clear()
        self._failed = False
        fn = functools.partial(job, **kwargs) if kwargs else job
        if engine:
            worker = create_engine_worker(fn, *args, bridge=self._bridge, cancel_event=self._cancel)
        else:
            worker = create_worker(fn, *args, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda out: self._returned(out, on_done))
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)
        self.worker = worker
        self._controls_running(True)
        if self.progress is not None:
            self.progress.setRange(0, 0)
        if status is not None and self.status is not None:
            self.status.setText(status)
        worker.start()
        return worker

    def _controls_running(self, running: bool) -> None:
        """The run buttons off and Cancel on while a job runs; the other way round after."""
        for b in self.buttons:
            b.setEnabled(not running)
        if self.cancel_button is not None:
            self.cancel_button.setEnabled(running)

    def cancel(self) -> None:
        if self.worker is not None:
            self._cancel.set()
            self.worker.quit()
            if self.status is not None:
                self.status.setText("cancelling…")

    def _on_progress(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress.setRange(0, max(total, 1))
            self.progress.setValue(done)

    def _returned(self, out, on_done) -> None:
        if self.cancelled or on_done is None:
            return
        from ._common import report_error

        try:
            on_done(out)
        except Exception as exc:  # noqa: BLE001 - showing a result must never crash the viewer: report it
            self._failed = True
            report_error(exc, self._what_now)

    def _errored(self, exc) -> None:
        from ._common import report_error

        self._failed = True
        report_error(exc, self._what_now)

    def _finished(self) -> None:
        self.worker = None
        try:
            self._controls_running(False)
            if self.progress is not None:
                self.progress.setRange(0, 1)
                self.progress.setValue(0 if (self.cancelled or self._failed) else 1)
            if self.cancelled and self.cancelled_text and self.status is not None:
                self.status.setText(self.cancelled_text)
        except RuntimeError:  # the widget was closed while its job ran: its controls are gone, nothing to show
            return
        for cb in list(self.on_finished):
            cb()


#: ms between two steps of a :class:`StepQueue`
STEP_PAUSE_MS = 5


class StepQueue:
    """GUI-thread work in steps, one step per event-loop turn.

    ``run(steps, on_done)`` runs the first step now and each next one from a timer of
    :data:`STEP_PAUSE_MS` (not 0: Qt 6 runs a zero-delay single shot as a posted event, before any timer
    is due, so the steps ran back to back without a repaint or the viewer's own timers between them);
    an exception in a step is reported (``what``) and drops the steps left. ``busy`` is True until the
    last step (and ``on_done``) ran."""

    def __init__(self, what: str):
        self.what = what
        self._steps: deque = deque()
        self._on_done: Callable | None = None
        self.busy = False

    def run(self, steps, on_done: Callable | None = None) -> None:
        self._steps = deque(steps)
        self._on_done = on_done
        self.busy = True
        self.run_one()

    def run_one(self) -> None:
        """Run the next step (the benchmark times each call: it is one uninterrupted stretch of GUI work)."""
        from ._common import report_error

        if self._steps:
            step = self._steps.popleft()
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - a step shows a result: report any failure, never crash
                self._steps.clear()
                report_error(exc, self.what)
        if self._steps:
            QTimer.singleShot(STEP_PAUSE_MS, self.run_one)
            return
        done, self._on_done = self._on_done, None
        self.busy = False
        if done is not None:
            done()
