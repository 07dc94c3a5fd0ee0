"""Click-prompted segmentation engine: clicks, crops, sessions — geometry against nibabel's apply_affine.

The session is checked with two transparent "networks" whose answer is known in world space: one
returns the positive-click ball (where did the click land?), one thresholds the image channel (does
the mask come back on the scan grid where the bright sphere is?). The trained bundled model has its
own tests in test_prompt_model.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import _affine, _rot
from nibabel.affines import apply_affine
from scipy import ndimage

from napari_vit3d.errors import GeometryError, ModelError
from napari_vit3d.io.volume import Volume
from napari_vit3d.models.registry import LoadedModel
from napari_vit3d.models.spec import ModelSpec
from napari_vit3d.prompt import PromptSession, farthest_point, next_click
from napari_vit3d.prompt.clicks import border_distance, encode_points, largest_error, network_input
from napari_vit3d.prompt.crop import crop_to_scan, make_crop, sample_scan

GEOMETRIES = {
    "ras_aniso": _affine(np.eye(3), (0.9, 0.9, 2.5), (-30.0, -25.0, -20.0)),
    "lps": _affine([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], (1.1, 1.0, 1.3), (30.0, 28.0, -25.0)),
    "lsa": _affine([[-1, 0, 0], [0, 0, 1], [0, 1, 0]], (1.2, 1.0, 1.1), (30.0, -25.0, -28.0)),
    "oblique20": _affine((_rot((1, 1, 0.3), 20) @ np.diag([-1, -1, 1])).T, (1.0, 0.9, 1.6), (25.0, 30.0, -20.0)),
}
SHAPE = (56, 60, 40)


def prompt_spec(levels=(1.0, 2.0, 4.0)) -> ModelSpec:
    return ModelSpec(name="fake-prompt", architecture="identity", in_channels=4,
                     channel_names=("image", "positive clicks", "negative clicks", "previous mask"),
                     roi_size=(32, 32, 32), labels=({"index": 0, "name": "background"}, {"index": 1, "name": "object"}),
                     normalization={"kind": "percentile", "lower": 0.5, "upper": 99.5, "clip": True},
                     extra={"task": "prompt", "levels_mm": list(levels), "click_radius_vox": 1.5})


class ClickNet(torch.nn.Module):
    """Object = the positive click balls minus the negative ones."""

    def forward(self, x):
        obj = 20 * x[:, 1] - 20 * x[:, 2] - 10
        return torch.stack([torch.zeros_like(obj), obj], 1)


class BrightNet(torch.nn.Module):
    """Object = the bright part of the (normalised) image channel."""

    def forward(self, x):
        obj = 40 * (x[:, 0] - 0.5)
        return torch.stack([torch.zeros_like(obj), obj], 1)


def fake(net) -> LoadedModel:
    return LoadedModel(net.eval(), prompt_spec(), None, "cpu")


def world_of_voxels(affine, shape) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    return apply_affine(affine, idx).reshape(*shape, 3)


def sphere_scan(affine, centre, radius, seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    w = world_of_voxels(affine, shape)
    inside = np.linalg.norm(w - np.asarray(centre), axis=-1) <= radius
    data = (inside * 100.0 + rng.normal(0, 8, shape)).astype(np.float32)
    return Volume(data=data, affine=affine, name="sphere"), inside


# ------------------------------------------------------------------------------------------ clicks

def test_farthest_point_is_the_deepest_voxel_by_brute_force():
    m = np.zeros((20, 18, 16), bool)
    m[3:15, 4:12, 2:14] = True
    m[10:13, 10:16, 5:9] = True
    got = farthest_point(m, (1.0, 2.0, 0.5))
    out = np.argwhere(~np.pad(m, 1)) - 1
    inside = np.argwhere(m)
    sp = np.array([1.0, 2.0, 0.5])
    d = np.array([np.min(np.linalg.norm((out - p) * sp, axis=1)) for p in inside])
    assert np.isclose(border_distance(m, sp)[got], d.max())
    assert farthest_point(np.zeros((4, 4, 4), bool)) is None


def test_next_click_goes_to_the_largest_error_with_the_right_sign():
    gt = np.zeros((30, 30, 30), bool)
    gt[5:25, 5:25, 5:25] = True
    pred = gt.copy()
    pred[5:12, 5:25, 5:25] = False          # missed slab: 7 × 20 × 20
    pred[26:29, 26:29, 26:29] = True        # small extra blob
    (voxel, positive) = next_click(gt, pred)
    assert positive and 5 <= voxel[0] < 12
    comp, pos = largest_error(gt, pred)
    assert pos and comp.sum() == 7 * 20 * 20
    pred2 = gt.copy()
    pred2[0:5, 0:30, 0:30] = True           # a large extra region
    voxel, positive = next_click(gt, pred2)
    assert not positive and voxel[0] < 5
    assert next_click(gt, gt) is None


def test_encode_points_balls_and_channels():
    m = encode_points((9, 9, 9), [(4, 4, 4), (-10, 0, 0)], 1.5)
    assert m[4, 4, 4] == 1 and m[5, 5, 4] == 1 and m[6, 4, 4] == 0 and m.sum() == 19
    x = network_input(np.zeros((9, 9, 9)), [(1, 1, 1)], [(7, 7, 7)], np.ones((9, 9, 9)), 1.0)
    assert x.shape == (4, 9, 9, 9) and x[1, 1, 1, 1] == 1 and x[2, 7, 7, 7] == 1 and x[3].all()


# ------------------------------------------------------------------------------------------ crops

@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_crop_samples_the_scan_at_its_world_points(name):
    aff = GEOMETRIES[name]
    rng = np.random.default_rng(1)
    w = world_of_voxels(aff, SHAPE)
    # a linear function of world position: trilinear sampling reproduces it exactly inside the scan
    data = (w @ np.array([0.5, -0.25, 1.0]) + 7).astype(np.float32)
    centre = apply_affine(aff, np.array(SHAPE) / 2)
    crop = make_crop(aff, SHAPE, centre, 1.5, (16, 16, 16))
    vals = sample_scan(data, aff, crop)
    cw = world_of_voxels(crop.affine, crop.shape)
    expect = cw @ np.array([0.5, -0.25, 1.0]) + 7
    assert np.allclose(vals, expect, atol=1e-3)
    # the crop's axes are the scan's axes in RAS order, voxels of 1.5 mm
    assert np.allclose(np.linalg.norm(crop.affine[:3, :3], axis=0), 1.5)
    assert np.allclose(apply_affine(crop.affine, (np.array(crop.shape) - 1) / 2), centre)
    assert np.all(np.argmax(np.abs(crop.affine[:3, :3]), axis=0) == [0, 1, 2]) or name == "oblique20"
    # and back: a crop map of the same linear function lands on the scan's voxels
    back = crop_to_scan(expect.astype(np.float32), crop, aff, SHAPE)
    vox_world = w
    inside = np.all(np.abs(((vox_world - crop.affine[:3, 3]) @ np.linalg.inv(crop.affine[:3, :3]).T)
                           - 7.5) <= 7.4, axis=-1)
    assert np.allclose(back[inside], (vox_world[inside] @ np.array([0.5, -0.25, 1.0]) + 7), atol=1e-3)
    assert rng is not None


# ------------------------------------------------------------------------------------------ sessions

@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_click_lands_where_it_was_clicked(name):
    aff = GEOMETRIES[name]
    vol, _ = sphere_scan(aff, apply_affine(aff, np.array(SHAPE) / 2), 5)
    s = PromptSession(fake(ClickNet()), vol)
    click_vox = np.array([20, 31, 17])
    click = apply_affine(aff, click_vox)
    s.add_point(world=click)
    res = s.predict()
    m = res.mask.data
    assert m.shape == SHAPE and m.dtype == np.uint8 and np.allclose(res.mask.affine, aff)
    assert m[tuple(click_vox)] == 1
    w = world_of_voxels(aff, SHAPE)[m > 0]
    # the ball: 1.5 crop voxels of 1 mm around the click's nearest crop voxel (≤ 0.87 mm away),
    # plus half a crop voxel of interpolation back onto the scan
    assert np.linalg.norm(w - click, axis=1).max() <= 1.5 + 0.87 + 0.5
    assert res.crop.spacing == 1.0


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_mask_of_a_bright_sphere_lands_on_the_sphere(name):
    aff = GEOMETRIES[name]
    centre = apply_affine(aff, np.array(SHAPE) / 2) + np.array([2.0, -3.0, 1.0])
    vol, inside = sphere_scan(aff, centre, 9.0)
    s = PromptSession(fake(BrightNet()), vol)
    s.add_point(world=centre)
    mask = s.predict().mask.data > 0
    d = 2 * np.logical_and(mask, inside).sum() / (mask.sum() + inside.sum())
    assert d >= 0.9, d


def test_zooms_out_until_the_object_fits():
    aff = _affine(np.eye(3), (2.0, 2.0, 2.0), (-60.0, -60.0, -40.0))
    shape = (60, 60, 40)
    centre = apply_affine(aff, np.array(shape) / 2)
    vol, inside = sphere_scan(aff, centre, 30.0, shape=shape)   # 60 mm across: more than a 32 mm crop
    s = PromptSession(fake(BrightNet()), vol)
    s.add_point(world=centre)
    res = s.predict()
    assert res.levels_tried[0] == 1.0 and res.crop.spacing > 1.0
    mask = res.mask.data > 0
    assert 2 * np.logical_and(mask, inside).sum() / (mask.sum() + inside.sum()) > 0.9


def test_negative_click_and_keep_clicked_component():
    aff = GEOMETRIES["lps"]
    vol, _ = sphere_scan(aff, apply_affine(aff, np.array(SHAPE) / 2), 5)
    s = PromptSession(fake(ClickNet()), vol)
    a = apply_affine(aff, [20, 30, 20])
    s.add_point(world=a)
    s.add_point(world=apply_affine(aff, [40, 30, 20]))   # a second object far away: kept (it holds a click)
    m = s.predict().mask.data
    lab, n = ndimage.label(m)
    assert n == 2
    s.add_point(world=a, positive=False)                  # "not this one"
    m2 = s.predict().mask.data
    assert m2[20, 30, 20] == 0 and m2[40, 30, 20] == 1


def test_crop_is_cached_between_clicks():
    aff = GEOMETRIES["ras_aniso"]
    vol, _ = sphere_scan(aff, apply_affine(aff, np.array(SHAPE) / 2), 5)
    s = PromptSession(fake(ClickNet()), vol)
    c = apply_affine(aff, [28, 30, 20])
    s.add_point(world=c)
    s.predict()
    s.add_point(world=c, positive=False)
    s.predict()
    assert s.crop_cache_hits >= 1


def test_box_bounds_the_mask_and_bad_prompts_are_refused():
    aff = GEOMETRIES["lsa"]
    centre = apply_affine(aff, np.array(SHAPE) / 2)
    vol, inside = sphere_scan(aff, centre, 9.0)
    s = PromptSession(fake(BrightNet()), vol)
    with pytest.raises(GeometryError, match="at least one positive"):
        s.predict()
    with pytest.raises(GeometryError, match="outside"):
        s.add_point(world=centre + 500)
    with pytest.raises(GeometryError, match="no volume"):
        s.set_box(centre, centre + [5, 0, 5])
    s.set_box(centre - 20, centre + [0, 20, 20])            # the half of the sphere with x ≤ centre
    s.add_point(world=centre - [3, 0, 0])
    m = s.predict().mask.data > 0
    w = world_of_voxels(aff, SHAPE)
    assert m.any() and np.all(w[m][:, 0] <= centre[0] + 1e-6)
    assert np.any(inside & (w[..., 0] > centre[0] + 2))     # the sphere does extend past the box


def test_refuses_a_model_that_is_not_promptable():
    spec = ModelSpec(name="seg", architecture="identity", labels=({"index": 0, "name": "a"}, {"index": 1, "name": "b"}))
    vol, _ = sphere_scan(GEOMETRIES["lps"], (0, 0, 0), 5)
    with pytest.raises(ModelError, match="not a promptable model"):
        PromptSession(LoadedModel(ClickNet(), spec, None, "cpu"), vol)


def test_previous_mask_enters_as_the_fourth_channel():
    aff = GEOMETRIES["lps"]
    vol, inside = sphere_scan(aff, apply_affine(aff, np.array(SHAPE) / 2), 8)
    s = PromptSession(fake(ClickNet()), vol)
    s.set_previous(Volume(data=inside.astype(np.uint8), affine=aff))
    s.add_point(world=apply_affine(aff, np.array(SHAPE) / 2))
    s.predict()
    x = s.last.input[0].numpy()
    prev_in_crop = sample_scan(inside.astype(np.uint8), aff, s.last.crop, order=0)
    assert np.array_equal(x[3] > 0, prev_in_crop > 0) and x[3].any()
