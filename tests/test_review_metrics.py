"""Metrics against independent computations: numpy Dice, scipy EDT surface distances (sampling = spacing),
brute-force world-space distances for oblique and sheared grids, a naive AUC-PR, real brain masks."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED_DATA
from nibabel.affines import apply_affine
from scipy import ndimage
from scipy.spatial.distance import cdist

from napari_vit3d.errors import GeometryError, VolumeError
from napari_vit3d.io.volume import Volume
from napari_vit3d.review.metrics import average_precision, binary_metrics, evaluate

DATA = SHARED_DATA


# -- independent references ------------------------------------------------------------------------
def np_dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def surface(mask):
    """Voxels of the mask with a 6-neighbour outside it (array border counts as outside)."""
    m = np.pad(mask.astype(bool), 1)
    inner = m.copy()
    for ax in range(3):
        for s in (1, -1):
            inner &= np.roll(m, s, axis=ax)
    return (m & ~inner)[1:-1, 1:-1, 1:-1]


def edt_distances(pred, ref, spacing):
    """Directed surface distances via scipy EDT with sampling = spacing."""
    sp, sr = surface(pred), surface(ref)
    to_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return to_ref[sp], to_pred[sr]


def world_distances(pred, ref, affine):
    """Directed surface distances brute force in world mm through the full affine (small masks only)."""
    wp = apply_affine(affine, np.argwhere(surface(pred)))
    wr = apply_affine(affine, np.argwhere(surface(ref)))
    d = cdist(wp, wr)
    return d.min(axis=1), d.min(axis=0)


def hd95_msd(d_pr, d_rp):
    return max(np.quantile(d_pr, 0.95), np.quantile(d_rp, 0.95)), np.concatenate([d_pr, d_rp]).mean()


def naive_ap(scores, truth):
    """Average precision by brute force over each distinct threshold, highest first."""
    scores, truth = scores.ravel(), truth.ravel().astype(bool)
    ap, prev_r = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        sel = scores >= t
        tp = np.sum(sel & truth)
        p, r = tp / sel.sum(), tp / truth.sum()
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def ellipsoid(shape, centre, radii):
    g = np.indices(shape).astype(float)
    return sum(((g[i] - centre[i]) / radii[i]) ** 2 for i in range(3)) <= 1.0


# -- tests ------------------------------------------------------------------------------------------
def test_anisotropic_axis_aligned_matches_scipy_edt():
    spacing = (0.7, 0.7, 3.0)
    affine = np.diag(spacing + (1.0,))
    affine[:3, 3] = (-10, 5, 20)
    ref = ellipsoid((40, 40, 14), (20, 20, 7), (14, 11, 4.5))
    pred = np.roll(ellipsoid((40, 40, 14), (20, 20, 7), (12, 12, 4.0)), 3, axis=0)
    m = binary_metrics(pred, ref, affine)
    hd, msd = hd95_msd(*edt_distances(pred, ref, spacing))
    assert m["dice"] == pytest.approx(np_dice(pred, ref), abs=1e-6)
    assert m["hd95"] == pytest.approx(hd, rel=1e-5)
    assert m["msd"] == pytest.approx(msd, rel=1e-5)
    # the 3 mm axis matters: the same masks with isotropic 1 mm spacing give other distances
    hd_iso, _ = hd95_msd(*edt_distances(pred, ref, (1, 1, 1)))
    assert abs(hd_iso - m["hd95"]) > 0.1
    tp = np.sum(pred & ref)
    assert m["recall"] == pytest.approx(tp / ref.sum())
    assert m["precision"] == pytest.approx(tp / pred.sum())
    assert m["volume_diff_ml"] == pytest.approx((pred.sum() - ref.sum()) * 0.7 * 0.7 * 3.0 / 1000)
    assert m["distance_method"] == "monai-spacing"


def test_oblique_rotated_grid_matches_world_distances():
    rot = np.array([[np.cos(0.5), -np.sin(0.5), 0], [np.sin(0.5), np.cos(0.5), 0], [0, 0, 1.0]])
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 1.2, 2.5])
    affine[:3, 3] = (3, -7, 11)
    ref = ellipsoid((24, 20, 10), (12, 10, 5), (8, 7, 3.2))
    pred = np.roll(ellipsoid((24, 20, 10), (12, 10, 5), (7, 7, 3.5)), 2, axis=1)
    m = binary_metrics(pred, ref, affine)
    hd, msd = hd95_msd(*world_distances(pred, ref, affine))
    assert m["hd95"] == pytest.approx(hd, rel=1e-5)
    assert m["msd"] == pytest.approx(msd, rel=1e-5)
    assert m["volume_diff_ml"] == pytest.approx((pred.sum() - ref.sum()) * 0.8 * 1.2 * 2.5 / 1000)


def test_sheared_grid_uses_full_affine():
    affine = np.array([[1.0, 0.6, 0, 0], [0, 1.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    ref = ellipsoid((22, 22, 10), (11, 11, 5), (7, 8, 3))
    pred = np.roll(ref, 3, axis=1)
    m = binary_metrics(pred, ref, affine)
    assert m["distance_method"] == "world-kdtree"
    hd, msd = hd95_msd(*world_distances(pred, ref, affine))
    assert m["hd95"] == pytest.approx(hd, rel=1e-6)
    assert m["msd"] == pytest.approx(msd, rel=1e-6)


def test_empty_mask_conventions_are_defined_and_json_safe():
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    empty = np.zeros((8, 8, 8), bool)
    blob = np.zeros((8, 8, 8), bool)
    blob[2:5, 2:5, 2:5] = True
    both = binary_metrics(empty, empty, affine, probability=np.zeros((8, 8, 8)))
    assert (both["dice"], both["hd95"], both["msd"], both["recall"], both["precision"]) == (1.0, 0.0, 0.0, 1.0, 1.0)
    assert both["auc_pr"] is None and both["pred_empty"] and both["ref_empty"]
    no_ref = binary_metrics(blob, empty, affine)
    assert no_ref["dice"] == 0.0 and no_ref["hd95"] is None and no_ref["msd"] is None
    assert no_ref["recall"] is None and no_ref["precision"] == 0.0 and no_ref["ref_empty"] and not no_ref["pred_empty"]
    no_pred = binary_metrics(empty, blob, affine)
    assert no_pred["dice"] == 0.0 and no_pred["hd95"] is None and no_pred["recall"] == 0.0 and no_pred["precision"] is None
    assert no_pred["volume_diff_ml"] == pytest.approx(-27 * 2 / 1000)
    for entry in (both, no_ref, no_pred):
        json.dumps(entry, allow_nan=False)  # raises on NaN / inf


def test_average_precision_matches_naive_with_ties():
    rng = np.random.default_rng(3)
    truth = rng.random((6, 6, 6)) < 0.3
    scores = np.round(np.clip(truth * 0.35 + rng.random((6, 6, 6)) * 0.7, 0, 1), 1)  # many ties
    assert average_precision(scores, truth) == pytest.approx(naive_ap(scores, truth), abs=1e-12)
    assert average_precision(truth.astype(float), truth) == pytest.approx(1.0)
    assert average_precision(scores, np.zeros_like(truth)) is None


def test_evaluate_multilabel_with_probabilities():
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    ref = np.zeros((20, 20, 10), np.uint8)
    ref[ellipsoid(ref.shape, (7, 10, 5), (5, 5, 3))] = 1
    ref[ellipsoid(ref.shape, (14, 10, 5), (4, 6, 3))] = 2
    pred = np.roll(ref, 1, axis=1)
    pred[ref == 0] = 0
    rng = np.random.default_rng(0)
    logits = rng.normal(size=ref.shape + (3,)) + 3.0 * np.eye(3)[pred]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    res = evaluate(Volume(pred, affine), Volume(ref, affine), probabilities=Volume(probs.astype(np.float32), affine))
    assert set(res["labels"]) == {"1", "2"}
    for lab in (1, 2):
        e = res["labels"][str(lab)]
        assert e["dice"] == pytest.approx(np_dice(pred == lab, ref == lab), abs=1e-6)
        assert e["auc_pr"] == pytest.approx(naive_ap(probs[..., lab].astype(np.float32), ref == lab), abs=1e-9)
        hd, msd = hd95_msd(*edt_distances(pred == lab, ref == lab, (1.5, 1.5, 2.0)))
        assert e["hd95"] == pytest.approx(hd, rel=1e-5) and e["msd"] == pytest.approx(msd, rel=1e-5)
    assert res["mean"]["dice"] == pytest.approx(np.mean([res["labels"][k]["dice"] for k in ("1", "2")]))
    bg = evaluate(Volume(pred, affine), Volume(ref, affine), include_background=True)
    assert bg["labels"]["0"]["dice"] == pytest.approx(np_dice(pred == 0, ref == 0), abs=1e-6)


def test_grid_mismatch_errors_unless_resample():
    a = np.zeros((12, 12, 12), np.uint8)
    a[3:9, 3:9, 3:9] = 1
    pred = Volume(a, np.diag([2.0, 2.0, 2.0, 1.0]))
    # reference on a 1 mm grid covering the same world box: voxel (i,j,k) of pred = (2i,2j,2k) of ref
    fine = np.zeros((24, 24, 24), np.uint8)
    fine[6:18, 6:18, 6:18] = 1
    ref = Volume(fine, np.eye(4))
    with pytest.raises(GeometryError, match="not on the same grid.*--resample"):
        evaluate(pred, ref)
    res = evaluate(pred, ref, resample=True)
    assert res["resampled_reference"] and res["labels"]["1"]["dice"] == pytest.approx(1.0)
    with pytest.raises(VolumeError):
        evaluate(pred, Volume(a, pred.affine), probabilities=Volume(np.zeros((12, 12, 12, 2), np.float32), pred.affine),
                 labels=[1, 2])


def test_real_brain_mask_against_eroded_shifted_copy():
    img = nib.load(str(DATA / "colin27" / "ch2bet.nii.gz"))
    brain = np.asarray(img.dataobj) > 0
    step = (3, 3, 4)  # 3 x 3 x 4 mm, anisotropic, ~60 x 72 x 45 voxels
    ref = brain[:: step[0], :: step[1], :: step[2]]
    affine = img.affine @ np.diag(step + (1,))
    pred = np.roll(ndimage.binary_erosion(ref, iterations=1), 2, axis=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN / empty warnings on real masks
        res = evaluate(Volume(pred.astype(np.uint8), affine), Volume(ref.astype(np.uint8), affine))
    e = res["labels"]["1"]
    hd, msd = hd95_msd(*edt_distances(pred, ref, (3.0, 3.0, 4.0)))
    assert e["dice"] == pytest.approx(np_dice(pred, ref), abs=1e-6)
    assert e["hd95"] == pytest.approx(hd, rel=1e-5)
    assert e["msd"] == pytest.approx(msd, rel=1e-5)
    assert e["volume_ref_ml"] == pytest.approx(ref.sum() * 36 / 1000)
    assert 0.5 < e["dice"] < 0.95 and e["hd95"] >= 3.0


def test_probability_channels_follow_engine_class_metadata():
    """A probabilities Volume from inference says which label each channel holds (here labels 0 and 3)."""
    affine = np.eye(4)
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:6, 2:6, 2:6] = 3
    rng = np.random.default_rng(5)
    p3 = np.clip(ref / 3 * 0.6 + rng.random(ref.shape) * 0.4, 0, 1).astype(np.float32)
    probs = Volume(np.stack([1 - p3, p3], -1), affine, metadata={"classes": [0, 3]})
    res = evaluate(Volume(ref, affine), Volume(ref, affine), probabilities=probs)
    assert res["labels"]["3"]["auc_pr"] == pytest.approx(naive_ap(p3, ref == 3), abs=1e-9)
    with pytest.raises(VolumeError, match="no channel"):
        evaluate(Volume(ref, affine), Volume(ref, affine), probabilities=probs, labels=[1])


def test_auc_pr_on_real_tissue_probabilities():
    """MNI152 grey-matter probability (uint8 levels: many ties) vs a reference from a shifted copy."""
    img = nib.load(str(DATA / "mni152_2009a" / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"))
    gm = np.asarray(img.dataobj)[::4, ::4, ::4]
    affine = img.affine @ np.diag([4, 4, 4, 1])
    prob = (gm.astype(np.float32) / np.float32(gm.max()))
    ref = (np.roll(gm, 1, axis=0) > gm.max() / 2).astype(np.uint8)
    pred = (prob > 0.5).astype(np.uint8)
    res = evaluate(Volume(pred, affine), Volume(ref, affine), probabilities=Volume(prob, affine))
    e = res["labels"]["1"]
    assert e["auc_pr"] == pytest.approx(naive_ap(prob, ref == 1), abs=1e-9)
    assert 0.2 < e["auc_pr"] < 0.99
    assert e["dice"] == pytest.approx(np_dice(pred == 1, ref == 1), abs=1e-6)
