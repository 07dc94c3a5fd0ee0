"""NRRD, .seg.nrrd, MetaImage and MGH/MGZ files written by their own libraries (pynrrd, SimpleITK,
nibabel), never by our writers; geometry checked against hand computation or the library's own
index → physical mapping, values voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest
from _formats_helpers import LPS_TO_RAS, colin_crop, rotation

from napari_vit3d.errors import VolumeError, VolumeWarning
from napari_vit3d.io.formats import read_scan

nrrd = pytest.importorskip("nrrd")
sitk = pytest.importorskip("SimpleITK")


def _one_line(exc, *words):
    msg = str(exc)
    assert "\n" not in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)


@pytest.fixture(scope="module")
def crop():
    return colin_crop((30, 26, 22))


def _directions():
    """Row a = the step of array axis a in LPS mm: oblique and anisotropic (0.8, 1.3, 2.1 mm)."""
    rot = rotation((1.0, -0.4, 0.7), 23)
    return (rot * np.array([0.8, 1.3, 2.1])).T


def test_nrrd_lps_with_oblique_directions(tmp_path, crop):
    dirs, origin = _directions(), np.array([-12.5, 30.25, 7.0])
    path = tmp_path / "scan.nrrd"
    nrrd.write(str(path), crop, {"space": "left-posterior-superior", "space directions": dirs, "space origin": origin,
                                 "kinds": ["domain"] * 3, "encoding": "gzip"})
    vol = read_scan(path)
    np.testing.assert_array_equal(vol.data, crop)
    rng = np.random.default_rng(3)
    for ijk in rng.integers(0, crop.shape, size=(50, 3)):
        lps = origin + ijk @ dirs  # the NRRD definition: origin + Σ index_a · direction_a
        np.testing.assert_allclose(vol.affine @ np.append(ijk, 1), np.append(LPS_TO_RAS @ lps, 1), atol=1e-9)
    assert vol.metadata["kind"] == "image"


def test_nrrd_ras_and_las_spaces_and_no_space(tmp_path, crop):
    dirs, origin = _directions(), np.array([1.0, 2.0, 3.0])
    flips = {"right-anterior-superior": [1, 1, 1], "RAS": [1, 1, 1], "left-anterior-superior": [-1, 1, 1]}
    for space, sign in flips.items():
        path = tmp_path / f"{space}.nrrd"
        nrrd.write(str(path), crop, {"space": space, "space directions": dirs, "space origin": origin})
        vol = read_scan(path)
        np.testing.assert_allclose(vol.affine[:3, :3], np.array(sign)[:, None] * dirs.T, atol=1e-12)
        np.testing.assert_allclose(vol.affine[:3, 3], np.array(sign) * origin)
    # no space at all, just spacings: ITK / Slicer read it as axis-aligned LPS
    path = tmp_path / "plain.nrrd"
    nrrd.write(str(path), crop, {"spacings": [0.5, 0.6, 0.7]})
    vol = read_scan(path)
    np.testing.assert_allclose(vol.affine, np.diag([-0.5, -0.6, 0.7, 1.0]))
    # a space that names no patient direction is refused
    path = tmp_path / "scanner.nrrd"
    nrrd.write(str(path), crop, {"space": "scanner-xyz", "space directions": dirs})
    with pytest.raises(VolumeError) as info:
        read_scan(path)
    _one_line(info.value, "scanner-xyz", "no patient direction")


def test_nrrd_vector_axis_becomes_channels(tmp_path, crop):
    data = np.stack([crop, crop * 2], axis=0)  # channel axis first, as Slicer writes vector volumes
    path = tmp_path / "two_channels.nhdr"
    nrrd.write(str(path), data, {"space": "LPS", "kinds": ["vector", "domain", "domain", "domain"],
                                 "space directions": np.vstack([np.full(3, np.nan), np.diag([1.0, 1.0, 2.0])]),
                                 "space origin": [0, 0, 0]}, detached_header=True)
    vol = read_scan(path)
    assert vol.data.shape == (*crop.shape, 2)
    np.testing.assert_array_equal(vol.data[..., 1], crop * 2)
    np.testing.assert_allclose(vol.affine, np.diag([-1.0, -1.0, 2.0, 1.0]))


def test_slicer_segmentation_4d_layers_reduced_to_a_label_map(tmp_path, crop):
    """A .seg.nrrd as older Slicer writes it: one layer per segment (4D, list axis first), with segment
    names and colours in key:=value fields."""
    a, b = (crop > 60), (crop > 90)
    layers = np.stack([a & ~b, b], axis=0).astype(np.uint8)
    dirs = np.diag([-0.9, -0.9, 1.5])  # RAS-ish axes stored in LPS
    header = {"space": "left-posterior-superior", "kinds": ["list", "domain", "domain", "domain"],
              "space directions": np.vstack([np.full(3, np.nan), dirs]), "space origin": [5.0, 6.0, 7.0],
              "Segment0_ID": "Segment_1", "Segment0_Name": "grey matter", "Segment0_Color": "0.5 0.6 0.7",
              "Segment0_Layer": "0", "Segment0_LabelValue": "1",
              "Segment1_ID": "Segment_2", "Segment1_Name": "white matter", "Segment1_Color": "1 1 0.8",
              "Segment1_Layer": "1", "Segment1_LabelValue": "1",
              "Segmentation_MasterRepresentation": "Binary labelmap"}
    path = tmp_path / "brain.seg.nrrd"
    nrrd.write(str(path), layers, header)
    vol = read_scan(path)
    assert vol.metadata["kind"] == "labels" and vol.data.ndim == 3
    np.testing.assert_array_equal(vol.data, np.where(b, 2, np.where(a, 1, 0)))
    assert vol.metadata["label_names"] == {0: "background", 1: "grey matter", 2: "white matter"}
    colours = {e["index"]: e["color"] for e in vol.metadata["label_table"]["labels"]}
    assert colours[1][:3] == pytest.approx([0.5, 0.6, 0.7])
    np.testing.assert_allclose(vol.affine[:3, :3], LPS_TO_RAS[:3, :3] @ dirs.T)
    np.testing.assert_allclose(vol.affine[:3, 3], [-5.0, -6.0, 7.0])


def test_overlapping_segments_warn(tmp_path, crop):
    layers = np.stack([crop > 50, crop > 70], axis=0).astype(np.uint8)  # the second lies inside the first
    header = {"space": "LPS", "kinds": ["list", "domain", "domain", "domain"],
              "space directions": np.vstack([np.full(3, np.nan), np.eye(3)]), "space origin": [0, 0, 0],
              "Segment0_Name": "outer", "Segment0_Layer": "0", "Segment0_LabelValue": "1",
              "Segment1_Name": "inner", "Segment1_Layer": "1", "Segment1_LabelValue": "1"}
    path = tmp_path / "overlap.seg.nrrd"
    nrrd.write(str(path), layers, header)
    with pytest.warns(VolumeWarning, match="several segments"):
        vol = read_scan(path)
    assert set(np.unique(vol.data).tolist()) <= {0, 1, 2}


def test_nrrd_truncated_and_oversized(tmp_path, crop):
    path = tmp_path / "scan.nrrd"
    nrrd.write(str(path), crop, {"encoding": "raw", "space": "LPS", "space directions": np.eye(3)})
    data = path.read_bytes()
    cut = tmp_path / "cut.nrrd"
    cut.write_bytes(data[:-500])
    with pytest.raises(VolumeError) as info:
        read_scan(cut)
    _one_line(info.value, "cut.nrrd", "truncated or corrupt")
    with pytest.raises(VolumeError) as info:
        read_scan(path, max_bytes=1000)
    _one_line(info.value, "over the", "limit")
    junk = tmp_path / "junk.nrrd"
    junk.write_text("hello, not an nrrd\n")
    with pytest.raises(VolumeError) as info:
        read_scan(junk)
    _one_line(info.value, "junk.nrrd", "not a valid NRRD")


def test_mha_written_by_simpleitk_with_a_direction_matrix(tmp_path, crop):
    img = sitk.GetImageFromArray(np.ascontiguousarray(crop.transpose(2, 1, 0)))  # SimpleITK wants (z, y, x)
    rot = rotation((0.2, 1.0, -0.5), 31)
    img.SetDirection(rot.ravel().tolist())
    img.SetSpacing((0.7, 1.2, 1.9))
    img.SetOrigin((-20.0, 14.5, 3.25))
    path = tmp_path / "scan.mha"
    sitk.WriteImage(img, str(path), True)
    vol = read_scan(path)
    np.testing.assert_array_equal(vol.data, crop)
    rng = np.random.default_rng(11)
    for ijk in rng.integers(0, crop.shape, size=(50, 3)):
        lps = np.array(img.TransformIndexToPhysicalPoint([int(v) for v in ijk]))
        np.testing.assert_allclose(vol.affine @ np.append(ijk, 1), np.append(LPS_TO_RAS @ lps, 1), atol=1e-6)
        assert vol.data[tuple(ijk)] == img[[int(v) for v in ijk]]


def test_mhd_with_raw_data_and_missing_data_file(tmp_path, crop):
    img = sitk.GetImageFromArray(np.ascontiguousarray(crop.transpose(2, 1, 0).astype(np.float32)))
    img.SetSpacing((1.0, 2.0, 3.0))
    path = tmp_path / "scan_mask.mhd"  # a label-like name, but float values that are whole numbers
    sitk.WriteImage(img, str(path))
    vol = read_scan(path)
    assert vol.metadata["kind"] == "labels" and vol.data.dtype.kind == "u"  # by name, like NIfTI
    np.testing.assert_array_equal(vol.data, crop)
    assert read_scan(path, as_labels=False).data.dtype == np.float32
    for raw in tmp_path.glob("scan_mask.*raw"):
        raw.unlink()
    with pytest.raises(VolumeError) as info:
        read_scan(path)
    _one_line(info.value, "scan_mask.mhd", "truncated or corrupt")


def test_mgz_written_by_nibabel(tmp_path, crop):
    import nibabel as nib

    affine = np.eye(4)
    affine[:3, :3] = rotation((1, 1, 0), 15) * [1.0, 1.1, 1.2]
    affine[:3, 3] = [-64.0, 32.0, -5.0]
    path = tmp_path / "aseg.mgz"
    labels = (crop // 64).astype(np.int32)
    nib.save(nib.MGHImage(labels, affine), str(path))
    vol = read_scan(path)
    assert vol.metadata["kind"] == "labels"  # aseg: a FreeSurfer label volume, by name
    np.testing.assert_array_equal(vol.data, labels)
    np.testing.assert_allclose(vol.affine, nib.load(str(path)).affine, atol=1e-5)  # vox2ras, already RAS
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    t1 = tmp_path / "T1.mgh"
    nib.save(nib.MGHImage(crop.astype(np.float32), affine), str(t1))
    assert read_scan(t1).metadata["kind"] == "image"
    cut = tmp_path / "cut.mgh"
    cut.write_bytes(t1.read_bytes()[:2000])
    with pytest.raises(VolumeError) as info:
        read_scan(cut)
    _one_line(info.value, "cut.mgh", "truncated")


def test_nifti_path_unchanged(odd_geometry_files):
    from napari_vit3d.io import read_nifti

    path = odd_geometry_files["oblique20"]["image"]
    a, b = read_scan(path), read_nifti(path)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.affine, b.affine)


def test_scan_sha256_covers_a_series_and_detached_data(tmp_path, crop):
    from napari_vit3d.io.formats import scan_sha256

    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "a").write_bytes(b"one")
    (folder / "b").write_bytes(b"two")
    first = scan_sha256(folder)
    assert scan_sha256(folder) == first
    (folder / "b").write_bytes(b"TWO")
    assert scan_sha256(folder) != first
    img = sitk.GetImageFromArray(np.ascontiguousarray(crop.transpose(2, 1, 0)))
    mhd = tmp_path / "scan.mhd"
    sitk.WriteImage(img, str(mhd))
    before = scan_sha256(mhd)
    raw = next(tmp_path.glob("scan.*raw"))
    raw.write_bytes(raw.read_bytes()[::-1])
    assert scan_sha256(mhd) != before
