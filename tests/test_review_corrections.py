"""Corrections (interpolation, clean-up, diff) and model comparison, checked on shapes with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vit3d.errors import GeometryError, VolumeError
from napari_vit3d.io.volume import Volume
from napari_vit3d.review.compare import compare_labels, disagreement_map
from napari_vit3d.review.corrections import diff, fill_holes, interpolate_slices, remove_small_components


def np_dice(a, b):
    return 2.0 * np.sum(a & b) / (a.sum() + b.sum())


def cone(shape=(40, 40, 21), r0=4.0, r1=16.0):
    g = np.indices(shape).astype(float)
    radius = r0 + (r1 - r0) * g[2] / (shape[2] - 1)
    return np.hypot(g[0] - 20, g[1] - 19.5) <= radius


def sphere(shape=(40, 40, 40), c=(20, 20, 20), r=14.0):
    g = np.indices(shape).astype(float)
    return np.sqrt(sum((g[i] - c[i]) ** 2 for i in range(3))) <= r


@pytest.mark.parametrize("truth_fn, axis", [(cone, 2), (sphere, 0)])
def test_interpolation_recovers_shape_between_annotated_slices(truth_fn, axis):
    truth = truth_fn()
    step = 5
    drawn = np.zeros(truth.shape, np.uint8)
    present = np.flatnonzero(np.moveaxis(truth, axis, 0).reshape(truth.shape[axis], -1).any(1))
    keep = list(range(present[0], present[-1] + 1, step))
    if keep[-1] != present[-1]:
        keep.append(present[-1])
    idx = [slice(None)] * 3
    idx[axis] = keep
    drawn[tuple(idx)] = truth[tuple(idx)]
    out, painted = interpolate_slices(drawn, 1, axis=axis)
    filled = out == 1
    assert painted == int(filled.sum() - (drawn == 1).sum())
    assert np.array_equal(filled[tuple(idx)], truth[tuple(idx)])  # annotated slices untouched
    between = np.ones(truth.shape[axis], bool)
    between[keep] = False
    between[: present[0]] = between[present[-1] + 1:] = False
    sel = [slice(None)] * 3
    sel[axis] = between
    d = np_dice(filled[tuple(sel)], truth[tuple(sel)])
    assert d > 0.93
    # better than copying the nearest annotated slice (the naive alternative)
    nearest = np.zeros_like(truth)
    for s in np.flatnonzero(between):
        k = min(keep, key=lambda q: abs(q - s))
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        src[axis], dst[axis] = k, s
        nearest[tuple(dst)] = truth[tuple(src)]
    if truth_fn is cone:
        assert d > np_dice(nearest[tuple(sel)], truth[tuple(sel)])


def test_interpolation_respects_other_labels_and_needs_two_slices():
    lab = np.zeros((10, 10, 9), np.uint8)
    lab[2:8, 2:8, 0] = 1
    lab[2:8, 2:8, 8] = 1
    lab[4, 4, 4] = 2
    out, painted = interpolate_slices(lab, 1, axis=2)
    assert out[4, 4, 4] == 2 and np.all(out[2:8, 2:8, 1:8][out[2:8, 2:8, 1:8] != 2] == 1)
    assert painted == 36 * 7 - 1
    assert lab[4, 4, 3] == 0  # input unchanged
    with pytest.raises(VolumeError, match="at least two slices"):
        interpolate_slices(lab, 2, axis=2)


def test_remove_small_components_by_voxels_and_ml():
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[2:10, 2:10, 2:10] = 1      # 512
    lab[15:17, 15, 15] = 1         # 2 voxels
    lab[12:14, 12:14, 12:14] = 1   # 8 voxels
    lab[0:2, 18, 18] = 2           # 2 voxels of label 2
    out, removed = remove_small_components(lab, min_voxels=5)
    assert removed == {1: 2, 2: 2}
    assert np.sum(out == 1) == 520 and np.sum(out == 2) == 0
    out2, removed2 = remove_small_components(lab, min_voxels=5, only=[1])
    assert removed2 == {1: 2} and np.sum(out2 == 2) == 2
    # 2 mm isotropic voxels: 0.008 mL each; 0.05 mL -> 7 voxels minimum (drops 2-voxel pieces, keeps 8)
    out3, removed3 = remove_small_components(lab, min_ml=0.05, voxel_volume_ml=0.008)
    assert removed3 == {1: 2, 2: 2} and np.sum(out3 == 1) == 520
    out4, removed4 = remove_small_components(lab, min_ml=0.07, voxel_volume_ml=0.008)
    assert removed4[1] == 10


def test_fill_holes_3d_and_per_slice():
    shell = sphere((21, 21, 21), (10, 10, 10), 8) & ~sphere((21, 21, 21), (10, 10, 10), 5)
    lab = shell.astype(np.uint8)
    lab[10, 10, 10] = 2
    cavity = sphere((21, 21, 21), (10, 10, 10), 5)
    out, filled = fill_holes(lab)
    assert filled == {1: int(cavity.sum()) - 1}
    assert out[10, 10, 10] == 2 and np.all(out[cavity & (lab != 2)] == 1)
    tube = np.zeros((12, 12, 8), np.uint8)
    tube[2:10, 2:10, :] = 1
    tube[4:8, 4:8, :] = 0
    assert fill_holes(tube)[1] == {}  # open at both ends: no 3D cavity
    out, filled = fill_holes(tube, axis=2)
    assert filled == {1: 16 * 8} and np.all(out[2:10, 2:10] == 1)


def test_diff_codes_and_counts():
    model = np.zeros((6, 6, 6), np.uint8)
    model[0:3, :, :] = 1     # 108 voxels of 1
    model[5, 5, 5] = 2
    corr = model.copy()
    corr[3, 0:4, 0] = 1      # added 4 (background -> 1)
    corr[0, 0, 0:5] = 0      # removed 5 (1 -> background)
    corr[1, 1, 0:2] = 2      # changed 2 (1 -> 2)
    d = diff(model, corr)
    assert np.sum(d.map == 1) == 4 and np.sum(d.map == 2) == 5 and np.sum(d.map == 3) == 2
    assert d.per_label[1]["voxels_added"] == 4 and d.per_label[1]["voxels_removed"] == 7
    assert d.per_label[2]["voxels_added"] == 2 and d.per_label[2]["voxels_removed"] == 0
    assert d.per_label[1]["dice"] == pytest.approx(np_dice(model == 1, corr == 1))
    assert d.per_label[2]["dice"] == pytest.approx(np_dice(model == 2, corr == 2))
    assert d.n_changed == 11
    with pytest.raises(GeometryError):
        diff(model, corr[:5])


def test_compare_labels_map_and_table():
    aff = np.diag([1.0, 1.0, 2.5, 1.0])
    a = np.zeros((8, 8, 4), np.uint8)
    b = np.zeros((8, 8, 4), np.uint8)
    a[0:4] = 1
    b[1:5] = 1
    a[6, 6, 0] = 2
    b[6, 6, 0] = 3
    codes = disagreement_map(a, b)
    assert np.all(codes[0] == 1) and np.all(codes[4] == 2) and codes[6, 6, 0] == 3 and np.all(codes[1:4] == 0)
    cmp = compare_labels(Volume(a, aff, name="A"), Volume(b, aff, name="B"))
    assert np.array_equal(cmp.map.data, codes) and np.array_equal(cmp.map.affine, aff)
    assert cmp.per_label["1"]["dice"] == pytest.approx(np_dice(a == 1, b == 1))
    assert cmp.per_label["2"]["dice"] == 0.0 and cmp.per_label["3"]["voxels_b"] == 1
    assert cmp.summary["voxels_different_labels"] == 1
    assert cmp.summary["disagreement_ml"] == pytest.approx(np.count_nonzero(codes) * 2.5 / 1000)
    with pytest.raises(GeometryError, match="same grid"):
        compare_labels(Volume(a, aff), Volume(b, np.diag([1.0, 1.0, 2.0, 1.0])))
