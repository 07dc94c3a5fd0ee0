"""The longer-neck augmentation of the brain model's training data (``synthesis.extend_neck``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vit3d.io.nifti import read_nifti
from napari_vit3d.io.samples import sample_path
from napari_vit3d.training import synthesis as S


def _toy_head():
    """A 10×10×12 map: slice 0 empty; slices 1-2 neck tissue (sub-labels 4-6) with a one-voxel
    'cord' of brain; from slice 3 up a brain block (GM) inside head tissue."""
    lab = np.zeros((10, 10, 12), np.uint8)
    lab[1:9, 1:9, 1:] = 5
    lab[2:4, 2:4, 1:] = 6
    lab[5, 5, 1:3] = 3                  # the cord: brain, tiny share of the slice
    lab[3:7, 3:7, 3:10] = 2             # the brain
    img = np.random.default_rng(0).random(lab.shape).astype(np.float32)
    return lab, img


def test_neck_mirrors_the_bottom_slab_and_is_all_background():
    lab, img = _toy_head()
    ext, ext_img, added = S.extend_neck(lab, img, 7)
    # the empty slice 0 is dropped and 7 slices come in below slice 1
    assert added == 6 and ext.shape == (10, 10, 11 + 7)
    np.testing.assert_array_equal(ext[:, :, 7:], lab[:, :, 1:])
    np.testing.assert_array_equal(ext_img[:, :, 7:], img[:, :, 1:])
    # independent reference: numpy's symmetric padding of the two-slice slab, counted downwards
    ref_img = np.pad(img[:, :, 1:3], ((0, 0), (0, 0), (7, 0)), mode="symmetric")[:, :, :7]
    np.testing.assert_array_equal(ext_img[:, :, :7], ref_img)
    ref_lab = np.pad(lab[:, :, 1:3], ((0, 0), (0, 0), (7, 0)), mode="symmetric")[:, :, :7]
    ref_lab = np.where(S.SUB_TO_CLASS[ref_lab] > 0, 4, ref_lab)
    np.testing.assert_array_equal(ext[:, :, :7], ref_lab)
    assert not (S.SUB_TO_CLASS[ext[:, :, :7]] > 0).any()          # the cord below the cut is not brain
    assert (ext[5, 5, :7] == 4).all()
    kept, _, _ = S.extend_neck(lab, img, 7, cord="keep")       # or the cord stays brain down the neck
    np.testing.assert_array_equal(kept[:, :, :7], np.pad(lab[:, :, 1:3], ((0, 0), (0, 0), (7, 0)),
                                                          mode="symmetric")[:, :, :7])
    with pytest.raises(ValueError, match="cord"):
        S.extend_neck(lab, img, 7, cord="somewhere")


def test_a_skull_stripped_map_gets_no_neck():
    lab, img = _toy_head()
    stripped = np.where(S.SUB_TO_CLASS[lab] > 0, lab, 0).astype(np.uint8)
    out, out_img, added = S.extend_neck(stripped, img, 7)
    assert added == 0 and out is stripped and out_img is img


@pytest.fixture(scope="module")
def sample_map():
    t1 = read_nifti(sample_path("colin27_t1.nii.gz"))
    mask = read_nifti(sample_path("colin27_brainmask.nii.gz"))
    return S.label_map_from_arrays("colin27", t1.data.astype(np.float32), np.asarray(mask.data) > 0, t1.affine,
                                   spacing_mm=4)


def test_synthesis_with_a_neck_puts_background_tissue_below_the_brain(sample_map):
    """With the neck on and the window moved down, the scan shows head tissue under the brain's lowest
    slice (the real Colin27 stops just below its cerebellum), labelled background."""
    cfg = S.SynthConfig(out_shape=(48, 56, 48), p_neck=1.0, neck_vox=20, neck_shift_vox=12.0, shift_vox=0.0,
                        rotation_deg=0.0, scale_range=(1.0, 1.0), deform_vox=0.0, p_permute=0.0, p_flip=0.0,
                        p_thick=0.0, p_real=1.0, p_fov_cut=0.0)
    plain = S.SynthConfig(**{**cfg.__dict__, "p_neck": 0.0})
    img_n, cls_n = S.synthesize(sample_map, np.random.default_rng(3), cfg)
    img_p, cls_p = S.synthesize(sample_map, np.random.default_rng(3), plain)

    def below(img, cls):
        z0 = int(np.nonzero((cls > 0).any(axis=(0, 1)))[0][0])
        return int((img[:, :, :z0] > 0.05).sum()), cls[:, :, :z0]

    tissue_n, cls_below = below(img_n, cls_n)
    tissue_p, _ = below(img_p, cls_p)
    assert tissue_n > 2 * max(tissue_p, 1)
    assert not (cls_below > 0).any()
    # the brain itself is the same anatomy, only higher in the window (the window moved down the neck)
    assert abs(int((cls_n > 0).sum()) - int((cls_p > 0).sum())) < 0.1 * int((cls_p > 0).sum())
