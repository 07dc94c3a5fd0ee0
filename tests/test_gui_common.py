"""The widgets' shared helpers in a real viewer: ``upsert_layer`` (add or replace a layer by name) and the
job runner (``gui.jobs.JobRunner``: progress, cancel, errors reported, one job at a time) and ``StepQueue``.
No model is loaded: the jobs here are small Python functions."""

from __future__ import annotations

import threading
import time

import _gui_helpers
import numpy as np
import pytest
from _gui_helpers import tiny_spec, wait_for
from napari.layers import Image, Labels
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton

from napari_vit3d.errors import Cancelled, ModelError
from napari_vit3d.gui._common import upsert_layer
from napari_vit3d.gui.jobs import JobRunner, StepQueue


@pytest.fixture
def env(tmp_path, monkeypatch):
    return _gui_helpers.gui_env(tmp_path, monkeypatch, tiny_spec("tiny-common"))


def test_upsert_layer_adds_replaces_in_place_and_keeps_the_active_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    scan = viewer.add_image(np.zeros((4, 5, 6), np.float32), name="scan")
    viewer.layers.selection.active = scan

    first = upsert_layer(viewer, "map", np.ones((4, 5, 6), np.float32), "image", colormap="magma",
                         scale=(2.0, 2.0, 2.0), metadata={"a": 1})
    assert isinstance(first, Image) and first.name == "map" and viewer.layers["map"] is first
    assert tuple(first.scale) == (2.0, 2.0, 2.0) and first.colormap.name == "magma"
    assert viewer.layers.selection.active is scan  # adding did not take the selection away

    # same type and shape: the same layer, new data / metadata / transform; the user's colormap stays
    first.colormap = "gray"
    new = np.full((4, 5, 6), 3.0, np.float32)
    again = upsert_layer(viewer, "map", new, "image", colormap="magma", translate=(1.0, 0.0, 0.0), metadata={"b": 2})
    assert again is first and np.array_equal(first.data, new)
    assert first.metadata == {"a": 1, "b": 2}
    assert tuple(first.translate) == (1.0, 0.0, 0.0) and tuple(first.scale) == (1.0, 1.0, 1.0)
    assert first.colormap.name == "gray"
    # ... unless the kwarg is named in ``update``
    upsert_layer(viewer, "map", new, "image", update=("colormap",), colormap="magma")
    assert first.colormap.name == "magma"

    # another shape: a new layer replaces the old one (one layer of that name)
    viewer.layers.selection.active = first
    bigger = upsert_layer(viewer, "map", np.ones((4, 5, 7), np.float32), "image")
    assert bigger is not first and first not in viewer.layers and [lyr.name for lyr in viewer.layers] == ["scan", "map"]
    assert viewer.layers.selection.active is bigger  # the replaced layer was active: its replacement is

    # another type: replaced as well
    lab = upsert_layer(viewer, "map", np.zeros((4, 5, 7), np.uint8), "labels", opacity=0.5)
    assert isinstance(lab, Labels) and viewer.layers["map"] is lab and lab.opacity == 0.5

    # a layer of that name that is not ours is left alone: the new one gets a unique name
    viewer.layers.selection.active = scan
    other = upsert_layer(viewer, "map", np.zeros((4, 5, 7), np.uint8), "labels", owned=lambda layer: False)
    assert other.name == "map (2)" and viewer.layers["map"] is lab
    assert viewer.layers.selection.active is scan
    # select=True makes the layer the active one
    upsert_layer(viewer, "map (2)", np.ones((4, 5, 7), np.uint8), "labels", select=True)
    assert viewer.layers.selection.active is other


def _runner():
    bar, start, stop, status = QProgressBar(), QPushButton("go"), QPushButton("stop"), QLabel()
    runner = JobRunner("Job", progress=bar, buttons=(start,), cancel_button=stop, status=status,
                       cancelled_text="cancelled; nothing changed")
    return runner, bar, start, stop, status


def test_job_runner_progress_result_and_one_job_at_a_time(qtbot, env):
    runner, bar, start, stop, status = _runner()
    gate = threading.Event()
    results, finished = [], []
    runner.on_finished.append(lambda: finished.append(True))

    def job(n, progress, cancel):
        for i in range(n):
            progress(i + 1, n)
        gate.wait(10)
        return n * 10

    worker = runner.start(job, 3, on_done=results.append, status="working…")
    assert worker is not None and runner.busy
    assert not start.isEnabled() and stop.isEnabled() and status.text() == "working…"
    assert runner.start(job, 1) is None  # one job at a time
    wait_for(qtbot, lambda: bar.maximum() == 3 and bar.value() == 3)  # progress reached the GUI thread
    gate.set()
    wait_for(qtbot, lambda: not runner.busy)
    assert results == [30] and finished == [True]
    assert start.isEnabled() and not stop.isEnabled() and bar.value() == 1
    assert not env.messages["error"]


def test_job_runner_cancel_is_not_an_error(qtbot, env):
    runner, bar, start, stop, status = _runner()
    results = []

    def job(progress, cancel):
        for _ in range(1000):
            if cancel():
                raise Cancelled("stopped")
            time.sleep(0.01)
        return "finished"

    runner.start(job, on_done=results.append)
    stop.click()  # the cancel button is wired to the runner
    assert runner.cancelled
    wait_for(qtbot, lambda: not runner.busy)
    assert results == []
    assert status.text() == "cancelled; nothing changed"
    assert not env.messages["error"] and env.messages["info"] == ["Job cancelled"]
    assert start.isEnabled() and not stop.isEnabled() and bar.value() == 0


def test_job_runner_reports_errors(qtbot, env):
    runner, bar, start, *_ = _runner()
    results = []

    def failing(progress, cancel):
        raise ModelError("the model file is broken")

    runner.start(failing, on_done=results.append, what="Load")
    wait_for(qtbot, lambda: not runner.busy)
    assert results == [] and env.messages["error"] == ["Load: the model file is broken"]
    assert start.isEnabled() and bar.value() == 0

    # a failure while showing the result (on the GUI thread) is reported too, not raised into Qt
    def show(out):
        raise ValueError(f"cannot show {out}")

    runner.start(lambda data: data, "x", engine=False, on_done=show)
    wait_for(qtbot, lambda: not runner.busy)
    assert env.messages["error"][-1] == "Job: ValueError: cannot show x"


def test_step_queue_runs_one_step_per_turn_and_stops_at_a_failure(qtbot, env):
    queue = StepQueue("Show")
    ran, done = [], []
    queue.run([lambda: ran.append(1), lambda: ran.append(2)], on_done=lambda: done.append(True))
    assert ran == [1] and queue.busy  # the second step waits for the next event-loop turn
    wait_for(qtbot, lambda: not queue.busy)
    assert ran == [1, 2] and done == [True]

    def boom():
        raise ValueError("bad layer")

    queue.run([boom, lambda: ran.append(3)], on_done=lambda: done.append(True))
    wait_for(qtbot, lambda: not queue.busy)
    assert ran == [1, 2] and done == [True, True]
    assert env.messages["error"] == ["Show: ValueError: bad layer"]


def test_upsert_layer_never_activates_a_layer_it_does_not_select(make_napari_viewer):
    # napari activates every inserted layer; giving the selection back right after swapped the layer
    # controls twice per result layer (a GUI-thread stall). The active layer must not change at all.
    viewer = make_napari_viewer()
    scan = viewer.add_image(np.zeros((4, 5, 6), np.float32), name="scan")
    viewer.layers.selection.active = scan
    seen = []
    viewer.layers.selection.events.active.connect(lambda e: seen.append(e.value))
    upsert_layer(viewer, "map", np.ones((4, 5, 6), np.float32), "image")
    upsert_layer(viewer, "labels", np.zeros((4, 5, 6), np.uint8), "labels")
    assert seen == [] and viewer.layers.selection.active is scan
    assert viewer.layers._activate_on_insert is True  # napari's own behaviour is back for everyone else
    new = viewer.add_image(np.zeros((4, 5, 6), np.float32), name="user's")
    assert viewer.layers.selection.active is new
    # select=True: the new layer becomes active (napari clears the selection on the way: None)
    seen.clear()
    chosen = upsert_layer(viewer, "chosen", np.zeros((4, 5, 6), np.uint8), "labels", select=True)
    assert {id(v) for v in seen if v is not None} == {id(chosen)} and viewer.layers.selection.active is chosen


def test_step_queue_lets_timers_run_between_steps(qtbot, env):
    # Qt 6 runs a zero-delay single shot before any due timer: the steps must leave the event loop a turn,
    # so that a timer (the viewer's own, a repaint) runs between two steps
    from qtpy.QtCore import QTimer

    order = []
    beat = QTimer()
    beat.setInterval(1)
    beat.timeout.connect(lambda: order.append("timer"))
    beat.start()
    queue = StepQueue("Show")

    def slow(tag):
        def step():
            time.sleep(0.02)  # a step longer than the timer's interval: the timer is due when it ends
            order.append(tag)
        return step

    queue.run([slow("a"), slow("b"), slow("c")])
    wait_for(qtbot, lambda: not queue.busy)
    beat.stop()
    steps = [i for i, x in enumerate(order) if x != "timer"]
    assert [order[i] for i in steps] == ["a", "b", "c"]
    assert all(order[i + 1] == "timer" for i in steps[:-1]), order
