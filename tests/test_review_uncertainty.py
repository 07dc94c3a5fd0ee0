"""Uncertainty: zero where the model is certain, highest at a planted ambiguous boundary; TTA math; regions."""

from __future__ import annotations

import numpy as np
import pytest
from nibabel.affines import apply_affine

from napari_vit3d.errors import VolumeError
from napari_vit3d.io.volume import Volume
from napari_vit3d.review.uncertainty import flip_tta, softmax_entropy, tta_uncertainty, uncertain_regions


def planted_probs(shape=(16, 16, 16), n_classes=3):
    """Class 1 left, class 2 right, one-hot (certain) except a soft boundary at x = 8 (ambiguous)."""
    x = np.arange(shape[0])[:, None, None] * np.ones(shape)
    p = np.zeros(shape + (n_classes,))
    w = 1.0 / (1.0 + np.exp((x - 7.5) * 4.0))  # logistic across the boundary; exactly 0.5 nowhere
    w[x < 6] = 1.0
    w[x > 9] = 0.0
    p[..., 1] = w
    p[..., 2] = 1.0 - w
    return p


def test_entropy_zero_when_certain_highest_at_boundary():
    p = planted_probs()
    h = softmax_entropy(p)
    x_of_max = np.unravel_index(np.argmax(h), h.shape)[0]
    assert x_of_max in (7, 8)  # the planted boundary
    assert np.all(h[:6] == 0) and np.all(h[10:] == 0)
    # independent value: binary entropy of w divided by log(3)
    w = p[7, 0, 0, 1]
    assert h[7, 0, 0] == pytest.approx(-(w * np.log(w) + (1 - w) * np.log(1 - w)) / np.log(3), rel=1e-5)
    # uniform over C classes is exactly 1
    assert softmax_entropy(np.full((2, 2, 2, 4), 0.25)) == pytest.approx(1.0)


def test_entropy_volume_keeps_grid():
    aff = np.diag([0.7, 0.7, 3.0, 1.0])
    v = Volume(planted_probs().astype(np.float32), aff, name="scan · probabilities")
    h = softmax_entropy(v)
    assert isinstance(h, Volume) and h.spatial_shape == (16, 16, 16) and np.array_equal(h.affine, aff)
    with pytest.raises(VolumeError):
        softmax_entropy(np.ones((4, 4, 4, 1)))


def test_tta_agreement_gives_zero_mutual_information():
    p = planted_probs()
    res = tta_uncertainty([p, p.copy(), p.copy()])
    assert np.allclose(res["mutual_information"], 0, atol=1e-6)
    assert np.all(res["disagreement"] == 0)
    assert np.allclose(res["predictive_entropy"], softmax_entropy(p), atol=1e-6)


def test_tta_disagreement_values():
    a = np.zeros((2, 2, 2, 2))
    a[..., 0] = 1.0  # member A: class 0 with certainty everywhere
    b = a.copy()
    b[0, 0, 0] = (0.0, 1.0)  # member B: class 1 with certainty at one voxel
    res = tta_uncertainty([a, a, b])
    # mean at that voxel (2/3, 1/3): predictive entropy H/log2, expected entropy 0 -> MI = H/log2
    h = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)) / np.log(2)
    assert res["mutual_information"][0, 0, 0] == pytest.approx(h, rel=1e-5)
    assert res["disagreement"][0, 0, 0] == pytest.approx(1 / 3)
    assert res["disagreement"].sum() == pytest.approx(1 / 3)
    assert res["labels"][0, 0, 0] == 0


def test_flip_tta_undoes_flips():
    rng = np.random.default_rng(1)
    img = rng.random((5, 6, 7))

    def predict(x):  # depends on position: a wrong un-flip would not match
        p1 = 1 / (1 + np.exp(-(x - 0.5) * 5))
        return np.stack([1 - p1, p1], axis=-1)

    members = flip_tta(predict, img, flips=((), (0,), (1, 2), (0, 1, 2)))
    assert len(members) == 4
    for m in members:
        assert np.allclose(m, predict(img))


def test_regions_ranked_with_centroids_in_world_mm():
    u = np.zeros((30, 30, 10), np.float32)
    u[2:6, 2:6, 2:4] = 0.9            # small, very uncertain: 32 voxels, mean 0.9
    u[10:20, 10:20, 2:8] = 0.6        # large, less uncertain: 600 voxels, mean 0.6
    u[25, 25, 5] = 1.0                # single voxel: dropped by min_voxels
    u[12, 12, 3] = 0.95               # peak inside the large region
    aff = np.array([[0.0, 0, 3.0, -5], [0.8, 0, 0, 10], [0, 0.8, 0, -2], [0, 0, 0, 1]])
    regions = uncertain_regions(u, 0.5, aff, min_voxels=2)
    assert len(regions) == 2
    big, small = regions
    assert big.rank == 1 and big.n_voxels == 600 and small.n_voxels == 32
    assert big.score > small.score
    vox_ml = 0.8 * 0.8 * 3.0 / 1000
    assert big.volume_ml == pytest.approx(600 * vox_ml)
    assert big.mean_uncertainty == pytest.approx((599 * 0.6 + 0.95) / 600, rel=1e-5)
    assert big.centroid_voxel == pytest.approx((14.5, 14.5, 4.5), abs=0.01)
    assert big.centroid_ras == pytest.approx(tuple(apply_affine(aff, [14.5, 14.5, 4.5])), abs=0.02)
    assert big.peak_voxel == (12, 12, 3) and big.peak_ras == pytest.approx(tuple(apply_affine(aff, [12, 12, 3])))
    assert big.bbox_min == (10, 10, 2) and big.bbox_max == (19, 19, 7)
    assert small.max_uncertainty == pytest.approx(0.9)
    only_peak = uncertain_regions(u, 0.99)
    assert len(only_peak) == 1 and only_peak[0].peak_voxel == (25, 25, 5)
    assert uncertain_regions(u, 0.99, min_voxels=2) == []


def test_uncertain_regions_match_a_per_region_reference_on_a_noisy_map():
    """Many small regions and tied values (the worst case): every field against a plain per-region loop."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    u = np.round(rng.random((23, 19, 17)), 1).astype(np.float32)
    aff = np.array([[0.0, 0, 2.0, 4], [0.9, 0, 0, -3], [0, 1.1, 0, 7], [0, 0, 0, 1]])
    regions = uncertain_regions(u, 0.75, aff, min_voxels=2)
    lab, n = ndimage.label(u > 0.75)  # face connectivity
    ref = []
    for i in range(1, n + 1):
        pos = np.argwhere(lab == i)
        if len(pos) < 2:
            continue
        vals = u[tuple(pos.T)]
        mean = float(vals.astype(np.float64).mean())
        peak = pos[int(np.argmax(vals))]  # argwhere is in C order: the first maximum
        ref.append({"n": len(pos), "mean": mean, "score": mean * len(pos) * 0.9 * 1.1 * 2.0 / 1000,
                    "centroid": pos.mean(0), "peak": tuple(int(v) for v in peak), "max": float(vals.max()),
                    "lo": tuple(pos.min(0)), "hi": tuple(pos.max(0))})
    ref.sort(key=lambda r: -r["score"])
    assert len(regions) == len(ref) > 50
    for got, want in zip(regions, ref):
        assert got.n_voxels == want["n"] and got.peak_voxel == want["peak"]
        assert got.mean_uncertainty == pytest.approx(want["mean"], rel=1e-6)
        assert got.max_uncertainty == pytest.approx(want["max"])
        assert got.centroid_voxel == pytest.approx(tuple(want["centroid"]), abs=1e-9)
        assert got.peak_ras == pytest.approx(tuple(apply_affine(aff, want["peak"])))
        assert got.bbox_min == want["lo"] and got.bbox_max == want["hi"]
