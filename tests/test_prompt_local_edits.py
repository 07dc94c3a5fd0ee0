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
