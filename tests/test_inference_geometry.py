"""Geometry of inference: a pass-through model gives the scan's own mask back on LPS, oblique and
anisotropic scans; resampling is checked against ``nibabel.affines.apply_affine``; normalisations
against MONAI's transforms; flip TTA flips back."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.transforms import NormalizeIntensity, ScaleIntensityRangePercentiles
from nibabel.affines import apply_affine, from_matvec
from scipy.spatial.transform import Rotation

from napari_vit3d.errors import VolumeError
from napari_vit3d.inference import normalize, predict_tta, preprocess, segment, to_scan_grid
from napari_vit3d.io.volume import Volume
from napari_vit3d.models.spec import ModelSpec

LABELS = [{"index": 0, "name": "background"}, {"index": 3, "name": "a"}, {"index": 7, "name": "b"}]


class PassThrough(torch.nn.Module):
    """Logits = the input: given a one-hot mask (3 channels) the model 'predicts' that mask.

    One-hot channels (not a single label channel) so that trilinear resampling gives partial volumes
    per class instead of inventing class 1 between classes 0 and 2.
    """

    def forward(self, x):
        return x.clone()


def passthrough(spacing, roi=(16, 16, 16)):
    spec = ModelSpec(name="pass", architecture="identity", spacing=spacing, roi_size=roi, in_channels=3,
                     channel_names=("p0", "p1", "p2"), normalization={"kind": "none"}, labels=LABELS)
    return SimpleNamespace(network=PassThrough(), spec=spec, weights_sha256=None)


def one_hot(mask):
    return np.eye(3, dtype=np.float32)[mask]


def blobs(shape, affine) -> np.ndarray:
    """Two balls (classes 1 and 2, radius 9 and 6 mm) placed in world mm; 0 elsewhere."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = apply_affine(affine, idx)
    centre = apply_affine(affine, (np.asarray(shape) - 1) / 2)
    mask = np.zeros(len(world), np.int64)
    mask[np.linalg.norm(world - centre - [4, 0, 0], axis=1) < 9] = 1
    mask[np.linalg.norm(world - centre + [7, 3, 0], axis=1) < 6] = 2
    return mask.reshape(shape)


def affine_for(spacing, rotation=None, flips=(1, 1, 1), origin=(10.0, -20.0, 5.0)):
    rotation = np.eye(3) if rotation is None else rotation
    return from_matvec(rotation @ np.diag(np.asarray(flips, float) * np.asarray(spacing, float)), origin)


def to_label_values(mask):
    return np.array([0, 3, 7])[mask]


def ras_spacing(affine):
    """The scan's spacing along R, A, S (what the model spec must say for 'no resampling')."""
    lin = affine[:3, :3]
    sp = np.sqrt((lin ** 2).sum(0))
    out = np.zeros(3)
    for ax in range(3):
        out[np.argmax(np.abs(lin[:, ax]))] = sp[ax]
    return tuple(out)


CASES = {
    "lps_aniso": affine_for((0.7, 0.7, 3.0), flips=(-1, -1, 1)),
    # a 20° oblique acquisition, file axes permuted (axis 0 runs mostly along S) and flipped
    "oblique_20": from_matvec(Rotation.from_euler("x", 20, degrees=True).as_matrix()
                              @ np.array([[0, -1, 0], [0, 0, 1], [1, 0, 0]], float) @ np.diag([3.0, 0.7, 0.7]),
                              [5.0, 7.0, -3.0]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_passthrough_exact_when_spacing_matches(case):
    aff = CASES[case]
    shape = (40, 44, 12) if case == "lps_aniso" else (12, 40, 44)
    mask = blobs(shape, aff)
    assert (mask == 1).sum() > 100 and (mask == 2).sum() > 50
    vol = Volume(one_hot(mask), aff, name=case)
    res = segment(vol, passthrough(ras_spacing(aff)), device="cpu", use_cache=False)
    assert not res.model_input.resampled
    np.testing.assert_array_equal(res.labels.data, to_label_values(mask))
    np.testing.assert_array_equal(res.labels.affine, aff)
    assert res.labels.data.shape == shape
    # and the model grid voxel that holds each scan voxel is at the same world position (nibabel)
    ijk = np.array([[0, 0, 0], [3, 5, 7], [s - 1 for s in shape]])
    model_ijk = apply_affine(res.model_input.scan_to_model_voxel(), ijk)
    np.testing.assert_allclose(apply_affine(res.model_input.affine, model_ijk), apply_affine(aff, ijk), atol=1e-9)
    np.testing.assert_allclose(model_ijk, np.round(model_ijk), atol=1e-9)


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("case", sorted(CASES))
def test_passthrough_near_exact_after_resampling(case):
    aff = CASES[case]
    shape = (40, 44, 12) if case == "lps_aniso" else (12, 40, 44)
    mask = blobs(shape, aff)
    vol = Volume(one_hot(mask), aff, name=case)
    res = segment(vol, passthrough((1.2, 1.2, 1.2)), device="cpu", use_cache=False)
    assert res.model_input.resampled
    assert res.labels.data.shape == shape
    for c, v in ((1, 3), (2, 7)):
        assert dice(res.labels.data == v, mask == c) >= 0.98, (case, c)


def test_resampled_model_grid_matches_world_positions():
    """A linear intensity ramp in world mm is reproduced exactly by trilinear resampling (oblique, LPS)."""
    aff = CASES["oblique_20"]
    shape = (12, 40, 44)
    world = apply_affine(aff, np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1))
    coef = np.array([0.5, -0.25, 0.125])
    ramp = (world @ coef + 100).astype(np.float32)
    spec = ModelSpec(name="ramp", architecture="identity", spacing=(1.5, 1.1, 0.9), roi_size=(16, 16, 16),
                     normalization={"kind": "none"}, labels=LABELS[:1])
    mi = preprocess(Volume(ramp, aff), spec)
    assert mi.resampled
    np.testing.assert_allclose(mi.spacing, (1.5, 1.1, 0.9), rtol=1e-6)
    x = mi.tensor[0, 0].numpy()
    ijk = np.stack(np.nonzero(np.ones(mi.spatial_shape, bool)), -1)
    # model voxels whose world point lies inside the scan's voxel-centre box sample the ramp exactly
    inside_src = apply_affine(np.linalg.inv(aff) @ mi.affine, ijk)
    ok = np.all((inside_src >= 0) & (inside_src <= np.asarray(shape) - 1), axis=1)
    assert ok.sum() > 1000
    expected = apply_affine(mi.affine, ijk[ok]) @ coef + 100
    np.testing.assert_allclose(x[tuple(ijk[ok].T)], expected, atol=1e-3)
    # and mapping the model grid back onto the scan gives the ramp at every scan voxel
    # (scan voxels within one model voxel of the scan's edge see the field of view's edge band, where
    # values are the edge voxel's: the ramp is exact away from it)
    back = to_scan_grid(mi.tensor[0], mi)[..., 0]
    m = np.ceil(1.5 / np.array([3.0, 0.7, 0.7])).astype(int)
    inner = tuple(slice(k, s - k) for k, s in zip(m, shape))
    np.testing.assert_allclose(back[inner], ramp[inner], atol=1e-3)
    # the model grid covers the scan's field of view
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    valid_vox = apply_affine(np.linalg.inv(mi.valid_affine) @ aff, corners)
    assert np.all(valid_vox >= -0.5 - 1e-6) and np.all(valid_vox <= np.asarray(mi.valid_shape) - 0.5 + 1e-6)


def test_normalisations_match_monai():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 50.0, (20, 18, 16, 2)).astype(np.float32)
    x[:5] = 0
    ours = normalize(x, {"kind": "zscore_nonzero"})
    ref = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(np.moveaxis(x, -1, 0).copy()))
    np.testing.assert_allclose(ours, np.moveaxis(np.asarray(ref), 0, -1), atol=1e-5)
    ours = normalize(x, {"kind": "zscore"})
    ref = NormalizeIntensity(nonzero=False, channel_wise=True)(torch.from_numpy(np.moveaxis(x, -1, 0).copy()))
    np.testing.assert_allclose(ours, np.moveaxis(np.asarray(ref), 0, -1), atol=1e-5)
    ours = normalize(x, {"kind": "percentile", "lower": 1, "upper": 99, "b_min": 0, "b_max": 1})
    ref = ScaleIntensityRangePercentiles(1, 99, 0, 1, clip=True, channel_wise=True)(
        torch.from_numpy(np.moveaxis(x, -1, 0).copy()))
    np.testing.assert_allclose(ours, np.moveaxis(np.asarray(ref), 0, -1), atol=1e-5)


def test_channel_selection():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
    vol = Volume(data, np.eye(4))
    spec = ModelSpec(name="m", architecture="identity", spacing=(1, 1, 1), roi_size=(16, 16, 16),
                     normalization={"kind": "none"}, labels=LABELS[:1])
    with pytest.raises(VolumeError, match="3 channels"):
        preprocess(vol, spec)
    mi = preprocess(vol, spec, channels=[2])
    np.testing.assert_array_equal(mi.tensor[0, 0].numpy(), data[..., 2])
    with pytest.raises(VolumeError):
        preprocess(vol, spec, channels=[5])


def test_tta_flips_map_back():
    """With a pass-through model every flipped prediction, flipped back, is the plain one."""
    aff = CASES["lps_aniso"]
    mask = blobs((40, 44, 12), aff)
    vol = Volume(one_hot(mask), aff)
    calls = []
    outs = predict_tta(vol, passthrough(ras_spacing(aff)), device="cpu", progress=lambda d, t: calls.append((d, t)))
    assert len(outs) == 4
    for p in outs:
        assert p.data.shape == (40, 44, 12, 3)
        np.testing.assert_array_equal(np.argmax(p.data, -1), mask)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == calls[-1][1]


def test_separable_resampling_equals_scipy_map_coordinates():
    """The axis-by-axis path gives scipy's trilinear values (through io.resample) on permuted, scaled grids."""
    from scipy import ndimage

    from napari_vit3d.io.resample import resample_edge

    rng = np.random.default_rng(0)
    data = rng.random((20, 25, 9, 2)).astype(np.float32)
    src = from_matvec(Rotation.from_euler("y", 20, degrees=True).as_matrix() @ np.array([[0, 0, -3.0], [0.7, 0, 0],
                                                                                         [0, 0.7, 0]]), [1, 2, 3])
    padded = np.pad(data, [(1, 1)] * 3 + [(0, 0)], mode="edge")  # the documented edge rule
    for lin, off, shape in [(np.array([[0, 0, 0.5], [1.3, 0, 0], [0, -0.9, 0]]), [-0.7, 3.2, 20.5], (22, 30, 12)),
                            (np.diag([0.5, 0.7, 2.0]), [-3.1, -2.05, -1.3], (50, 45, 9))]:
        tgt = src @ from_matvec(lin, off)
        ours = resample_edge(data, src, tgt, shape)
        ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), 0).reshape(3, -1)
        coords = apply_affine(np.linalg.inv(src) @ tgt, ijk.T).T + 1  # +1: index in the padded array
        for c in range(2):
            ref = ndimage.map_coordinates(padded[..., c], coords, order=1, mode="constant", cval=0.0)
            np.testing.assert_allclose(ours[..., c].ravel(), ref, atol=1e-5)


def test_non_finite_voxels_are_zeroed_with_a_warning():
    from napari_vit3d.errors import VolumeWarning

    data = np.ones((16, 16, 16), np.float32)
    data[3, 4, 5] = np.nan
    spec = ModelSpec(name="m", architecture="identity", spacing=(1, 1, 1), roi_size=(16, 16, 16),
                     normalization={"kind": "none"}, labels=LABELS[:1])
    with pytest.warns(VolumeWarning, match="1 NaN"):
        mi = preprocess(Volume(data, np.eye(4)), spec)
    assert torch.isfinite(mi.tensor).all() and mi.tensor[0, 0, 3, 4, 5] == 0
    with pytest.raises(VolumeError, match="no finite"):
        preprocess(Volume(np.full((16, 16, 16), np.nan, np.float32), np.eye(4)), spec)
