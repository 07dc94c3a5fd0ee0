"""How read_nifti decides between a scan and a label map, and what dtype it gives."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_vit3d.errors import VolumeError
from napari_vit3d.io import read_nifti


def _save(tmp_path, name, data):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, 1.0, 2.0, 1.0])), str(path))
    return path


@pytest.mark.parametrize("name, data, kind, dtype", [
    ("case_seg.nii.gz", np.arange(60, dtype=np.int16).reshape(5, 4, 3) % 5, "labels", np.int16),
    ("aparc+aseg.nii", np.arange(60, dtype=np.int32).reshape(5, 4, 3) * 40, "labels", np.int32),
    # float label maps (common from some pipelines) become the smallest integer type
    ("brain_mask.nii.gz", (np.arange(60).reshape(5, 4, 3) % 2).astype(np.float32), "labels", np.uint8),
    ("lesion_labels.nii.gz", (np.arange(60).reshape(5, 4, 3) * 10.0 - 50).astype(np.float32), "labels", np.int16),
    # named like labels but continuous values: a probability map stays an image
    ("seg_probability.nii.gz", np.linspace(0, 1, 60, dtype=np.float32).reshape(5, 4, 3), "image", np.float32),
    # integer scans whose names do not say labels stay images
    ("T1.nii.gz", np.arange(60, dtype=np.int16).reshape(5, 4, 3), "image", np.int16),
    ("T1_masked.nii.gz", np.arange(60, dtype=np.int16).reshape(5, 4, 3), "image", np.int16),
    ("T1_segmented_input.nii.gz", np.arange(60, dtype=np.uint8).reshape(5, 4, 3), "image", np.uint8),
    # a 4D file is a multi-channel scan even when named like labels
    ("seg_channels.nii.gz", np.arange(120, dtype=np.uint8).reshape(5, 4, 3, 2), "image", np.uint8),
])
def test_scan_or_label_map_by_name_and_values(tmp_path, name, data, kind, dtype):
    vol = read_nifti(_save(tmp_path, name, data))
    assert vol.metadata["kind"] == kind
    assert vol.data.dtype == dtype
    assert np.array_equal(vol.data, data)


def test_user_choice_as_labels(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(5, 4, 3)
    path = _save(tmp_path, "scan.nii.gz", data)
    vol = read_nifti(path, as_labels=True)
    assert vol.metadata["kind"] == "labels" and vol.data.dtype == np.uint8
    assert np.array_equal(vol.data, data)
    with pytest.raises(VolumeError, match="non-integer values"):
        read_nifti(_save(tmp_path, "half.nii.gz", data + 0.5), as_labels=True)
    assert read_nifti(_save(tmp_path, "labels_by_name_seg.nii.gz", data.astype(np.uint8)),
                      as_labels=False).metadata["kind"] == "image"


def test_scaled_integer_file_is_read_as_float(tmp_path):
    img = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(5, 4, 3), np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "scaled_seg.nii.gz"
    nib.save(img, str(path))
    vol = read_nifti(path)
    np.testing.assert_allclose(vol.data, np.arange(60).reshape(5, 4, 3) * 0.5 + 10.0)


def test_io_never_imports_napari_or_qt():
    import subprocess
    import sys

    code = ("import sys, napari_vit3d.io, napari_vit3d.io.layers, napari_vit3d.io.samples, napari_vit3d.io.nifti; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', "
            "'PySide6', 'vispy')); "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
