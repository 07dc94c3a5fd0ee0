"""The napari workflow in a real viewer: sample → Segment → Explain (click) → paint → changes → Export.

A tiny random SegFormer3D (4 mm model spacing, 32³ windows) keeps the run to seconds; what is checked
is the GUI contract, not the model's quality: layers lie on the scan, a click gives an aligned map,
an edit shows in the changes layer and survives export at the same world position (nibabel).
"""

from __future__ import annotations

import json
import types

import _gui_helpers
import nibabel as nib
import numpy as np
import pytest
import torch
from _gui_helpers import dock, open_sample, segment_and_wait, tiny_spec, wait_for
from napari.layers import Image, Labels, Points

from napari_vit3d.gui import autosave, recovery
from napari_vit3d.gui._layers import volume_from_layer
from napari_vit3d.gui.session import run_of
from napari_vit3d.review.export import export_review


@pytest.fixture
def gui_env(tmp_path, monkeypatch):
    """Private model registry and recovery folder; notifications recorded; ``spec(name)`` writes the tiny model's spec."""
    return _gui_helpers.gui_env(tmp_path, monkeypatch, tiny_spec("tiny-gui-test"))


def world_to_file_voxel(img, world_sar):
    ras = np.asarray(world_sar, float)[::-1]  # napari world is (S, A, R)
    return tuple(int(v) for v in np.round(nib.affines.apply_affine(np.linalg.inv(img.affine), ras)))


def test_segment_explain_correct_export(make_napari_viewer, qtbot, gui_env, monkeypatch):
    viewer = make_napari_viewer()
    scan = open_sample(viewer)

    seg = dock(viewer, "1 Segment")
    assert seg.add_model(str(gui_env.spec("tiny-gui-test"))), gui_env.messages
    assert seg.model_combo.currentText() == "tiny-gui-test"
    assert seg.scan_combo.currentText() == "colin27_t1"
    torch.manual_seed(0)  # the tiny model has random weights: make its output the same every run
    segment_and_wait(qtbot, seg)
    assert not gui_env.messages["error"]

    # -- a labels layer lying exactly on the scan, with the model's names and colours
    labels = viewer.layers["colin27_t1 · labels"]
    assert isinstance(labels, Labels)
    assert labels.data.shape == scan.data.shape
    np.testing.assert_allclose(labels.extent.world, scan.extent.world)
    np.testing.assert_allclose(labels.affine.affine_matrix, scan.affine.affine_matrix)
    np.testing.assert_allclose(labels.scale, scan.scale)
    np.testing.assert_allclose(labels.translate, scan.translate)
    np.testing.assert_allclose(labels.colormap.map(np.array([2]))[0], [0.2, 0.6, 1.0, 1.0], atol=1e-6)
    assert list(labels.features["name"]) == ["background", "tissue A", "tissue B"]
    assert labels.editable
    assert isinstance(viewer.layers["colin27_t1 · uncertainty"], Image)
    model_output = run_of(labels).model_labels_display().copy()

    # -- Explain: a click (press + release, no drag) on a voxel sets the query and shows an aligned map
    ex = dock(viewer, "2 Explain")
    assert ex.model_combo.currentText() == "tiny-gui-test"  # the model that segmented this scan
    ex.method_combo.setCurrentIndex(0)  # point attention
    ex.layer_spin.setValue(0)  # the first stage: finest tokens, so two clicks have different rows
    viewer.layers.selection.active = scan
    voxel_display = (90, 110, 95)
    world = np.asarray(scan.data_to_world(voxel_display))
    press = types.SimpleNamespace(position=tuple(world), pos=(200, 200), type="mouse_press", modifiers=(), button=1)
    gen = ex._on_mouse(viewer, press)
    next(gen)
    press.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(gen)
    wait_for(qtbot, lambda: not ex.busy and ex.last_layer is not None)
    att = viewer.layers["colin27_t1 · point attention"]
    assert att.blending == "additive"
    np.testing.assert_allclose(att.extent.world, scan.extent.world)
    assert att.contrast_limits[1] > att.contrast_limits[0]
    assert np.nanmax(att.data) > 0
    query = viewer.layers["colin27_t1 · query"]
    assert isinstance(query, Points)
    np.testing.assert_allclose(query.data[0], world, atol=1e-6)  # the marker sits on the clicked voxel centre
    # the engine was asked about that voxel: its world position (RAS) is in the map's metadata
    np.testing.assert_allclose(att.metadata["vit3d_map"]["query"]["world_mm"], world[::-1], atol=1e-3)
    first_map = np.array(att.data, copy=True)
    # a drag (the mouse moves while pressed) pans: it is not a query
    drag = types.SimpleNamespace(position=tuple(world), pos=(10, 10), type="mouse_press", modifiers=(), button=1)
    gen = ex._on_mouse(viewer, drag)
    next(gen)
    drag.type, drag.pos = "mouse_move", (60, 60)
    with pytest.raises(StopIteration):
        next(gen)
    assert not ex.busy
    # a second click elsewhere updates the same layer in place
    ex.click_world(scan.data_to_world((90, 60, 40)))
    wait_for(qtbot, lambda: not ex.busy)
    assert viewer.layers["colin27_t1 · point attention"] is att
    assert not np.array_equal(att.data, first_map)

    # -- Review: paint a stroke where the model said background; the changes layer shows it
    review = dock(viewer, "3 Review and correct")
    review.labels_combo.select(labels.name)
    z = int(np.argmax((model_output == 0).sum(axis=(1, 2))))  # the slice with most model background
    bg = np.argwhere(model_output[z] == 0)
    assert len(bg), "the model labelled every voxel: no background to paint on"
    target = (z, *(int(v) for v in bg[len(bg) // 2]))
    viewer.dims.set_point(0, scan.data_to_world(target)[0])
    labels.brush_size = 3
    labels.paint(target, 2)
    wait_for(qtbot, lambda: "colin27_t1 · labels · changes" in viewer.layers
             and viewer.layers["colin27_t1 · labels · changes"].data[target] == 1)
    changes = viewer.layers["colin27_t1 · labels · changes"]
    np.testing.assert_allclose(changes.extent.world, scan.extent.world)
    assert "added" in review.diff_summary.text()
    vols = review.volumes_ml()
    assert set(vols) == {1, 2}
    assert vols[2] == pytest.approx(np.count_nonzero(labels.data == 2) * 1e-3, abs=0.01)  # 1 mm voxels

    # a correction is ONE undo step
    painted = np.array(labels.data, copy=True)
    review.corrections.remove_small()
    wait_for(qtbot, lambda: not review.corrections.busy)
    assert "voxel(s) changed" in review.status.text()
    after = np.array(labels.data, copy=True)
    review.corrections.undo()
    np.testing.assert_array_equal(labels.data, painted)
    review.corrections.redo()
    np.testing.assert_array_equal(labels.data, after)
    review.corrections.undo()
    assert labels.data[target] == 2

    # interpolation between two drawn slices (along the axis being scrolled: display axis 0 here) of a
    # label the model does not have (the engine fills gaps between the slices where the label is drawn)
    idx = np.mgrid[80:85, 5:15, 5:15].reshape(3, -1)
    labels.data_setitem(tuple(idx), np.where(np.isin(idx[0], (80, 84)), 3, 0).astype(labels.data.dtype))
    labels.selected_label = 3
    review.refresh(force=True)
    assert viewer.dims.not_displayed == (0,)
    review.corrections.interpolate()
    wait_for(qtbot, lambda: not review.corrections.busy)
    assert labels.data[82, 10, 10] == 3 and labels.data[81, 6, 13] == 3
    assert "label 3" in review.status.text()
    review.corrections.undo()
    assert labels.data[82, 10, 10] == 0
    labels.data_setitem(tuple(idx), np.zeros(idx.shape[1], labels.data.dtype))  # erase the test squares

    # uncertainty: jump to the most uncertain region
    rec = run_of(labels)
    assert rec.regions
    w = review.next_region()
    np.testing.assert_allclose(viewer.dims.point[-3:], w, atol=1.0)

    # -- autosave: a recovery file holds the painted labels
    saver = autosave.saver_of(labels)
    saver.pending = max(saver.pending, 1)
    saver.save_now()
    wait_for(qtbot, lambda: saver._worker is None and saver.saves >= 1)
    saved, saved_info = recovery.load_recovery(rec.scan_hash)
    np.testing.assert_array_equal(saved, labels.data)
    assert saved_info["model"] == "tiny-gui-test"

    # -- Export: NIfTI on the source grid; the painted voxel is at the same world position
    exp = dock(viewer, "4 Export")
    exp.labels_combo.select(labels.name)
    out = gui_env.tmp / "export"
    out.mkdir()
    exp.folder.setText(str(out))
    exp.stem.setText("colin27_corrected")
    exp.maps_check.setChecked(True)
    exp.export()
    wait_for(qtbot, lambda: not exp.busy)
    assert not gui_env.messages["error"], gui_env.messages["error"]
    img = nib.load(out / "colin27_corrected.nii.gz")
    src = nib.load(scan.metadata["vit3d"]["source_path"])
    np.testing.assert_allclose(img.affine, src.affine)
    assert img.shape == src.shape
    assert np.issubdtype(img.get_data_dtype(), np.integer)
    data = np.asarray(img.dataobj)
    painted_world = scan.data_to_world(target)
    assert data[world_to_file_voxel(img, painted_world)] == 2
    assert np.count_nonzero(data == 2) == np.count_nonzero(labels.data == 2)
    table = json.loads((out / "colin27_corrected.labels.json").read_text())
    assert [l["name"] for l in table["labels"]] == ["background", "tissue A", "tissue B"]
    assert '"tissue B"' in (out / "colin27_corrected.itksnap.txt").read_text()
    prov = json.loads((out / "colin27_corrected.provenance.json").read_text())
    assert prov["scan"]["content_sha256"] == rec.scan_hash
    assert prov["model"]["name"] == "tiny-gui-test"
    edit_b = next(e for e in prov["edits"] if e["label"] == 2)
    assert edit_b["voxels_added"] > 0
    assert (out / "colin27_t1_point_attention.nii.gz").is_file()
    assert recovery.load_recovery(rec.scan_hash) is None  # exported: the recovery file is gone

    # the widget wrote exactly what the export use case (review.export.export_review) writes for the same
    # inputs: the run's scan, the corrected labels, the model's output and its provenance
    ref = gui_env.tmp / "reference"
    ref.mkdir()
    export_review(ref / "colin27_corrected.nii.gz", rec.scan_volume, volume_from_layer(labels),
                  model_labels=rec.model_labels.data, label_table=rec.label_table,
                  model_info={"name": rec.model_name, "checkpoint_sha256": rec.weights_sha256, "device": rec.device},
                  settings={**rec.settings, "started": rec.started, "finished": rec.finished})
    for suffix in (".labels.json", ".itksnap.txt"):
        assert (out / f"colin27_corrected{suffix}").read_bytes() == (ref / f"colin27_corrected{suffix}").read_bytes()
    ours, theirs = (json.loads((d / "colin27_corrected.provenance.json").read_text()) for d in (out, ref))
    ours.pop("date"), theirs.pop("date")
    assert ours == theirs
    ref_img = nib.load(ref / "colin27_corrected.nii.gz")
    assert img.header.binaryblock == ref_img.header.binaryblock
    np.testing.assert_array_equal(data, np.asarray(ref_img.dataobj))

    # -- running again asks first; "cancel" keeps everything as it is
    asked = []
    monkeypatch.setattr(seg, "ask_replace", lambda name: asked.append(name) or "cancel")
    assert seg.run() is None
    assert asked == ["colin27_t1 · labels"]
    assert labels.data[target] == 2

    # -- DINO heads with the bundled DINO ViT: one map per head on a slider, aligned; masks → labels
    ex.model_combo.setCurrentText("dino-vit-brain")
    ex.method_combo.setCurrentIndex(2)
    ex.layer_spin.setValue(-1)
    ex.click_world(world)
    wait_for(qtbot, lambda: not ex.busy)
    assert not gui_env.messages["error"], gui_env.messages["error"]
    heads = viewer.layers["colin27_t1 · dino heads"]
    n_heads = heads.metadata["vit3d_map"]["n_heads"]
    assert heads.data.shape == (n_heads, *scan.data.shape)
    np.testing.assert_allclose(heads.extent.world[:, -3:], scan.extent.world)
    ex.masks_to_labels()
    wait_for(qtbot, lambda: not ex.busy)
    assert not gui_env.messages["error"], gui_env.messages["error"]
    masks = viewer.layers["colin27_t1 · dino head masks"]
    assert isinstance(masks, Labels) and masks.data.shape == scan.data.shape
    assert 0 < masks.data.max() <= n_heads
    assert heads.metadata["vit3d_map"]["coverage"] == "scan" and (heads.data > 0).all()   # over the whole head

    # -- "similar tissue": cosine similarity of frozen DINO features to the clicked patch, whole scan
    ex.method_combo.setCurrentIndex(ex.method_combo.findData("similar"))
    ex.click_world(world)
    wait_for(qtbot, lambda: not ex.busy)
    assert not gui_env.messages["error"], gui_env.messages["error"]
    sim = viewer.layers["colin27_t1 · similar tissue"]
    assert sim.data.shape == scan.data.shape
    np.testing.assert_allclose(sim.extent.world, scan.extent.world)
    assert np.isfinite(sim.data).all() and -1.0 - 1e-5 <= sim.data.min() and sim.data.max() <= 1.0 + 1e-5
    clicked = tuple(int(v) for v in ex.query_voxel)
    assert sim.data[clicked] > np.median(sim.data)     # the clicked tissue is more alike than the typical patch
    wait_for(qtbot, lambda: not review.refreshing)  # no worker left running when the viewer closes


def test_headless_demo_pipeline_segments_and_explains(make_napari_viewer, gui_env):
    """What ``make demo`` runs without a display (``gui.demo_pipeline.run_demo_pipeline``), with the tiny model."""
    from napari_vit3d.gui.demo_pipeline import dock_widgets, run_demo_pipeline

    viewer = make_napari_viewer()
    open_sample(viewer)
    widgets = dock_widgets(viewer)
    assert widgets["segment"].add_model(str(gui_env.spec("tiny-gui-test"))), gui_env.messages
    torch.manual_seed(0)
    out = run_demo_pipeline(viewer, model="tiny-gui-test", docked=None)
    assert isinstance(out["labels"], Labels) and isinstance(out["map"], Image)
    np.testing.assert_allclose(out["map"].extent.world, viewer.layers["colin27_t1"].extent.world, atol=1e-6)
    assert not gui_env.messages["error"], gui_env.messages
