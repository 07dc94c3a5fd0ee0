"""The GUI never loses work and never dies: cancel, bad models, recovery after a crash, replace-or-keep."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from _gui_helpers import TWO_TISSUES, add_then_break, dock, gui_env, open_sample, segment_and_wait, tiny_spec, wait_for
from napari.layers import Labels

from napari_vit3d.gui import autosave, recovery
from napari_vit3d.gui._layers import volume_from_layer
from napari_vit3d.gui.session import run_of


@pytest.fixture
def env(tmp_path, monkeypatch):
    return gui_env(tmp_path, monkeypatch, tiny_spec("tiny-robust", labels=[
        {"index": 0, "name": "background", "color": [0, 0, 0, 0]},
        {"index": 1, "name": "tissue", "color": [1.0, 0.4, 0.2, 1.0]}]))


def plugin_labels(viewer):
    return [l for l in viewer.layers if isinstance(l, Labels)]


def test_cancel_bad_models_recovery_and_replace(make_napari_viewer, qtbot, env, monkeypatch):
    from napari_vit3d.gui.warmup import warm_up_finished

    viewer = make_napari_viewer()
    open_sample(viewer)
    seg = dock(viewer, "1 Segment")
    # the first viewer of a process adds short-lived transparent warm-up layers; the layer counts below are
    # about what a run leaves, so wait until they are gone (later viewers in the process have none)
    wait_for(qtbot, warm_up_finished)

    # -- a file that is not a model: a plain message, nothing registered
    junk = env.tmp / "junk.pt"
    junk.write_bytes(b"\x80\x04 not a checkpoint")
    assert not seg.add_model(str(junk))
    assert env.messages["error"] and "junk.pt" in env.messages["error"][-1]
    assert "Traceback" not in env.messages["error"][-1]

    # -- a model whose weights file went bad after it was added: loading fails in the worker with a message
    add_then_break(seg, env, "broken-model")
    seg.model_combo.setCurrentText("broken-model")
    n_err = len(env.messages["error"])
    segment_and_wait(qtbot, seg)
    assert len(env.messages["error"]) == n_err + 1
    assert "broken" in env.messages["error"][-1]
    assert plugin_labels(viewer) == []
    assert seg.segment_button.isEnabled() and not seg.cancel_button.isEnabled()

    # -- cancel mid-run (1 mm model grid: hundreds of windows): no layer, a clear status
    assert seg.add_model(str(env.spec("tiny-slow", spacing=[1.0, 1.0, 1.0], roi_size=[32, 32, 32])))
    seg.run()
    wait_for(qtbot, lambda: seg.progress.maximum() > 1 and seg.progress.value() >= 1)
    assert seg.running
    total = seg.progress.maximum()
    seg.cancel()
    wait_for(qtbot, lambda: not seg.running)
    assert plugin_labels(viewer) == []
    assert seg.progress.value() < total
    assert "cancelled" in seg.status.text()
    assert len(env.messages["error"]) == n_err + 1  # a cancel is not an error

    # -- the viewer is still usable: a good model runs to the end
    assert seg.add_model(str(env.spec("tiny-robust")))
    torch.manual_seed(0)  # random weights: the same output every run
    segment_and_wait(qtbot, seg)
    labels = viewer.layers["colin27_t1 · labels"]
    rec = run_of(labels)
    model_output = rec.model_labels_display().copy()

    # -- edits are autosaved; after a "crash" (layers gone) reopening the same scan offers them back
    labels.brush_size = 5
    labels.paint((90, 100, 90), 1)
    labels.paint((90, 20, 20), 1)
    edited = np.array(labels.data, copy=True)
    assert not np.array_equal(edited, model_output)
    saver = autosave.saver_of(labels)
    saver.save_now()
    wait_for(qtbot, lambda: saver._worker is None and saver.saves >= 1)
    assert recovery.recovery_path(rec.scan_hash).is_file()

    viewer.layers.clear()
    offered = []
    monkeypatch.setattr(seg, "ask_restore", lambda name, saved: offered.append((name, saved)) or True)
    open_sample(viewer)
    assert len(offered) == 1 and offered[0][1]["model"] == "tiny-robust"
    restored = viewer.layers["colin27_t1 · labels (recovered)"]
    np.testing.assert_array_equal(restored.data, edited)
    scan = viewer.layers["colin27_t1"]
    np.testing.assert_allclose(restored.extent.world, scan.extent.world)
    assert restored.colormap.map(np.array([1]))[0][0] == pytest.approx(1.0)

    # -- the recovered labels export like any others: on the scan's grid, with the scan's hash in the
    # provenance (there is no model output to compare with), and the recovery file is then gone
    exp = dock(viewer, "4 Export")
    exp.labels_combo.select(restored.name)
    out = env.tmp / "export-recovered"
    out.mkdir()
    exp.folder.setText(str(out))
    exp.stem.setText("recovered")
    n_err = len(env.messages["error"])
    exp.export()
    wait_for(qtbot, lambda: not exp.busy)
    assert len(env.messages["error"]) == n_err, env.messages["error"]
    prov = json.loads((out / "recovered.provenance.json").read_text())
    assert prov["scan"]["content_sha256"] == rec.scan_hash and "edits_note" in prov
    np.testing.assert_array_equal(np.asarray(nib.load(out / "recovered.nii.gz").dataobj),
                                  volume_from_layer(restored).data)
    assert [entry["name"] for entry in json.loads((out / "recovered.labels.json").read_text())["labels"]] == \
        ["background", "tissue"]  # the label table saved with the autosave
    assert recovery.load_recovery(rec.scan_hash) is None

    # -- running again asks first: "Keep both" adds a new layer and leaves the edited one alone
    segment_and_wait(qtbot, seg)  # no "<scan> · labels" after the crash: no question
    fresh = viewer.layers["colin27_t1 · labels"]
    np.testing.assert_array_equal(fresh.data, model_output)
    fresh.paint((90, 100, 90), 1)
    fresh_edited = np.array(fresh.data, copy=True)
    asked = []
    monkeypatch.setattr(seg, "ask_replace", lambda name: asked.append(name) or "no")
    segment_and_wait(qtbot, seg)
    assert asked == ["colin27_t1 · labels"]
    np.testing.assert_array_equal(viewer.layers["colin27_t1 · labels (2)"].data, model_output)
    np.testing.assert_array_equal(fresh.data, fresh_edited)
    np.testing.assert_array_equal(restored.data, edited)
    # "Replace" puts the model's output back into the same layer, on request only
    monkeypatch.setattr(seg, "ask_replace", lambda name: "yes")
    segment_and_wait(qtbot, seg)
    assert viewer.layers["colin27_t1 · labels"] is fresh
    np.testing.assert_array_equal(fresh.data, model_output)
    assert len([l for l in viewer.layers if l.name.startswith("colin27_t1 · labels")]) == 3


def test_tissue_step_option_reaches_the_engine_and_the_record(make_napari_viewer, qtbot, env, monkeypatch):
    """Advanced › tissue classes from the scan's intensities: live only for a model whose spec asks for a
    post-processing step; ticked, the run applies it (the labels equal ``segment``'s with the step), unticked
    it does not (they equal ``segment(..., postprocess=False)``), and the run's settings record which."""
    from napari_vit3d import usecases
    from napari_vit3d.inference import segment
    from napari_vit3d.models import load_model

    seen = []
    real = usecases.segment_scan

    def recording(*args, **kwargs):
        seen.append((kwargs.get("postprocess"), args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(usecases, "segment_scan", recording)
    viewer = make_napari_viewer()
    open_sample(viewer)
    seg = dock(viewer, "1 Segment")
    assert seg.add_model(str(env.spec("tiny-robust")))
    assert not seg.postprocess_check.isEnabled() and not seg.postprocess_check.isChecked()
    assert seg.settings()["postprocess"] is False
    em_spec = env.spec("tiny-em", labels=TWO_TISSUES, postprocess={"tissue_em": {"labels": [1, 2]}})
    assert seg.add_model(str(em_spec))
    assert seg.model_combo.currentText() == "tiny-em"
    assert seg.postprocess_check.isEnabled() and seg.postprocess_check.isChecked()
    seg.ask_replace = lambda _name: "yes"
    for ticked in (True, False):
        seg.advanced.setChecked(True)
        seg.postprocess_check.setChecked(ticked)
        torch.manual_seed(0)
        segment_and_wait(qtbot, seg)
        assert not env.messages["error"], env.messages
        assert seen[-1][0] is ticked
        rec = run_of(viewer.layers["colin27_t1 · labels"])
        assert rec.settings["postprocess"] is ticked
        torch.manual_seed(0)                            # the same random weights as the widget's model
        ref = segment(seen[-1][1], load_model(str(em_spec), device="cpu"), device="cpu", use_cache=False,
                      return_probabilities=False, postprocess=ticked)
        np.testing.assert_array_equal(rec.model_labels.data, ref.labels.data)
    # greyed out (and unticked) for a model without the step; the user's choice comes back with the model
    for choice in (False, True):
        seg.postprocess_check.setChecked(choice)
        seg.model_combo.setCurrentText("tiny-robust")
        assert not seg.postprocess_check.isEnabled() and not seg.postprocess_check.isChecked()
        seg.model_combo.setCurrentText("tiny-em")
        assert seg.postprocess_check.isEnabled() and seg.postprocess_check.isChecked() is choice


def test_multiscale_option_runs_the_multiscale_segmentation(make_napari_viewer, qtbot, env, monkeypatch):
    """Advanced › multi-scale: the worker runs ``segment_scan`` with ``MULTISCALE`` (and without it when
    unticked), the labels layer holds its argmax, the run's settings record it, the bar shows percent."""
    from napari_vit3d import usecases
    from napari_vit3d.inference.engine import MULTISCALE

    seen = []
    real = usecases.segment_scan

    def recording(*args, **kwargs):
        seen.append(kwargs.get("scales"))
        out = real(*args, **kwargs)
        seen.append(out.labels.data.copy())
        return out

    monkeypatch.setattr(usecases, "segment_scan", recording)
    viewer = make_napari_viewer()
    open_sample(viewer)
    seg = dock(viewer, "1 Segment")
    assert seg.add_model(str(env.spec("tiny-robust")))
    seg.advanced.setChecked(True)
    seg.multiscale_check.setChecked(True)
    torch.manual_seed(0)
    segment_and_wait(qtbot, seg)
    assert seen[0] == MULTISCALE and not env.messages["error"], env.messages
    assert seg.progress.format() == "%p %"
    layer = viewer.layers["colin27_t1 · labels"]
    rec = run_of(layer)
    np.testing.assert_array_equal(rec.model_labels.data, seen[1])          # the labels the run returned
    np.testing.assert_array_equal(np.asarray(layer.data), rec.model_labels_display())
    assert rec.settings["multiscale"] is True
    seg.multiscale_check.setChecked(False)
    seg.ask_replace = lambda _name: "yes"
    segment_and_wait(qtbot, seg)
    assert seen[2] is None and seg.progress.format() == "%v / %m windows"
