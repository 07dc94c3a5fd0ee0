"""The GUI never loses work and never dies: cancel, bad models, recovery after a crash, replace-or-keep."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from napari.layers import Labels

from napari_vit3d.gui import autosave, recovery
from napari_vit3d.gui.session import run_of

TINY = {
    "name": "tiny-robust", "architecture": "segformer3d",
    "arch_kwargs": {"embed_dims": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
                    "sr_ratios": [2, 1, 1, 1], "decoder_dim": 16},
    "in_channels": 1, "channel_names": ["T1"], "spacing": [4.0, 4.0, 4.0], "roi_size": [32, 32, 32],
    "labels": [{"index": 0, "name": "background", "color": [0, 0, 0, 0]},
               {"index": 1, "name": "tissue", "color": [1.0, 0.4, 0.2, 1.0]}],
}
WAIT_MS = 120_000


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_VIT3D_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv(recovery.ENV_VAR, str(tmp_path / "recovery"))
    messages = {"error": [], "info": []}
    from napari_vit3d.gui import _common

    monkeypatch.setattr(_common, "show_error", lambda m: messages["error"].append(str(m)))
    monkeypatch.setattr(_common, "show_info", lambda m: messages["info"].append(str(m)))

    def spec(name, **changes):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**TINY, "name": name, **changes}))
        return path

    return types.SimpleNamespace(tmp=tmp_path, messages=messages, spec=spec)


def plugin_labels(viewer):
    return [l for l in viewer.layers if isinstance(l, Labels)]


def test_cancel_bad_models_recovery_and_replace(make_napari_viewer, qtbot, env, monkeypatch):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-vit3d", "colin27_t1")
    _, seg = viewer.window.add_plugin_dock_widget("napari-vit3d", "1 Segment")

    # -- a file that is not a model: a plain message, nothing registered
    junk = env.tmp / "junk.pt"
    junk.write_bytes(b"\x80\x04 not a checkpoint")
    assert not seg.add_model(str(junk))
    assert env.messages["error"] and "junk.pt" in env.messages["error"][-1]
    assert "Traceback" not in env.messages["error"][-1]

    # -- a spec whose weights file is corrupt: added, but loading fails in the worker with a message
    bad_weights = env.tmp / "broken.safetensors"
    bad_weights.write_bytes(b"this is not safetensors data" * 10)
    assert seg.add_model(str(env.spec("broken-model", weights=str(bad_weights))))
    n_err = len(env.messages["error"])
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=WAIT_MS)
    assert len(env.messages["error"]) == n_err + 1
    assert "broken" in env.messages["error"][-1]
    assert plugin_labels(viewer) == []
    assert seg.segment_button.isEnabled() and not seg.cancel_button.isEnabled()

    # -- cancel mid-run (1 mm model grid: hundreds of windows): no layer, a clear status
    assert seg.add_model(str(env.spec("tiny-slow", spacing=[1.0, 1.0, 1.0], roi_size=[32, 32, 32])))
    seg.run()
    qtbot.waitUntil(lambda: seg.progress.maximum() > 1 and seg.progress.value() >= 1, timeout=WAIT_MS)
    assert seg.running
    total = seg.progress.maximum()
    seg.cancel()
    qtbot.waitUntil(lambda: not seg.running, timeout=WAIT_MS)
    assert plugin_labels(viewer) == []
    assert seg.progress.value() < total
    assert "cancelled" in seg.status.text()
    assert len(env.messages["error"]) == n_err + 1  # a cancel is not an error

    # -- the viewer is still usable: a good model runs to the end
    assert seg.add_model(str(env.spec("tiny-robust")))
    torch.manual_seed(0)  # random weights: the same output every run
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=WAIT_MS)
    labels = viewer.layers["colin27_t1 · labels"]
    rec = run_of(labels)
    model_output = rec.model_labels.copy()

    # -- edits are autosaved; after a "crash" (layers gone) reopening the same scan offers them back
    labels.brush_size = 5
    labels.paint((90, 100, 90), 1)
    labels.paint((90, 20, 20), 1)
    edited = np.array(labels.data, copy=True)
    assert not np.array_equal(edited, model_output)
    saver = autosave.saver_of(labels)
    saver.save_now()
    qtbot.waitUntil(lambda: saver._worker is None and saver.saves >= 1, timeout=WAIT_MS)
    assert recovery.recovery_path(rec.scan_hash).is_file()

    viewer.layers.clear()
    offered = []
    monkeypatch.setattr(seg, "ask_restore", lambda name, saved: offered.append((name, saved)) or True)
    viewer.open_sample("napari-vit3d", "colin27_t1")
    assert len(offered) == 1 and offered[0][1]["model"] == "tiny-robust"
    restored = viewer.layers["colin27_t1 · labels (recovered)"]
    np.testing.assert_array_equal(restored.data, edited)
    scan = viewer.layers["colin27_t1"]
    np.testing.assert_allclose(restored.extent.world, scan.extent.world)
    assert restored.colormap.map(np.array([1]))[0][0] == pytest.approx(1.0)

    # -- running again asks first: "Keep both" adds a new layer and leaves the edited one alone
    seg.run()  # no "<scan> · labels" after the crash: no question
    qtbot.waitUntil(lambda: not seg.running, timeout=WAIT_MS)
    fresh = viewer.layers["colin27_t1 · labels"]
    np.testing.assert_array_equal(fresh.data, model_output)
    fresh.paint((90, 100, 90), 1)
    fresh_edited = np.array(fresh.data, copy=True)
    asked = []
    monkeypatch.setattr(seg, "ask_replace", lambda name: asked.append(name) or "no")
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=WAIT_MS)
    assert asked == ["colin27_t1 · labels"]
    np.testing.assert_array_equal(viewer.layers["colin27_t1 · labels (2)"].data, model_output)
    np.testing.assert_array_equal(fresh.data, fresh_edited)
    np.testing.assert_array_equal(restored.data, edited)
    # "Replace" puts the model's output back into the same layer, on request only
    monkeypatch.setattr(seg, "ask_replace", lambda name: "yes")
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=WAIT_MS)
    assert viewer.layers["colin27_t1 · labels"] is fresh
    np.testing.assert_array_equal(fresh.data, model_output)
    assert len([l for l in viewer.layers if l.name.startswith("colin27_t1 · labels")]) == 3
