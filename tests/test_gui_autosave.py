"""Corrections are never lost: a real viewer process autosaving a labels layer is killed with SIGKILL at
several moments (after a save, in the middle of the debounce of the next stroke), closed normally, and
given two labels layers; then reopening the scan in the Segment widget offers every recovery file back.
Also the cost of one save of Colin27-sized labels (``gui.autosave`` docstring, user guide)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from napari_vit3d.gui import recovery

SCAN_HASH = "ab" * 32
SHAPE = (40, 50, 60)

SCRIPT = textwrap.dedent('''
    import sys, time
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication
    from napari_vit3d.gui import autosave

    mode, n = sys.argv[1], int(sys.argv[2])
    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    autosave.watch_viewer(viewer)
    layers = [viewer.add_labels(np.zeros(%(shape)r, np.uint8), name=f"L{i}") for i in range(2 if mode == "two" else 1)]
    savers = [autosave.attach(lyr, %(hash)r, {"scan": "s"}) for lyr in layers]
    for lyr in layers:
        lyr.brush_size = 3

    def settle():
        while any(s.pending or s._maybe or s._worker is not None or s._timer.isActive() for s in savers):
            app.processEvents()
            time.sleep(0.005)

    print("STARTED", flush=True)
    for k in range(1, n + 1):
        for i, lyr in enumerate(layers):
            z = 4 + 4 * k
            if k %% 2:
                lyr.paint((z, 10 + 10 * i, 10), k)  # the napari API: Labels.paint
            else:
                lyr.data[z, 10 + 10 * i, 10:13] = k  # in place, then refresh
                lyr.refresh()
        print(f"PAINTED {k}", flush=True)
        if mode == "close":
            break
        settle()
        print(f"READY {k}", flush=True)
    if mode == "close":
        viewer.close()  # a normal close, right after the stroke (no debounce waited for)
        print("CLOSED", flush=True)
        sys.exit(0)
    while True:
        app.processEvents()
        time.sleep(0.01)
''') % {"shape": SHAPE, "hash": SCAN_HASH}


def run_until(tmp_path, mode: str, n: int, until: str | None):
    """Start the viewer process; SIGKILL it when it prints ``until`` (None: let it exit). Returns its lines."""
    script = tmp_path / "autosave_child.py"
    script.write_text(SCRIPT)
    env = {**os.environ, recovery.ENV_VAR: str(tmp_path / "recovery"), "QT_QPA_PLATFORM": "offscreen",
           "NAPARI_VIT3D_CONFIG_DIR": str(tmp_path / "config")}
    proc = subprocess.Popen([sys.executable, str(script), mode, str(n)], stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.monotonic() + 120
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if until is not None and line.strip() == until:
                proc.send_signal(signal.SIGKILL)
                break
            if time.monotonic() > deadline:
                pytest.fail(f"child too slow: {lines}")
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return lines, proc.returncode


def strokes_in(labels) -> set[int]:
    return {int(v) for v in np.unique(labels) if v}


@pytest.mark.parametrize(("until", "must_have"), [("READY 1", {1}), ("READY 6", set(range(1, 7))),
                                                  ("PAINTED 4", {1, 2, 3})])
def test_kill_9_loses_at_most_the_stroke_in_progress(tmp_path, monkeypatch, until, must_have):
    monkeypatch.setenv(recovery.ENV_VAR, str(tmp_path / "recovery"))
    lines, rc = run_until(tmp_path, "strokes", 8, until)
    assert rc == -signal.SIGKILL, lines
    found = recovery.load_all(SCAN_HASH)
    assert len(found) == 1
    _, labels, info = found[0]
    assert labels.shape == SHAPE
    have = strokes_in(labels)
    assert must_have <= have, (until, have)
    assert have <= must_have | {max(must_have) + 1}  # the one in progress at most
    assert info["layer_id"] in found[0][0].name


def test_two_layers_two_files_and_close_saves(tmp_path, monkeypatch):
    monkeypatch.setenv(recovery.ENV_VAR, str(tmp_path / "recovery"))
    lines, rc = run_until(tmp_path, "two", 2, "READY 2")
    assert rc == -signal.SIGKILL
    found = recovery.load_all(SCAN_HASH)
    assert len(found) == 2 and len({info["layer_id"] for _, _, info in found}) == 2
    for _, labels, info in found:
        assert strokes_in(labels) == {1, 2}
        col = 10 + 10 * int(info["layer"][1:])
        assert labels[8, col, 10] == 1  # each file holds its own layer's strokes

    other = tmp_path / "closed"
    other.mkdir()
    monkeypatch.setenv(recovery.ENV_VAR, str(other / "recovery"))
    lines, rc = run_until(other, "close", 3, None)
    assert rc == 0 and "CLOSED" in lines, lines
    found = recovery.load_all(SCAN_HASH)
    assert len(found) == 1 and strokes_in(found[0][1]) == {1}


def test_reopen_offers_every_layer(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from _gui_helpers import dock, gui_env, open_sample, tiny_spec

    from napari_vit3d.gui._layers import volume_from_layer

    env = gui_env(tmp_path, monkeypatch, tiny_spec("tiny-autosave"))
    viewer = make_napari_viewer()
    scan = open_sample(viewer)
    h = volume_from_layer(scan).content_hash()
    shape = tuple(np.shape(scan.data))
    for k, lid in enumerate(("a" * 32, "b" * 32), start=1):
        lab = np.zeros(shape, np.uint8)
        lab[k, k, k] = k
        recovery.save_recovery(h, lab, {"scan": scan.name, "model": "m"}, lid)
    viewer.layers.clear()
    seg = dock(viewer, "1 Segment")
    offered = []
    monkeypatch.setattr(seg, "ask_restore", lambda name, saved: offered.append(saved["layer_id"]) or True)
    open_sample(viewer)
    assert sorted(offered) == ["a" * 32, "b" * 32]
    restored = [lyr for lyr in viewer.layers if "recovered" in lyr.name]
    assert len(restored) == 2
    # exporting one discards only its own file
    exp = dock(viewer, "4 Export")
    exp.labels_combo.select(restored[0].name)
    out = tmp_path / "out"
    out.mkdir()
    exp.folder.setText(str(out))
    exp.stem.setText("first")
    exp.export()
    qtbot.waitUntil(lambda: not exp.busy, timeout=60_000)
    assert not env.messages["error"], env.messages["error"]
    left = recovery.load_all(h)
    assert len(left) == 1 and left[0][2]["layer_id"] == restored[1].metadata["vit3d_layer_id"]
    # the same name again: asked, and "no" writes nothing
    asked = []
    monkeypatch.setattr(exp, "ask_overwrite", lambda paths: asked.append(paths) or False)
    before = (out / "first.nii.gz").stat().st_mtime_ns
    assert exp.export() is None
    assert asked and (out / "first.nii.gz") in asked[0]
    assert (out / "first.nii.gz").stat().st_mtime_ns == before
