"""Review and correct → "Compare with another model" in a real viewer.

Two tiny random SegFormer3D models (different seeds) keep the run to seconds. The disagreement layer
is checked against a reference computed here with numpy from the two models' own label layers
(made by the Segment widget), not with ``review.compare``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _gui_helpers import add_then_break, dock, gui_env, open_sample, segment_and_wait, tiny_spec, wait_for
from napari.layers import Labels

from napari_vit3d.gui import session
from napari_vit3d.gui.compare_panel import COMPARE_COLORS
from napari_vit3d.gui.session import run_of
from napari_vit3d.io import keys

DISAGREEMENT = "colin27_t1 · disagreement"


@pytest.fixture
def env(tmp_path, monkeypatch):
    env = gui_env(tmp_path, monkeypatch, tiny_spec("tiny-compare"))
    session.forget_models()  # the models below are random: load them afresh under this test's seeds
    yield env
    session.forget_models()


def segment_with(seg, qtbot, model, seed):
    seg.model_combo.setCurrentText(model)
    assert seg.model_combo.currentText() == model
    torch.manual_seed(seed)  # random weights: the seed makes the two models differ, and each run repeatable
    assert segment_and_wait(qtbot, seg) is not None


def reference_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """0 agree, 1 only A, 2 only B, 3 different labels — straight from the definition."""
    out = np.zeros(a.shape, np.uint8)
    out[(a != b) & (a != 0) & (b == 0)] = 1
    out[(a != b) & (a == 0) & (b != 0)] = 2
    out[(a != b) & (a != 0) & (b != 0)] = 3
    return out


def test_compare_with_another_model(make_napari_viewer, qtbot, env, monkeypatch):
    viewer = make_napari_viewer()
    scan = open_sample(viewer)
    seg = dock(viewer, "1 Segment")
    assert seg.add_model(str(env.spec("tiny-compare-a")))
    assert seg.add_model(str(env.spec("tiny-compare-b")))
    # a model whose weights file went bad after it was added
    add_then_break(seg, env, "tiny-compare-broken")
    seg.model_combo.setCurrentText("tiny-compare-a")

    # model A segments the scan; model B too, into a second layer ("keep both"): the reference's inputs
    segment_with(seg, qtbot, "tiny-compare-a", seed=0)
    labels = viewer.layers["colin27_t1 · labels"]
    monkeypatch.setattr(seg, "ask_replace", lambda name: "no")
    segment_with(seg, qtbot, "tiny-compare-b", seed=1)
    labels_b = viewer.layers["colin27_t1 · labels (2)"]
    assert not env.messages["error"], env.messages["error"]
    a = run_of(labels).model_labels_display()
    b = run_of(labels_b).model_labels_display()
    assert run_of(labels).model_name == "tiny-compare-a" and run_of(labels_b).model_name == "tiny-compare-b"
    expected = reference_codes(a, b)
    assert np.count_nonzero(expected), "the two random models agree everywhere: the test would show nothing"

    review = dock(viewer, "3 Review and correct")
    review.labels_combo.select(labels.name)
    # the same model list as the Segment widget; model B defaults to another model than A
    assert [review.compare_model_combo.itemText(i) for i in range(review.compare_model_combo.count())] == \
        [seg.model_combo.itemText(i) for i in range(seg.model_combo.count())]
    assert review.compare_model_combo.currentText() != "tiny-compare-a"

    # -- Cancel: nothing is added
    review.compare_model_combo.setCurrentText("tiny-compare-b")
    assert review.compare() is not None
    review.compare_panel.cancel()
    wait_for(qtbot, lambda: not review.comparing)
    assert DISAGREEMENT not in viewer.layers
    assert "cancelled" in review.status.text()
    assert review.compare_panel.compare_button.isEnabled()
    assert not env.messages["error"], env.messages["error"]

    # -- a broken model file: one plain message, nothing added
    review.compare_model_combo.setCurrentText("tiny-compare-broken")
    assert review.compare() is not None
    wait_for(qtbot, lambda: not review.comparing)
    assert DISAGREEMENT not in viewer.layers
    assert len(env.messages["error"]) == 1
    msg = env.messages["error"][0]
    assert msg.startswith("Compare: ") and "tiny-compare-broken" in msg and "Traceback" not in msg
    env.messages["error"].clear()

    # -- A vs B: a disagreement layer on the scan, equal to the numpy reference
    review.compare_model_combo.setCurrentText("tiny-compare-b")
    review.compare()
    wait_for(qtbot, lambda: not review.comparing)
    assert not env.messages["error"], env.messages["error"]
    dis = viewer.layers[DISAGREEMENT]
    assert isinstance(dis, Labels) and keys.COMPARE in dis.metadata
    np.testing.assert_array_equal(dis.data, expected)
    np.testing.assert_allclose(dis.extent.world, scan.extent.world)
    np.testing.assert_allclose(dis.affine.affine_matrix, scan.affine.affine_matrix)
    np.testing.assert_allclose(dis.scale, scan.scale)
    np.testing.assert_allclose(dis.translate, scan.translate)
    assert not dis.editable
    for code in (1, 2, 3):
        np.testing.assert_allclose(dis.colormap.map(np.array([code]))[0], COMPARE_COLORS[code], atol=1e-6)
    assert list(dis.features["name"]) == ["agree", "only A", "only B", "different labels"]
    assert dis.name not in [review.labels_combo.itemText(i) for i in range(review.labels_combo.count())]
    assert viewer.layers.selection.active is labels  # painting goes on in the labels, not the derived map

    # the agreement text: who A and B are, one row per label with its Dice (numpy reference)
    text = review.compare_panel.text.text()
    assert "A = tiny-compare-a" in text and "B = tiny-compare-b" in text
    for lab, name in ((1, "tissue A"), (2, "tissue B")):
        ma, mb = a == lab, b == lab
        ref_dice = 2 * np.count_nonzero(ma & mb) / (np.count_nonzero(ma) + np.count_nonzero(mb))
        row = next(line for line in text.splitlines() if line.startswith(f"{lab} "))
        assert name in row and f"{ref_dice:.4f}" in row

    # -- running again replaces the derived layer (no second one), even after the user hid it
    dis.visible = False
    review.compare()
    wait_for(qtbot, lambda: not review.comparing)
    assert viewer.layers[DISAGREEMENT] is dis and dis.visible
    assert [l.name for l in viewer.layers if "disagreement" in l.name] == [DISAGREEMENT]
    np.testing.assert_array_equal(dis.data, expected)
    assert not env.messages["error"], env.messages["error"]
    wait_for(qtbot, lambda: not review.refreshing)  # no worker left running when the viewer closes
