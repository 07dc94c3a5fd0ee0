"""The bundled samples are the real shared scans (byte-identical copies) and open with their geometry."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_vit3d.errors import VolumeError
from napari_vit3d.io import read_nifti
from napari_vit3d.io.samples import SAMPLES, sample_path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_samples_are_the_shared_scans(shared_data):
    assert _sha(sample_path("colin27_t1")) == _sha(shared_data / "colin27" / "ch2.nii.gz")
    assert _sha(sample_path("mni152_2009a_t1.nii.gz")) == _sha(
        shared_data / "mni152_2009a" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")


def test_brain_mask_is_the_documented_derivation_of_ch2bet(shared_data):
    bet_img = nib.load(str(shared_data / "colin27" / "ch2bet.nii.gz"))
    bet = np.asanyarray(bet_img.dataobj)
    mask = read_nifti(sample_path("colin27_brainmask"))
    assert mask.metadata["kind"] == "labels" and mask.data.dtype == np.uint8
    np.testing.assert_allclose(mask.affine, bet_img.affine)
    m = mask.data.astype(bool)
    assert set(np.unique(mask.data)) == {0, 1}
    assert ndi.label(m)[1] == 1  # one component
    # every voxel of ch2bet's largest component is in the mask; the rest is fill of enclosed holes
    lab, _ = ndi.label(bet > 0)
    largest = lab == np.bincount(lab.ravel())[1:].argmax() + 1
    assert np.all(m[largest])
    assert np.array_equal(ndi.binary_fill_holes(m), m)
    assert (m & ~largest).sum() < 0.01 * m.sum()


@pytest.mark.parametrize("name", list(SAMPLES))
def test_samples_open_with_their_geometry(name):
    path = sample_path(name)
    ref = nib.load(str(path))
    vol = read_nifti(path)
    assert vol.data.shape == ref.shape
    np.testing.assert_allclose(vol.affine, ref.affine)
    assert vol.metadata["kind"] == SAMPLES[name].kind


def test_unknown_sample_is_a_clear_error():
    with pytest.raises(VolumeError, match="unknown sample 'brain'; available: colin27_t1"):
        sample_path("brain")
