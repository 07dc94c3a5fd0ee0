"""The formats through the CLI, the napari reader and batch inputs: a DICOM series segments onto the
same world grid as the NIfTI of the same scan; refusals are exit code 2 with one line; the reader
claims DICOM folders only and has no side effects."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from _formats_helpers import colin_crop, write_dicom_series
from conftest import write_spec

from napari_vit3d.cli import main
from napari_vit3d.errors import VolumeError

pydicom = pytest.importorskip("pydicom")

SPACING, STEP = (1.1, 0.9), 2.0


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory):
    spec = {"name": "tiny-segformer", "architecture": "segformer3d", "in_channels": 1, "channel_names": ["T1"],
            "spacing": [2.0, 2.0, 2.0], "roi_size": [32, 32, 32], "normalization": {"kind": "zscore_nonzero"},
            "arch_kwargs": {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
                            "decoder_dim": 16},
            "labels": [{"index": 0, "name": "background"}, {"index": 1, "name": "brain"},
                       {"index": 2, "name": "csf"}]}
    return write_spec(tmp_path_factory.mktemp("model"), spec, "tiny")


@pytest.fixture(scope="module")
def same_scan_twice(tmp_path_factory):
    """One Colin27 crop as a DICOM series (LPS axial, 0.9 × 1.1 × 2 mm) and as a NIfTI file whose affine
    is computed here from the DICOM tags by hand."""
    root = tmp_path_factory.mktemp("same")
    crop = colin_crop((40, 36, 20), start=(70, 90, 70))
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    origin = np.array([-20.0, 15.0, 30.0])
    info = write_dicom_series(root / "dicom", crop, row_dir=row, col_dir=col, origin_lps=origin,
                              pixel_spacing=SPACING, slice_step=STEP)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * SPACING[1], col * SPACING[0], [0, 0, STEP], origin
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    nii = root / "same.nii.gz"
    img = nib.Nifti1Image(crop, ras)
    img.set_qform(ras, code=1)
    img.set_sform(ras, code=1)
    nib.save(img, str(nii))
    return {"dicom": root / "dicom", "nifti": nii, "affine": ras, "crop": crop, "info": info}


def test_segment_dicom_lands_on_the_same_world_grid_as_nifti(same_scan_twice, spec_path, tmp_path):
    out_d, out_n = tmp_path / "from_dicom.nii.gz", tmp_path / "from_nifti.nii.gz"
    torch = pytest.importorskip("torch")
    for src, out in ((same_scan_twice["dicom"], out_d), (same_scan_twice["nifti"], out_n)):
        torch.manual_seed(0)  # the tiny model has random weights: the same ones for both runs
        rc = main(["segment", str(src), "-o", str(out), "--model", str(spec_path), "--device", "cpu", "--quiet"])
        assert rc == 0
    a, b = nib.load(str(out_d)), nib.load(str(out_n))
    assert a.shape == b.shape == same_scan_twice["crop"].shape
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    np.testing.assert_allclose(a.affine, same_scan_twice["affine"], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))  # same voxels in, same labels out


def test_info_on_a_dicom_folder(same_scan_twice, capsys):
    assert main(["info", str(same_scan_twice["dicom"]), "--json"]) == 0
    out = capsys.readouterr().out
    assert "40" in out and "36" in out and "Doe" not in out and "PAT-SECRET" not in out


def test_two_series_exit_code_2_with_one_line_then_series_option(tmp_path, spec_path, capsys):
    small = colin_crop((24, 20, 10))
    for n in (1, 2):
        write_dicom_series(tmp_path / "two", small, row_dir=(1, 0, 0), col_dir=(0, 1, 0), origin_lps=(0, 0, 0),
                           pixel_spacing=(1.5, 1.5), slice_step=2.0, series_description=f"run {n}", series_number=n,
                           seed=n)
    out = tmp_path / "labels.nii.gz"
    rc = main(["segment", str(tmp_path / "two"), "-o", str(out), "--model", str(spec_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "--series UID" in err and "Traceback" not in err
    assert not out.exists()
    from napari_vit3d.io import list_dicom_series

    uid = list_dicom_series(tmp_path / "two")[1].uid
    rc = main(["segment", str(tmp_path / "two"), "--series", uid, "-o", str(out), "--model", str(spec_path),
               "--device", "cpu", "--quiet"])
    assert rc == 0 and nib.load(str(out)).shape == (24, 20, 10)


def test_tilted_series_exit_code_2(tmp_path, capsys):
    small = colin_crop((10, 10, 6))
    positions = [np.array([0.0, k * 1.0, k * 2.0]) for k in range(6)]
    write_dicom_series(tmp_path / "tilt", small, row_dir=(1, 0, 0), col_dir=(0, 1, 0), origin_lps=(0, 0, 0),
                       pixel_spacing=(1, 1), slice_step=2.0, positions=positions)
    assert main(["info", str(tmp_path / "tilt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "tilted" in err


# -- napari reader ---------------------------------------------------------------------------------------


def test_reader_claims_dicom_folders_only(same_scan_twice, tmp_path):
    from napari_vit3d._napari.reader import get_reader

    assert callable(get_reader(str(same_scan_twice["dicom"])))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"\x89PNG" + bytes(300))
    assert get_reader(str(tmp_path / "photos")) is None
    import zipfile

    with zipfile.ZipFile(tmp_path / "docs.zip", "w") as zf:
        zf.writestr("a.txt", "hello")
    assert get_reader(str(tmp_path / "docs.zip")) is None
    for name in ("a.nrrd", "b.seg.nrrd", "c.mha", "d.mhd", "e.mgz", "f.mgh", "g.nhdr"):
        assert callable(get_reader(str(tmp_path / name)))


def test_reader_layer_lies_where_the_nifti_layer_lies(same_scan_twice, monkeypatch):
    napari = pytest.importorskip("napari")
    from napari_vit3d._napari.reader import get_reader

    def no_viewer():  # a reader must not touch the viewer (camera, dims)
        raise AssertionError("the reader asked for the current viewer")

    monkeypatch.setattr(napari, "current_viewer", no_viewer)
    (d_data, d_kw, d_type), = get_reader(str(same_scan_twice["dicom"]))(str(same_scan_twice["dicom"]))
    (n_data, n_kw, n_type), = get_reader(str(same_scan_twice["nifti"]))(str(same_scan_twice["nifti"]))
    assert d_type == n_type == "image"
    np.testing.assert_array_equal(d_data, n_data)
    for key in ("scale", "translate"):
        np.testing.assert_allclose(d_kw[key], n_kw[key], atol=1e-4)


def test_reader_lists_several_series_in_one_line(tmp_path):
    from napari_vit3d._napari.reader import get_reader

    small = colin_crop((8, 8, 4))
    for n in (1, 2):
        write_dicom_series(tmp_path, small, row_dir=(1, 0, 0), col_dir=(0, 1, 0), origin_lps=(0, 0, 0),
                           pixel_spacing=(1, 1), slice_step=1, series_number=n, seed=n)
    with pytest.raises(VolumeError) as info:
        get_reader(str(tmp_path))(str(tmp_path))
    assert "\n" not in str(info.value) and "2 DICOM series" in str(info.value)


# -- batch inputs ------------------------------------------------------------------------------------------


def test_batch_inputs_count_a_dicom_folder_as_one_scan(same_scan_twice, tmp_path):
    import shutil

    from napari_vit3d.batch.inputs import find_inputs

    root = tmp_path / "cohort"
    shutil.copytree(same_scan_twice["dicom"], root / "p1" / "series")
    shutil.copy(same_scan_twice["nifti"], root / "p2.nii.gz")
    (root / "p3").mkdir()
    (root / "p3" / "scan.nrrd").write_bytes(b"NRRD0004\n")
    (root / "p3" / "notes.txt").write_text("not a scan")
    found = find_inputs([root])
    assert found == sorted([root / "p1" / "series", root / "p2.nii.gz", root / "p3" / "scan.nrrd"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeError, match="no scans"):
        find_inputs([tmp_path / "empty"])


def test_segment_writes_seg_nrrd_and_dicom_seg_chosen_by_the_extension(same_scan_twice, spec_path, tmp_path, capsys):
    """``segment -o X.seg.nrrd`` / ``-o X.dcm``: the same labels as the NIfTI run, read back by pynrrd and
    highdicom on the source grid with the model's label names; DICOM SEG of a NIfTI input is refused first."""
    import nrrd

    torch = pytest.importorskip("torch")
    outs = {}
    for name in ("labels.nii.gz", "labels.seg.nrrd", "labels.dcm"):
        torch.manual_seed(0)
        assert main(["segment", str(same_scan_twice["dicom"]), "-o", str(tmp_path / name), "--model", str(spec_path),
                     "--device", "cpu", "--quiet"]) == 0
        outs[name] = tmp_path / name
    ref = np.asarray(nib.load(str(outs["labels.nii.gz"])).dataobj)
    data, header = nrrd.read(str(outs["labels.seg.nrrd"]))
    np.testing.assert_array_equal(data, ref)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ same_scan_twice["affine"]
    np.testing.assert_allclose(np.asarray(header["space directions"], float).T, lps[:3, :3], atol=1e-4)
    names = {header[k] for k in header if k.endswith("_Name")}
    assert names and names <= {"brain", "csf"}
    hd = pytest.importorskip("highdicom")
    seg = hd.seg.segread(str(outs["labels.dcm"]))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == same_scan_twice["info"]["series_uid"]
    assert {d.SegmentLabel for d in seg.SegmentSequence} == names
    capsys.readouterr()
    assert main(["segment", str(same_scan_twice["nifti"]), "-o", str(tmp_path / "x.dcm"), "--model", str(spec_path),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "DICOM SEG references the DICOM series" in err and len(err.splitlines()) == 1
    assert main(["segment", str(same_scan_twice["nifti"]), "-o", str(tmp_path / "x.png"), "--model", str(spec_path),
                 "--quiet"]) == 2
    assert "cannot write a label map there" in capsys.readouterr().err
    assert not (tmp_path / "x.dcm").exists()
