"""Corrective clicks are local edits: only the region the click is about changes (``PromptSession``).

The network is replaced by a scripted one (its answer on the crop is a known scan-space mask sampled
onto the crop), so the test checks the session's rule, not the model's quality.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_vit3d.io.volume import Volume
from napari_vit3d.prompt import PromptSession, load_prompt_model
from napari_vit3d.prompt.crop import sample_scan


def _ball(shape, centre, r):
    g = np.indices(shape).astype(float)
    return sum((g[i] - centre[i]) ** 2 for i in range(3)) <= r * r


@pytest.fixture(scope="module")
def model():
    return load_prompt_model()


@pytest.fixture()
def scene():
    shape = (48, 48, 48)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = (-20.0, 5.0, 11.0)
    data = np.random.default_rng(0).normal(100, 10, shape).astype(np.float32)
    a, b = _ball(shape, (16, 24, 24), 6), _ball(shape, (34, 24, 24), 5)
    bump = _ball(shape, (16, 24, 32), 4) & ~a
    return Volume(data=data, affine=aff, name="scene"), a, b, bump


def _scripted(session, answer):
    def forward(crop):
        session._last_input = None
        return sample_scan(answer.astype(np.float32), session.volume.affine, crop, order=0)
    session._forward = forward


def test_positive_click_adds_only_its_region_and_keeps_the_rest(model, scene):
    vol, a, b, bump = scene
    s = PromptSession(model, vol)
    s.set_previous(a | b)
    _scripted(s, a | bump)                       # the network would also drop B and keep A as it is
    s.add_point(voxel=(16, 24, 32), positive=True)
    got = s.predict().mask.data > 0
    assert (got >= (a | b)).all()                         # nothing removed, B kept: the click was about the bump
    added = got & ~(a | b)
    assert added.sum() >= 0.6 * bump.sum()                # the bump came in (the crop's resampling blurs a rim)
    assert not (added & ~ndimage.binary_dilation(bump)).any()   # and nothing else


def test_negative_click_removes_only_its_region(model, scene):
    vol, a, b, bump = scene
    s = PromptSession(model, vol)
    s.set_previous(a | b)
    shrunk = a & ~_ball(a.shape, (16, 24, 18), 3)          # the network would also erode A
    _scripted(s, shrunk)
    s.add_point(voxel=(34, 24, 24), positive=False)
    got = s.predict().mask.data > 0
    assert not (got & b).any() and (got >= a).all() and not (got & ~(a | b)).any()   # B gone, A untouched


def test_a_click_the_network_ignores_changes_nothing(model, scene):
    vol, a, b, _ = scene
    s = PromptSession(model, vol)
    s.set_previous(a | b)
    _scripted(s, a | b)
    s.add_point(voxel=(40, 10, 10), positive=True)
    np.testing.assert_array_equal(s.predict().mask.data > 0, a | b)


def test_global_edits_let_the_network_redraw(model, scene):
    vol, a, b, bump = scene
    s = PromptSession(model, vol, local_edits=False)
    s.set_previous(a | b)
    _scripted(s, a | bump)
    s.add_point(voxel=(16, 24, 32), positive=True)
    got = s.predict().mask.data > 0
    assert not (got & b).any() and got[16, 24, 32]          # B lost with the old rule, the bump in


def test_a_click_on_a_mask_wider_than_the_second_level_is_edited_on_the_finest_crop_around_it(model):
    """Correcting a whole-brain-sized mask: the click is predicted on the finest level's crop centred on it and
    never zooms out, even when the network's answer fills the crop; the change stays inside that crop. A small
    mask with the same answer still zooms out (the rule is only for masks wider than ``large_edit_mm``), and so
    does a wide object that the clicks are still growing (the rule is for a segmentation given to correct)."""
    shape = (170, 170, 170)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = (-85.0, -90.0, -70.0)
    vol = Volume(data=np.random.default_rng(1).normal(100, 10, shape).astype(np.float32), affine=aff, name="big")
    click = np.array([85, 85, 158])                       # just outside the big mask
    for radius, local in ((70, True), (12, False)):
        s = PromptSession(model, vol)
        assert 2 * radius > s.large_edit_mm if local else 2 * radius < s.large_edit_mm
        previous = _ball(shape, (85, 85, 85), radius)
        s.set_previous(previous)
        _scripted(s, np.ones(shape, bool))                # the network's answer: everything
        s.add_point(voxel=tuple(int(v) for v in click), positive=True)
        assert s.large_edit() is local
        res = s.predict()
        if local:
            assert res.levels_tried == [s.levels[0]]
            world = aff[:3, :3] @ click + aff[:3, 3]
            np.testing.assert_allclose(res.crop.centre_world, world, atol=s.levels[0])
            added = (res.mask.data > 0) & ~previous
            assert added.any()
            idx = np.argwhere(added)
            assert np.all(np.abs(idx - click) <= s.size[0] // 2 + 1)   # inside the 64 mm crop around the click
        else:
            assert len(res.levels_tried) > 1                  # the answer reached the faces: zoomed out
    # an object the clicks are still growing (no set_previous) keeps the zoom rule: the crop holds it, however wide
    s = PromptSession(model, vol)
    s.add_point(voxel=(85, 85, 85), positive=True)
    s.current = _ball(shape, (85, 85, 85), 70)
    s.add_point(voxel=tuple(int(v) for v in click), positive=True)
    assert not s.large_edit()
    _scripted(s, np.ones(shape, bool))
    assert s.predict().crop.spacing == s.levels[-1]
