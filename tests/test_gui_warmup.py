"""The viewer's one-time warm-up (``gui.warmup``): the garbage collector is off while the engine preload
runs and frozen + back on after it, and napari's first layers are primed without leaving anything behind
(no layer, the user's selection as it was)."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from _gui_helpers import wait_for

from napari_vit3d.gui import warmup


@pytest.fixture
def fresh_warmup(qtbot, monkeypatch):
    if warmup._STATE["started"]:  # an earlier test's widget started the process's warm-up: let it end first
        wait_for(qtbot, warmup.warm_up_finished)
    monkeypatch.setattr(warmup, "_STATE", {"started": False, "finished": False, "gc_off": False})
    monkeypatch.delenv("NAPARI_VIT3D_GC_FREEZE", raising=False)
    was_enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if was_enabled:
        gc.enable()


def test_collector_off_during_preload_then_frozen_and_on(qtbot, make_napari_viewer, fresh_warmup):
    viewer = make_napari_viewer()
    scan = viewer.add_image(np.zeros((4, 5, 6), np.float32), name="scan")
    viewer.layers.selection.active = scan
    release = threading.Event()
    preload = threading.Thread(target=release.wait, daemon=True)
    preload.start()
    gc.unfreeze()
    done = []
    seen_layers = []
    viewer.layers.events.inserted.connect(lambda e: seen_layers.append(e.value.name))

    warmup.warm_up(viewer, preload, on_done=lambda: done.append(True))
    assert not gc.isenabled()  # the preload's imports run without full collections
    qtbot.wait(500)
    assert not gc.isenabled() and not done and not seen_layers  # still waiting for the preload
    before = gc.get_freeze_count()
    release.set()
    wait_for(qtbot, lambda: bool(done))
    assert gc.isenabled() and gc.get_freeze_count() > before  # what was alive is frozen, collector back on
    # a Labels, a Points and an Image layer were added and are gone again; the selection is the user's
    assert len(seen_layers) == 3 and all(n.startswith(warmup.PRIME_NAME) for n in seen_layers)
    assert [lay.name for lay in viewer.layers] == ["scan"] and viewer.layers.selection.active is scan
    assert warmup.warm_up_finished()
    warmup.warm_up(viewer, None)  # once per process: a second widget does not warm up again
    qtbot.wait(300)
    assert len(seen_layers) == 3


def test_collector_left_alone_when_switched_off(qtbot, make_napari_viewer, fresh_warmup, monkeypatch):
    monkeypatch.setenv("NAPARI_VIT3D_GC_FREEZE", "0")
    viewer = make_napari_viewer()
    release = threading.Event()
    preload = threading.Thread(target=release.wait, daemon=True)
    preload.start()
    gc.unfreeze()
    warmup.warm_up(viewer, preload)
    assert gc.isenabled()
    release.set()
    wait_for(qtbot, warmup.warm_up_finished)
    assert gc.isenabled() and gc.get_freeze_count() == 0
