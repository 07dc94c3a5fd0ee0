"""Corrective clicks are local edits: only the region the click is about changes (``PromptSession``).

The network is replaced by a scripted one (its answer on the crop is a known scan-space mask sampled
onto the crop), so the test checks the session's rule, not the model's quality.
"""

from __future__ import annotations

import numpy as np
import pytest
from nibabel.affines import apply_affine
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


def _brute_depth_mm(mask, click, aff, positive):
    """Distance (mm) from the click voxel to the nearest voxel of the mask (positive) or background (negative),
    by brute force over voxel centres mapped with nibabel's apply_affine."""
    pts = np.argwhere(mask if positive else ~mask)
    return float(np.min(np.linalg.norm(apply_affine(aff, pts) - apply_affine(aff, click), axis=1)))


def _dist_mm(shape, aff, click):
    """Distance (mm) from the click voxel's centre to every voxel centre, through nibabel's apply_affine."""
    pts = apply_affine(aff, np.indices(shape).reshape(3, -1).T)
    return np.linalg.norm(pts - apply_affine(aff, click), axis=1).reshape(shape)


@pytest.mark.parametrize("positive", [True, False])
def test_a_click_on_a_mask_wider_than_the_second_level_changes_it_only_within_the_clicks_reach(model, positive):
    """Correcting a whole-brain-sized mask: the click is predicted on the crop holding the whole mask and the
    change is kept within twice the click's depth plus two voxels of it, even when the
    network's answer would change everything; a small mask with the same answer is not limited (the rule is
    only for masks wider than ``large_edit_mm``), nor is a wide object the clicks are still growing."""
    shape = (170, 170, 170)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = (-85.0, -90.0, -70.0)
    vol = Volume(data=np.random.default_rng(1).normal(100, 10, shape).astype(np.float32), affine=aff, name="big")
    answer = np.ones(shape, bool) if positive else np.zeros(shape, bool)   # the network: change everything
    # (mask radius, mask centre, click): a positive click 9 voxels outside the mask, a negative one inside it
    cases = [(70, (85, 85, 85), (85, 85, 164) if positive else (85, 85, 147)),
             (12, (85, 85, 143), (85, 85, 164) if positive else (85, 85, 153))]
    for radius, centre, click in cases:
        local = radius == 70
        click = np.array(click)
        s = PromptSession(model, vol)
        assert 2 * radius > s.large_edit_mm if local else 2 * radius < s.large_edit_mm
        previous = _ball(shape, centre, radius)
        s.set_previous(previous)
        _scripted(s, answer)
        s.add_point(voxel=tuple(int(v) for v in click), positive=positive)
        assert s.large_edit() is local
        reach_before = s.reach_mm(s.clicks[-1])
        res = s.predict()
        got = res.mask.data > 0
        changed = got != previous
        assert changed[tuple(click)]
        dist = _dist_mm(shape, aff, click)
        if local:
            depth = _brute_depth_mm(previous, click, aff, positive)
            reach = 2 * depth + 2.0
            assert reach_before == pytest.approx(reach, abs=1e-3)
            # the crop: centred on the click, the coarsest level whose voxels are no larger than the depth
            assert res.levels_tried == [max(mm for mm in s.levels if mm <= depth)]
            np.testing.assert_allclose(res.crop.centre_world, apply_affine(aff, click), atol=1e-6)
            # exactly the voxels within reach that the answer changes (away from the scan's faces, where the
            # scripted answer mapped back from a 4.5 mm crop that overhangs the scan fades out)
            inner = (slice(3, -3),) * 3
            expect = (dist <= reach) & (~previous if positive else previous)
            np.testing.assert_array_equal(changed[inner], expect[inner])
            assert not changed[dist > reach].any()
        elif positive:
            assert changed[dist > 40].any()                     # not limited to the click's surroundings
        else:
            assert not got.any()                                # the whole small mask removed, 22 mm away too


def test_a_wide_object_still_grown_by_clicks_keeps_the_zoom_rule(model):
    """The reach is for a segmentation given to correct: an object the clicks are still growing (no
    set_previous) is followed by the crop however wide it is."""
    shape = (170, 170, 170)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    vol = Volume(data=np.random.default_rng(1).normal(100, 10, shape).astype(np.float32), affine=aff, name="big")
    s = PromptSession(model, vol)
    s.add_point(voxel=(85, 85, 85), positive=True)
    s.current = _ball(shape, (85, 85, 85), 70)
    s.add_point(voxel=(85, 85, 164), positive=True)
    assert not s.large_edit()
    _scripted(s, np.ones(shape, bool))
    assert s.predict().crop.spacing == s.levels[-1]


def test_a_thin_error_on_a_wide_mask_is_edited_on_the_finest_crop(model):
    """A click 1 mm outside a whole-brain-sized mask (a border drawn slightly too tight) is predicted at the
    finest level, whose voxels can draw a 1 mm change; its change stays within 2 × 1 + 2 mm of the click."""
    shape = (170, 170, 170)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    vol = Volume(data=np.random.default_rng(1).normal(100, 10, shape).astype(np.float32), affine=aff, name="big")
    previous = _ball(shape, (85, 85, 85), 70)
    s = PromptSession(model, vol)
    s.set_previous(previous)
    _scripted(s, np.ones(shape, bool))
    s.add_point(voxel=(85, 85, 156), positive=True)
    assert s.click_depth_mm(s.clicks[-1]) == pytest.approx(1.0)
    res = s.predict()
    assert res.levels_tried == [s.levels[0]]
    added = np.argwhere((res.mask.data > 0) & ~previous)
    assert len(added) and np.all(np.linalg.norm(added - (85, 85, 156), axis=1) <= 4.0 + 1e-6)


def test_a_far_positive_click_on_an_object_being_grown_asks_for_a_coarse_crop_and_keeps_within_reach(model):
    """Growing an object by clicks: a positive click 30 mm from the current mask is predicted at least at the
    coarsest level whose voxels are at most a quarter of that (4.5 mm for 7.5 mm) and, since that is coarser
    than the crop the prompts alone would get, its change stays within 2 × 30 + 2 mm of the click; a click
    2 mm from the mask gets the usual crop and no limit."""
    shape = (170, 170, 170)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    vol = Volume(data=np.random.default_rng(1).normal(100, 10, shape).astype(np.float32), affine=aff, name="big")
    for click, far in (((85, 85, 125), True), ((85, 85, 97), False)):
        s = PromptSession(model, vol)
        s.add_point(voxel=(85, 85, 85), positive=True)
        s.current = _ball(shape, (85, 85, 85), 10)
        previous = s.current.copy()
        s.add_point(voxel=click, positive=True)
        depth = _brute_depth_mm(previous, np.array(click), aff, True)
        usual, _ = s.choose_crop()
        grow = s.grow_level()
        _scripted(s, np.ones(shape, bool))
        res = s.predict()
        changed = (res.mask.data > 0) != previous
        assert changed[click]
        if far:
            assert depth == pytest.approx(30.0)
            assert grow == len(s.levels) - 1 > usual and res.levels_tried[0] == s.levels[-1]
            assert not changed[_dist_mm(shape, aff, click) > 2 * depth + 2.0].any()
        else:
            assert grow <= usual and res.levels_tried[0] == s.levels[usual]
            assert changed[_dist_mm(shape, aff, click) > 2 * depth + 2.0 + 10].any()     # not limited to the reach
