"""io.resample against nibabel.affines.apply_affine (independent voxel→world→voxel mapping)."""

from __future__ import annotations

import numpy as np
import pytest
from nibabel.affines import apply_affine

from napari_vit3d.errors import GeometryError
from napari_vit3d.io.resample import resample_array, resample_to_grid
from napari_vit3d.io.volume import Volume


def _oblique(spacing, angle, origin):
    c, s = np.cos(angle), np.sin(angle)
    a = np.eye(4)
    a[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def test_nearest_neighbour_matches_apply_affine_on_oblique_grids():
    rng = np.random.default_rng(0)
    src_aff = _oblique((1.1, 0.9, 2.5), 0.4, (-12, 3, -8))
    tgt_aff = _oblique((1.6, 1.3, 1.7), -0.2, (-9, 1, -6))
    src = rng.integers(0, 5, size=(26, 24, 11)).astype(np.uint8)
    out = resample_to_grid(Volume(src, src_aff), tgt_aff, (14, 16, 12), order=0)
    assert out.data.dtype == np.uint8 and out.spatial_shape == (14, 16, 12) and np.allclose(out.affine, tgt_aff)
    idx = np.argwhere(np.ones((14, 16, 12), bool))
    vox = apply_affine(np.linalg.inv(src_aff), apply_affine(tgt_aff, idx))
    near = np.floor(vox + 0.5).astype(int)
    inside = np.all((near >= 0) & (near < np.array(src.shape)), axis=1)
    # keep voxels clearly away from a rounding tie so the reference is unambiguous
    clear = np.all(np.abs(vox - np.round(vox)) < 0.49, axis=1)
    want = np.zeros(len(idx), np.uint8)
    want[inside] = src[tuple(near[inside].T)]
    got = out.data[tuple(idx.T)]
    assert np.array_equal(got[clear], want[clear])
    assert inside.sum() > 100 and (~inside).sum() > 10  # both cases exercised


def test_linear_reproduces_a_linear_ramp_and_4d_channels():
    src_aff = _oblique((1.0, 1.2, 2.0), 0.3, (0, 0, 0))
    tgt_aff = _oblique((0.7, 0.8, 1.5), 0.1, (4, 5, 3))
    ijk = np.indices((20, 20, 12)).reshape(3, -1).T
    world = apply_affine(src_aff, ijk)
    ramp = (0.5 * world[:, 0] - 0.25 * world[:, 1] + world[:, 2]).reshape(20, 20, 12)
    data = np.stack([ramp, -ramp], -1).astype(np.float32)
    out = resample_array(data, src_aff, tgt_aff, (6, 6, 5), order=1)
    tw = apply_affine(tgt_aff, np.indices((6, 6, 5)).reshape(3, -1).T)
    expect = (0.5 * tw[:, 0] - 0.25 * tw[:, 1] + tw[:, 2]).reshape(6, 6, 5)
    inside = np.all((apply_affine(np.linalg.inv(src_aff), tw) >= 0) &
                    (apply_affine(np.linalg.inv(src_aff), tw) <= np.array([19, 19, 11])), axis=1).reshape(6, 6, 5)
    assert inside.all()
    assert out.shape == (6, 6, 5, 2)
    assert np.allclose(out[..., 0], expect, atol=1e-3) and np.allclose(out[..., 1], -expect, atol=1e-3)


def test_same_grid_is_identity_and_bad_input_is_refused():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 3, size=(7, 8, 9)).astype(np.int16)
    aff = _oblique((1, 2, 3), 0.7, (1, 2, 3))
    assert np.array_equal(resample_array(a, aff, aff, a.shape, order=0), a)
    with pytest.raises(GeometryError):
        resample_array(a, aff, aff, (0, 4, 4))
    with pytest.raises(GeometryError):
        resample_array(a, aff, np.zeros((4, 4)), a.shape)
