"""DICOM reading against independent references: series written with pydicom alone (tests/_formats_helpers),
pydicom's own test files (real scanner series, RT dose, single slices), and an enhanced multi-frame file
converted by highdicom. Every refusal is one plain line."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _formats_helpers import LPS_TO_RAS, colin_crop, oblique_orientation, write_dicom_series

from napari_vit3d.errors import VolumeError
from napari_vit3d.io.formats import is_scan_path, list_dicom_series, read_scan

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

DICOMDIR_TESTS = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"
SPACING = (1.1, 0.9)  # PixelSpacing: between rows, between columns
STEP = 2.0


def _one_line(exc, *words):
    msg = str(exc)
    assert "\n" not in msg and "Traceback" not in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return colin_crop((40, 48, 36))


@pytest.fixture(scope="module")
def oblique_series(tmp_path_factory, crop):
    """The Colin27 crop as an oblique (mostly sagittal) MR series: 0.9 × 1.1 mm pixels, 2 mm slices,
    rescaled values (slope 2, intercept -100), shuffled files with random names and InstanceNumbers."""
    folder = tmp_path_factory.mktemp("oblique") / "series"
    r, c = oblique_orientation()
    values = crop.astype(np.float64) * 2 - 100
    info = write_dicom_series(folder, values, row_dir=r, col_dir=c, origin_lps=(31.5, -12.25, 40.0),
                              pixel_spacing=SPACING, slice_step=STEP, slope=2.0, intercept=-100.0)
    info["folder"], info["values"] = folder, values
    return info


def _world_from_tags(ds, row, col) -> np.ndarray:
    """RAS mm of pixel (row, col) from the file's own tags: IPP + col·Δc·F_row + row·Δr·F_col (LPS → RAS)."""
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    d_row, d_col = (float(v) for v in ds.PixelSpacing)
    lps = ipp + col * d_col * iop[:3] + row * d_row * iop[3:]
    return LPS_TO_RAS @ lps


def test_oblique_series_lands_where_the_tags_say(oblique_series):
    vol = read_scan(oblique_series["folder"])
    assert vol.data.shape == (40, 48, 36)
    inv = np.linalg.inv(vol.affine)
    rng = np.random.default_rng(7)
    files = sorted(oblique_series["folder"].iterdir())
    for _ in range(50):
        f = files[rng.integers(len(files))]
        ds = pydicom.dcmread(f)
        row, col = int(rng.integers(ds.Rows)), int(rng.integers(ds.Columns))
        world = _world_from_tags(ds, row, col)
        ijk = (inv @ np.append(world, 1.0))[:3]
        np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-3)  # lands exactly on a voxel centre
        i, j, k = (int(v) for v in np.round(ijk))
        expected = float(ds.pixel_array[row, col]) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert vol.data[i, j, k] == pytest.approx(expected)
        np.testing.assert_allclose(vol.affine @ [i, j, k, 1], np.append(world, 1.0), atol=1e-4)
    np.testing.assert_allclose(vol.spacing, [SPACING[1], SPACING[0], STEP], atol=1e-5)
    assert vol.data.dtype == np.float32  # slope 2: rescaled values need floats


def test_values_and_axis_order_match_what_was_written(oblique_series):
    vol = read_scan(oblique_series["folder"])
    np.testing.assert_array_equal(vol.data, oblique_series["values"].astype(np.float32))
    meta = vol.metadata["dicom"]
    assert meta["SOPInstanceUIDs"] == oblique_series["sop_uids"]  # k order = position order, not file order
    assert meta["SeriesInstanceUID"] == oblique_series["series_uid"]
    assert meta["Modality"] == "MR" and meta["SeriesDescription"] == "test series"
    assert [Path(f).name for f in meta["files"]] == [Path(f).name for f in oblique_series["files"]]


def test_no_patient_identity_in_metadata(oblique_series):
    vol = read_scan(oblique_series["folder"])
    text = repr(vol.metadata) + repr(vol.name)
    for secret in ("Doe", "Jane", "PAT-SECRET-123", "19700101"):
        assert secret not in text


def test_integer_ct_stays_integer_in_hounsfield_units(tmp_path, crop):
    folder = tmp_path / "ct"
    hu = crop.astype(np.int32) * 4 - 1024
    write_dicom_series(folder, hu, row_dir=(1, 0, 0), col_dir=(0, 1, 0), origin_lps=(0, 0, 0), pixel_spacing=(0.5, 0.5),
                       slice_step=1.25, intercept=-1024, modality="CT")
    vol = read_scan(folder)
    assert vol.data.dtype == np.int16
    np.testing.assert_array_equal(vol.data, hu)
    assert vol.metadata["dicom"]["units"] == "HU"
    # axial LPS: i runs to the patient's left (−R), j posterior (−A), k superior
    np.testing.assert_allclose(vol.affine[:3, :3], np.diag([-0.5, -0.5, 1.25]), atol=1e-6)


def test_zip_of_a_series_reads_like_the_folder(oblique_series, tmp_path):
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in oblique_series["folder"].iterdir():
            zf.write(f, f"nested/dir/{f.name}")
        zf.writestr("README.txt", "not dicom")
        zf.writestr("../../escaped.dcm", Path(get_testdata_file("CT_small.dcm")).read_bytes())  # path traversal
    a, b = read_scan(archive, series=oblique_series["series_uid"]), read_scan(oblique_series["folder"])
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_allclose(a.affine, b.affine)
    assert not (tmp_path.parent.parent / "escaped.dcm").exists()  # members are never extracted
    assert a.metadata["dicom"]["archive"] == str(archive.resolve())


def test_zip_bomb_is_refused_before_reading(oblique_series, tmp_path):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", b"\0" * 5_000_000)  # compresses to a few kB
    with pytest.raises(VolumeError) as info:
        read_scan(archive, max_bytes=1_000_000)
    _one_line(info.value, "big.zip", "uncompressed", "limit")


def test_enhanced_multiframe_converted_by_highdicom(tmp_path, crop):
    hd = pytest.importorskip("highdicom")
    small = crop[:20, :24, :8]
    r, c = oblique_orientation()
    info = write_dicom_series(tmp_path / "legacy", small, row_dir=r, col_dir=c, origin_lps=(1, 2, 3),
                              pixel_spacing=SPACING, slice_step=STEP)
    legacy = [pydicom.dcmread(f) for f in info["files"]][::-1]
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(legacy, series_instance_uid=hd.UID(), series_number=9,
                                                        sop_instance_uid=hd.UID(), instance_number=1)
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path)
    vol, ref = read_scan(path), read_scan(tmp_path / "legacy")
    np.testing.assert_array_equal(vol.data, ref.data)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-5)
    # and each frame's own PlanePositionSequence agrees with the affine
    frames = vol.metadata["dicom"]["frames"]
    for k, f in enumerate(frames):
        ipp = enhanced.PerFrameFunctionalGroupsSequence[f].PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(vol.affine @ [0, 0, k, 1], np.append(LPS_TO_RAS @ np.array(ipp, float), 1),
                                   atol=1e-4)


def test_rt_dose_multiframe_with_grid_frame_offsets():
    path = get_testdata_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    vol = read_scan(path)
    assert vol.data.shape == (int(ds.Columns), int(ds.Rows), int(ds.NumberOfFrames))
    ipp = np.array(ds.ImagePositionPatient, float)
    offsets = np.array(ds.GridFrameOffsetVector, float)
    d_row, d_col = (float(v) for v in ds.PixelSpacing)
    for i, j, k in [(0, 0, 0), (3, 7, 5), (9, 9, 14)]:  # IOP is axial here: +x columns, +y rows, +z frames
        lps = ipp + np.array([i * d_col, j * d_row, offsets[k]])
        np.testing.assert_allclose(vol.affine @ [i, j, k, 1], np.append(LPS_TO_RAS @ lps, 1), atol=1e-6)
        assert vol.data[i, j, k] == pytest.approx(ds.pixel_array[k, j, i] * float(ds.DoseGridScaling))


def test_real_scanner_ct_series_from_pydicom():
    folder = DICOMDIR_TESTS / "98892001" / "CT5N"
    vol = read_scan(folder)
    files = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    z = sorted(float(d.ImagePositionPatient[2]) for d in files)
    assert vol.data.shape == (16, 16, 5)
    np.testing.assert_allclose(vol.affine @ [0, 0, 0, 1], [*(LPS_TO_RAS @ [-72.199997, -143.0, z[0]]), 1], atol=1e-4)
    np.testing.assert_allclose(vol.spacing[2], 2.5, atol=1e-6)
    lowest = min(files, key=lambda d: float(d.ImagePositionPatient[2]))
    expected = lowest.pixel_array.T * float(lowest.RescaleSlope) + float(lowest.RescaleIntercept)
    np.testing.assert_array_equal(vol.data[:, :, 0], expected)


def test_list_dicom_series_and_choose_one():
    parent = DICOMDIR_TESTS / "98892001"
    series = list_dicom_series(parent)
    assert [s.n_files for s in series] == [2, 5]
    assert all(s.modality == "CT" for s in series)
    vol = read_scan(parent, series=series[1].uid)
    assert vol.data.shape == (16, 16, 5)


def test_is_scan_path(tmp_path, oblique_series):
    assert is_scan_path(oblique_series["folder"])
    assert is_scan_path(oblique_series["files"][0])  # no extension, DICM marker
    (tmp_path / "empty").mkdir()
    assert not is_scan_path(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    assert not is_scan_path(tmp_path / "notes.txt")
    assert is_scan_path("x.nii.gz") and is_scan_path("y.seg.nrrd") and is_scan_path("z.mgz")


# -- refusals: one line each -------------------------------------------------------------------------------


def test_single_slice_is_refused_clearly():
    with pytest.raises(VolumeError) as info:
        read_scan(get_testdata_file("CT_small.dcm"))
    _one_line(info.value, "CT_small.dcm", "single 2D slice", "folder")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "a.txt").write_text("no dicom here")
    with pytest.raises(VolumeError) as info:
        read_scan(tmp_path)
    _one_line(info.value, str(tmp_path), "no DICOM images")
    # a folder of non-image DICOM objects only (a DICOMDIR)
    only_dir = tmp_path / "only_dicomdir"
    only_dir.mkdir()
    shutil.copy(DICOMDIR_TESTS / "DICOMDIR", only_dir / "DICOMDIR.dcm")
    with pytest.raises(VolumeError) as info:
        read_scan(only_dir)
    _one_line(info.value, "no DICOM images")


def test_two_series_need_a_choice(tmp_path, crop):
    small = crop[:8, :8, :4]
    for n, desc in ((1, "T1 sag"), (2, "T2 ax")):
        write_dicom_series(tmp_path, small, row_dir=(1, 0, 0), col_dir=(0, 1, 0), origin_lps=(0, 0, 0),
                           pixel_spacing=(1, 1), slice_step=1, series_description=desc, series_number=n, seed=n)
    with pytest.raises(VolumeError) as info:
        read_scan(tmp_path)
    _one_line(info.value, "holds 2 DICOM series", "--series UID", "T1 sag", "T2 ax", "4 slices", "MR")
    uids = [s.uid for s in list_dicom_series(tmp_path)]
    assert all(u in str(info.value) for u in uids)
    with pytest.raises(VolumeError) as info:
        read_scan(tmp_path, series="1.2.3.4")
    _one_line(info.value, "no series 1.2.3.4")


def test_tilted_series_is_refused(tmp_path, crop):
    small = crop[:10, :10, :6]
    tilt = np.tan(np.deg2rad(12))
    positions = [np.array([0.0, k * 2.0 * tilt, k * 2.0]) for k in range(6)]  # CT gantry tilt: y drifts with z
    write_dicom_series(tmp_path, small, row_dir=(1, 0, 0), col_dir=(0, 1, 0), origin_lps=(0, 0, 0), pixel_spacing=(1, 1),
                       slice_step=2.0, positions=positions)
    with pytest.raises(VolumeError) as info:
        read_scan(tmp_path)
    _one_line(info.value, "tilted", "12.0°")


def test_gapped_series_is_refused(tmp_path, crop):
    write_dicom_series(tmp_path, crop[:10, :10, :8], row_dir=(1, 0, 0), col_dir=(0, 1, 0), origin_lps=(0, 0, 10),
                       pixel_spacing=(1, 1), slice_step=2.0, skip=(4,))
    with pytest.raises(VolumeError) as info:
        read_scan(tmp_path)
    _one_line(info.value, "missing slices", "4.000 mm", "16.000 and 20.000")


def test_uneven_and_duplicate_slices_are_refused(tmp_path, crop):
    small = crop[:10, :10, :5]
    uneven = [np.array([0.0, 0.0, z]) for z in (0.0, 2.0, 4.0, 6.2, 8.2)]
    write_dicom_series(tmp_path / "uneven", small, row_dir=(1, 0, 0), col_dir=(0, 1, 0), origin_lps=(0, 0, 0),
                       pixel_spacing=(1, 1), slice_step=2.0, positions=uneven)
    with pytest.raises(VolumeError) as info:
        read_scan(tmp_path / "uneven")
    _one_line(info.value, "uneven slice spacing", "4.000 and 6.200")
    dup = [np.array([0.0, 0.0, z]) for z in (0.0, 2.0, 2.0, 4.0, 6.0)]
    write_dicom_series(tmp_path / "dup", small, row_dir=(1, 0, 0), col_dir=(0, 1, 0), origin_lps=(0, 0, 0),
                       pixel_spacing=(1, 1), slice_step=2.0, positions=dup)
    with pytest.raises(VolumeError) as info:
        read_scan(tmp_path / "dup")
    _one_line(info.value, "same position")


def test_mixed_orientations_from_a_real_localizer():
    with pytest.raises(VolumeError) as info:
        read_scan(DICOMDIR_TESTS / "98892003" / "MR700")
    _one_line(info.value, "slice orientations")


def test_truncated_files_are_refused(tmp_path, oblique_series):
    folder = tmp_path / "series"
    shutil.copytree(oblique_series["folder"], folder)
    victim = folder / Path(oblique_series["files"][5]).name
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 700])  # pixel data cut short
    with pytest.raises(VolumeError) as info:
        read_scan(folder)
    _one_line(info.value, victim.name, "truncated or corrupt")
    victim.write_bytes(data[:300])  # cut inside the header
    with pytest.raises(VolumeError) as info:
        read_scan(folder)
    _one_line(info.value, victim.name, "truncated or corrupt")


def test_missing_library_message(monkeypatch, oblique_series):
    import builtins

    real_import = builtins.__import__

    def no_pydicom(name, *args, **kwargs):
        if name == "pydicom" or name.startswith("pydicom."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pydicom)
    import importlib

    monkeypatch.setattr(importlib, "import_module", lambda name, *a: no_pydicom(name))
    with pytest.raises(VolumeError) as info:
        read_scan(oblique_series["folder"])
    _one_line(info.value, 'pip install "napari-vit3d[formats]"', "pydicom")


def test_unknown_extension_and_missing_path(tmp_path):
    p = tmp_path / "scan.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(VolumeError) as info:
        read_scan(p)
    _one_line(info.value, "scan.png", "not a scan format")
    with pytest.raises(VolumeError) as info:
        read_scan(tmp_path / "nope")
    _one_line(info.value, "no such file")
    assert os.path.exists(tmp_path)
