"""Click to segment in a real viewer: Ctrl+click → preview on the scan → Accept = one undo step.

Uses the bundled promptable model on the Colin27 sample (a 64³ crop: a fraction of a second per
click on CPU). What is checked is the GUI contract: the preview lies on the scan grid where the
engine put it, a negative click is a second prediction, Accept writes only the selected label in
one undo step, Reset clears the prompts, and the Explain widget explains the last click with the
promptable network.
"""

from __future__ import annotations

import _gui_helpers
import numpy as np
import pytest
from _gui_helpers import dock, open_sample, tiny_spec, wait_for
from napari.layers import Labels

from napari_vit3d.gui.session import prompt_sessions


@pytest.fixture
def gui_env(tmp_path, monkeypatch):
    prompt_sessions.clear()
    return _gui_helpers.gui_env(tmp_path, monkeypatch, tiny_spec("tiny-gui-test"))


class _Event:
    """A stand-in for napari's mouse event with the fields the panel reads."""

    def __init__(self, position, modifiers):
        self.position, self.modifiers, self.button, self.type = position, modifiers, 1, "mouse_press"


def _world_of_voxel(scan, ijk):
    from napari_vit3d.gui._layers import file_voxel_to_world

    return file_voxel_to_world(scan, ijk)


def test_ctrl_click_preview_accept_undo(make_napari_viewer, qtbot, gui_env):
    viewer = make_napari_viewer()
    scan = open_sample(viewer)
    review = dock(viewer, "3 Review and correct")
    panel = review.prompt_panel
    panel.active_check.setChecked(True)
    assert panel._on_mouse in viewer.mouse_drag_callbacks

    # a labels layer with an existing label 2 region that Accept must not overwrite
    from napari_vit3d.gui._layers import layer_kwargs, volume_from_layer

    vol = volume_from_layer(scan)
    data, kw = layer_kwargs(vol.with_data(np.zeros(vol.spatial_shape, np.uint8)), kind="labels")
    data[:, :, :] = 0
    labels = viewer.add_labels(data, name="colin27_t1 · labels", **kw)
    review.labels_combo.setCurrentText(labels.name)

    # the right lateral ventricle of the sample, file voxel (101, 116, 93) (RAS ≈ (11, -9, 21) mm)
    ijk = (101, 116, 93)
    world = _world_of_voxel(scan, ijk)
    panel._on_mouse(viewer, _Event(world, ("Control",)))
    wait_for(qtbot, lambda: not panel.busy and panel.last_result is not None)
    assert not gui_env.messages["error"], gui_env.messages
    preview = viewer.layers["colin27_t1 · prompt preview"]
    assert isinstance(preview, Labels) and preview.data.shape == scan.data.shape
    np.testing.assert_allclose(preview.affine.affine_matrix, scan.affine.affine_matrix)
    # the preview is the engine's mask, displayed exactly like the scan
    from napari_vit3d.io.layers import volume_to_layer_data

    expect = volume_to_layer_data(panel.last_result.mask, kind="labels")[0][0]
    assert np.array_equal(preview.data, expect)
    assert preview.data.any()
    n1 = int(preview.data.sum())
    pts = viewer.layers["colin27_t1 · prompt points"]
    assert len(pts.data) == 1
    export = dock(viewer, "4 Export")
    offered = [export.labels_combo.itemText(i) for i in range(export.labels_combo.count())]
    assert "colin27_t1 · prompt preview" not in offered and labels.name in offered   # a preview is not a result

    # a negative click elsewhere: a second prediction, two points
    far = _world_of_voxel(scan, (60, 150, 60))
    panel._on_mouse(viewer, _Event(far, ("Control", "Shift")))
    wait_for(qtbot, lambda: not panel.busy and len(prompt_sessions["colin27_t1"].clicks) == 2)
    assert len(viewer.layers["colin27_t1 · prompt points"].data) == 2
    assert not prompt_sessions["colin27_t1"].clicks[1].positive

    # plain clicks (no Ctrl) are not prompts
    panel._on_mouse(viewer, _Event(far, ()))
    assert not panel.busy and len(prompt_sessions["colin27_t1"].clicks) == 2

    # some voxels of the object already belong to label 2: Accept as label 1 must leave them alone
    obj = np.asarray(viewer.layers["colin27_t1 · prompt preview"].data) > 0
    keep = np.zeros_like(obj)
    idx = np.argwhere(obj)[:10]
    keep[tuple(idx.T)] = True
    with labels.block_history():
        labels.data_setitem(tuple(idx.T), 2)
    before = np.array(labels.data)
    labels.selected_label = 1
    n = panel.accept()
    after = np.array(labels.data)
    assert n == int(obj.sum()) - 10 and n > 0
    assert np.all(after[keep] == 2)
    assert np.all(after[obj & ~keep] == 1)
    assert np.array_equal(after[~obj], before[~obj])
    # Accept reset the prompts: preview and points are gone
    assert "colin27_t1 · prompt preview" not in viewer.layers
    assert "colin27_t1 · prompt points" not in viewer.layers
    labels.undo()                    # ONE undo step reverts the whole merge
    assert np.array_equal(np.array(labels.data), before)
    assert n1 > 0
    wait_for(qtbot, lambda: not review.refreshing)  # no worker left running when the viewer closes


def test_explain_the_last_click(make_napari_viewer, qtbot, gui_env):
    viewer = make_napari_viewer()
    scan = open_sample(viewer)
    review = dock(viewer, "3 Review and correct")
    explain = dock(viewer, "2 Explain")
    panel = review.prompt_panel
    panel.click(_world_of_voxel(scan, (101, 116, 93)), positive=True)
    wait_for(qtbot, lambda: not panel.busy and panel.last_result is not None)
    explain._refresh_models()
    from napari_vit3d.gui.explain_widget import PROMPT_ENTRY

    assert explain.model_combo.findText(PROMPT_ENTRY) >= 0
    explain.model_combo.setCurrentText(PROMPT_ENTRY)
    explain.method_combo.setCurrentIndex(explain.method_combo.findData("erf"))
    explain.set_query((101, 116, 93))
    explain.explain()
    wait_for(qtbot, lambda: not explain.busy)
    assert not gui_env.messages["error"], gui_env.messages
    lyr = viewer.layers["colin27_t1 · erf"]
    assert lyr.data.shape == scan.data.shape and lyr.metadata["vit3d_map"]["model"] == "segformer3d-prompt"
    assert float(np.max(lyr.data)) > 0
    wait_for(qtbot, lambda: not review.refreshing)


def test_correct_the_selected_label(make_napari_viewer, qtbot, gui_env):
    """*Correct the selected label*: the clicks start from the label (the engine's set_previous), the
    preview is the change from it, and Accept writes additions and removals in one undo step without
    touching another label or any voxel the clicks did not change."""
    from napari_vit3d.gui._layers import layer_kwargs, volume_from_layer
    from napari_vit3d.gui.prompt_panel import ADDED, REMOVED
    from napari_vit3d.io.layers import volume_to_layer_data

    viewer = make_napari_viewer()
    scan = open_sample(viewer)
    review = dock(viewer, "3 Review and correct")
    panel = review.prompt_panel
    vol = volume_from_layer(scan)
    # label 1 = a ball of 12 mm radius around the right lateral ventricle (file voxel (101, 116, 93)):
    # part ventricle, part white matter — a wrong label to correct; label 3 elsewhere must never change
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in vol.spatial_shape], indexing="ij")
    ball = (ii - 101) ** 2 + (jj - 116) ** 2 + (kk - 93) ** 2 <= 12 ** 2
    file_labels = np.zeros(vol.spatial_shape, np.uint8)
    file_labels[ball] = 1
    file_labels[20:30, 20:30, 20:30] = 3
    data, kw = layer_kwargs(vol.with_data(file_labels), kind="labels")
    labels = viewer.add_labels(data, name="colin27_t1 · labels", **kw)
    review.labels_combo.setCurrentText(labels.name)
    labels.selected_label = 1
    start_display = np.asarray(labels.data) == 1

    # no voxel of the selected label: a clear message, no prediction
    labels.selected_label = 2
    panel.correct_check.setChecked(True)
    assert panel.click(_world_of_voxel(scan, (101, 116, 93))) is None
    assert any("no voxel of label 2" in m for m in gui_env.messages["error"]), gui_env.messages
    gui_env.messages["error"].clear()
    labels.selected_label = 1

    # a negative click on white matter inside the ball, lateral to the ventricle
    panel.click(_world_of_voxel(scan, (110, 116, 93)), positive=False)
    wait_for(qtbot, lambda: not panel.busy and panel.last_result is not None)
    assert not gui_env.messages["error"], gui_env.messages
    sess = prompt_sessions["colin27_t1"]
    assert sess._given and len(sess.clicks) == 1
    preview = viewer.layers["colin27_t1 · prompt preview"]
    change = np.asarray(preview.data)
    # the preview is the engine's mask expressed as the change from the label, on the scan's grid
    mask = volume_to_layer_data(panel.last_result.mask, kind="labels")[0][0] > 0
    assert np.array_equal(change == ADDED, mask & ~start_display)
    assert np.array_equal(change == REMOVED, start_display & ~mask)
    assert np.count_nonzero(change == REMOVED) > 0          # the click removed part of the wrong ball

    # a positive click on the left lateral ventricle (outside the ball) adds it; the session goes on
    first = panel.last_result
    panel.click(_world_of_voxel(scan, (79, 116, 93)), positive=True)
    wait_for(qtbot, lambda: not panel.busy and panel.last_result is not first)
    assert len(sess.clicks) == 2 and not gui_env.messages["error"], gui_env.messages
    change = np.asarray(viewer.layers["colin27_t1 · prompt preview"].data)
    added, removed = change == ADDED, change == REMOVED
    assert added.any() and removed.any()
    assert not np.any(added & start_display) and np.all(start_display[removed])

    # meanwhile the user painted: label 3 over an added voxel, label 1 on a voxel the clicks did not touch
    a = tuple(np.argwhere(added)[0])
    untouched = tuple(np.argwhere((change == 0) & ~start_display & (np.asarray(labels.data) == 0))[0])
    with labels.block_history():
        labels.data_setitem(tuple(np.array([a, untouched]).T), np.array([3, 1], np.uint8))
    before = np.array(labels.data)
    n = panel.accept()
    after = np.array(labels.data)
    expect = before.copy()
    expect[added & (before == 0)] = 1
    expect[removed & (before == 1)] = 0
    assert np.array_equal(after, expect) and n == int(np.count_nonzero(after != before)) > 0
    assert after[a] == 3 and after[untouched] == 1              # the user's paint survives
    assert np.array_equal(after == 3, before == 3)              # another label is never touched
    assert "colin27_t1 · prompt preview" not in viewer.layers and panel._correcting is None
    labels.undo()                                               # ONE undo step reverts the whole change
    assert np.array_equal(np.array(labels.data), before)
    wait_for(qtbot, lambda: not review.refreshing)
