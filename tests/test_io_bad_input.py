"""Bad input gives one clear line (a Vit3dError), never a crash, a hang or a huge allocation,
both through ``io.read_nifti`` and through the napari reader."""

from __future__ import annotations

import gzip
import os
import tracemalloc
import warnings

import nibabel as nib
import numpy as np
import pytest
from conftest import nibabel_test_file

from napari_vit3d._napari.reader import get_reader
from napari_vit3d.errors import Vit3dError, VolumeError, VolumeWarning
from napari_vit3d.io import read_nifti


def _save(img, path):
    nib.save(img, str(path))
    return path


def _small(shape=(6, 5, 4), dtype=np.float32):
    return nib.Nifti1Image(np.arange(np.prod(shape), dtype=dtype).reshape(shape), np.eye(4))


def _absurd_header(path, dims, dtype=np.uint8, *, nifti2=False):
    """A tiny file whose header claims ``dims`` voxels (written by hand: nibabel would allocate).
    NIfTI-1 dims are int16 (≤ 32767); NIfTI-2 dims are int64."""
    hdr = nib.Nifti2Header() if nifti2 else nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape((2, 2, 2))
    hdr["dim"][0] = len(dims)
    hdr["dim"][1:1 + len(dims)] = dims
    hdr.set_qform(np.eye(4), code=1)
    hdr["vox_offset"] = hdr.single_vox_offset
    raw = hdr.binaryblock + b"\0" * (int(hdr.single_vox_offset) - len(hdr.binaryblock)) + bytes(64)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)
    return path


def _make(case, tmp_path):
    """(path, words the message must contain) for each bad-input case."""
    if case == "not_nifti_content":
        p = tmp_path / "notes.nii"
        p.write_text("this is a text file, not a scan\n" * 20)
        return p, "not a valid nifti"
    if case == "not_nifti_name":
        p = tmp_path / "scan.png"
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
        return p, "not a nifti file"
    if case == "truncated_gzip":
        full = _save(_small((20, 20, 20)), tmp_path / "full.nii.gz").read_bytes()
        p = tmp_path / "truncated.nii.gz"
        p.write_bytes(full[: len(full) // 2])
        return p, "truncated"
    if case == "truncated_nii":
        full = _save(_small((20, 20, 20)), tmp_path / "full.nii").read_bytes()
        p = tmp_path / "truncated.nii"
        p.write_bytes(full[: len(full) - 1000])
        return p, "truncated"
    if case == "zero_bytes":
        p = tmp_path / "empty.nii.gz"
        p.write_bytes(b"")
        return p, "empty"
    if case == "2d":
        return _save(nib.Nifti1Image(np.zeros((8, 9), np.float32), np.eye(4)), tmp_path / "slice.nii.gz"), "2d"
    if case == "5d":
        return _save(nib.Nifti1Image(np.zeros((4, 4, 4, 2, 3), np.float32), np.eye(4)), tmp_path / "five.nii.gz"), "5d"
    if case == "6d":
        return _save(nib.Nifti1Image(np.zeros((3, 3, 3, 1, 2, 2), np.float32), np.eye(4)), tmp_path / "six.nii"), "6d"
    if case == "time_series":
        return nibabel_test_file("functional.nii"), "time series"
    if case == "all_nan":
        return _save(nib.Nifti1Image(np.full((4, 4, 4), np.nan, np.float32), np.eye(4)), tmp_path / "nan.nii.gz"), "nan"
    if case == "absurd_dims":
        return _absurd_header(tmp_path / "huge.nii", (32000, 32000, 32000)), "refusing to allocate"
    if case == "absurd_dims_gz":
        return (_absurd_header(tmp_path / "huge.nii.gz", (100000, 100000, 100000), np.float64, nifti2=True),
                "refusing to allocate")
    if case == "big_claim_tiny_file":  # under the size limit, but the file holds almost nothing
        return _absurd_header(tmp_path / "big.nii", (1100, 1100, 1100)), "truncated"
    if case == "big_claim_tiny_gzip":
        return _absurd_header(tmp_path / "big.nii.gz", (1100, 1100, 1100)), "truncated"
    if case == "missing":
        return tmp_path / "nowhere" / "scan.nii.gz", "no such file"
    if case == "directory":
        p = tmp_path / "folder.nii.gz"
        p.mkdir()
        return p, "folder"
    if case == "fifo":
        p = tmp_path / "pipe.nii"
        os.mkfifo(p)
        return p, "not a regular file"
    if case == "gz_not_gzip":
        p = tmp_path / "plain.nii.gz"
        p.write_bytes(_save(_small(), tmp_path / "plain.nii").read_bytes())
        return p, "not gzip"
    if case == "no_affine":
        hdr = nib.Nifti1Header()  # sform code set, but the sform rows are all zero
        hdr.set_data_dtype(np.float32)
        hdr.set_data_shape((6, 5, 4))
        hdr["sform_code"], hdr["qform_code"] = 2, 0
        hdr["srow_x"] = hdr["srow_y"] = hdr["srow_z"] = 0
        hdr["vox_offset"] = 352
        p = tmp_path / "noaffine.nii"
        p.write_bytes(hdr.binaryblock + bytes(4) + np.ones((6, 5, 4), np.float32).tobytes())
        return p, "affine"
    raise AssertionError(case)


CASES = ["not_nifti_content", "not_nifti_name", "truncated_gzip", "truncated_nii", "zero_bytes", "2d", "5d",
         "6d", "time_series", "all_nan", "absurd_dims", "absurd_dims_gz", "big_claim_tiny_file",
         "big_claim_tiny_gzip", "missing", "directory", "fifo", "gz_not_gzip", "no_affine"]


def _assert_one_clear_line(exc, words):
    msg = str(exc)
    assert isinstance(exc, Vit3dError)
    assert "\n" not in msg and 0 < len(msg) <= 400
    assert words in msg.lower(), msg


@pytest.mark.parametrize("case", CASES)
def test_bad_input_read_nifti(tmp_path, case):
    path, words = _make(case, tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(VolumeError) as info:
            read_nifti(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _assert_one_clear_line(info.value, words)
    assert peak < 64 * 1024**2, f"{case}: {peak / 1024**2:.0f} MB allocated before failing"


@pytest.mark.parametrize("case", [c for c in CASES if c != "not_nifti_name"])
def test_bad_input_napari_reader(tmp_path, case):
    path, words = _make(case, tmp_path)
    reader = get_reader(str(path))
    assert callable(reader)
    with pytest.raises(VolumeError) as info:
        reader(str(path))
    _assert_one_clear_line(info.value, words)


def test_napari_reader_declines_other_files(tmp_path):
    path, _ = _make("not_nifti_name", tmp_path)
    assert get_reader(str(path)) is None
    assert get_reader([str(path), str(tmp_path / "b.nii")]) is None
    assert callable(get_reader([str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii")]))


def test_unreadable_path_message(tmp_path, monkeypatch):
    path = _save(_small(), tmp_path / "secret.nii.gz")
    if os.geteuid() != 0:
        path.chmod(0)
    else:  # root reads everything: make the permission check see what an ordinary user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if str(p) == str(path) else real_access(p, mode))
    with pytest.raises(VolumeError) as info:
        read_nifti(path)
    _assert_one_clear_line(info.value, "permission denied")


def test_nan_and_inf_voxels_replaced_with_warning(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(5, 4, 3)
    data[1, 2, 0], data[3, 0, 2], data[4, 3, 1] = np.nan, np.inf, -np.inf
    path = _save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "holes.nii.gz")
    for read in (lambda: read_nifti(path).data, lambda: get_reader(str(path))(str(path))[0][0]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = np.asarray(read())
        msgs = [str(w.message) for w in caught if issubclass(w.category, VolumeWarning)]
        assert len(msgs) == 1 and "3 NaN/Inf voxels" in msgs[0]
        assert np.all(np.isfinite(out))
        assert np.count_nonzero(out == 0) == 4  # voxel 0 plus the three repaired ones
    vol = read_nifti(path)
    expected = np.where(np.isfinite(data), data, 0)
    assert np.array_equal(vol.data, expected)


def test_extra_singleton_dimensions_are_accepted(tmp_path):
    path = _save(nib.Nifti1Image(np.ones((4, 5, 6, 1, 1), np.float32), np.eye(4)), tmp_path / "s.nii.gz")
    assert read_nifti(path).data.shape == (4, 5, 6)
