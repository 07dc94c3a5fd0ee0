"""Writers land on the source grid, read back with each format's own library (pynrrd, SimpleITK,
nibabel, highdicom/pydicom), never with our readers; atomic; never over the source."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from _formats_helpers import colin_crop, oblique_orientation, write_dicom_series

from napari_vit3d.errors import GeometryError, Vit3dError, VolumeError
from napari_vit3d.io.formats import read_scan, write_as, write_labels_as
from napari_vit3d.io.labels import LabelEntry, LabelTable

nrrd = pytest.importorskip("nrrd")
sitk = pytest.importorskip("SimpleITK")
pydicom = pytest.importorskip("pydicom")

TABLE = LabelTable([LabelEntry(0, "background", (0, 0, 0, 0)), LabelEntry(1, "cortex", (0.9, 0.3, 0.2)),
                    LabelEntry(2, "white matter", (0.95, 0.95, 0.8)), LabelEntry(7, "unused", (0, 0, 1))])


@pytest.fixture(scope="module")
def dicom_scan(tmp_path_factory):
    """An oblique MR series written by pydicom, read by us, and a label map on its grid."""
    folder = tmp_path_factory.mktemp("src") / "series"
    r, c = oblique_orientation()
    info = write_dicom_series(folder, colin_crop((24, 20, 12)), row_dir=r, col_dir=c, origin_lps=(10.0, -5.0, 22.0),
                              pixel_spacing=(1.1, 0.9), slice_step=2.0)
    scan = read_scan(folder)
    labels = np.zeros(scan.spatial_shape, np.uint8)
    labels[scan.data > 60] = 1
    labels[scan.data > 90] = 2
    labels[0, 0, 0] = 0
    info.update(scan=scan, labels=scan.with_data(labels, metadata={"kind": "labels"}))
    return info


def _lps(affine):
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def test_seg_nrrd_has_source_geometry_and_names(dicom_scan, tmp_path):
    scan, labels = dicom_scan["scan"], dicom_scan["labels"]
    out = write_labels_as(tmp_path / "brain.seg.nrrd", labels, source=scan, label_table=TABLE)
    data, hdr = nrrd.read(str(out))
    assert hdr["space"] == "left-posterior-superior"
    lps = _lps(scan.affine)
    np.testing.assert_allclose(hdr["space directions"], lps[:3, :3].T, atol=1e-9)
    np.testing.assert_allclose(hdr["space origin"], lps[:3, 3], atol=1e-9)
    np.testing.assert_array_equal(data, labels.data)
    assert hdr["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert hdr["Segmentation_ContainedRepresentationNames"] == "Binary labelmap|"
    segs = {hdr[f"Segment{i}_LabelValue"]: hdr[f"Segment{i}_Name"] for i in range(3)}
    assert segs == {"1": "cortex", "2": "white matter", "7": "unused"}
    assert all(hdr[f"Segment{i}_Layer"] == "0" for i in range(3))
    assert [float(v) for v in hdr["Segment0_Color"].split()] == pytest.approx([0.9, 0.3, 0.2])
    ext = [int(v) for v in hdr["Segment1_Extent"].split()]
    hit = np.argwhere(labels.data == 2)
    assert ext == [hit[:, 0].min(), hit[:, 0].max(), hit[:, 1].min(), hit[:, 1].max(), hit[:, 2].min(), hit[:, 2].max()]
    assert hdr["Segment2_Extent"] == "0 -1 0 -1 0 -1"  # an empty segment
    back = read_scan(out)  # and our reader gets the names back
    assert back.metadata["label_names"][2] == "white matter"


def test_plain_nrrd_and_mha_land_on_the_source(dicom_scan, tmp_path):
    scan, labels = dicom_scan["scan"], dicom_scan["labels"]
    lps = _lps(scan.affine)
    out = write_labels_as(tmp_path / "labels.nrrd", labels, source=scan)
    data, hdr = nrrd.read(str(out))
    np.testing.assert_array_equal(data, labels.data)
    np.testing.assert_allclose(hdr["space directions"], lps[:3, :3].T, atol=1e-9)
    assert data.dtype == np.uint8 and not any(k.startswith("Segment") for k in hdr)
    out = write_labels_as(tmp_path / "labels.mha", labels, source=scan)
    img = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img).transpose(2, 1, 0), labels.data)
    rng = np.random.default_rng(5)
    for ijk in rng.integers(0, labels.spatial_shape, size=(30, 3)):
        p = img.TransformIndexToPhysicalPoint([int(v) for v in ijk])
        np.testing.assert_allclose(p, (lps @ np.append(ijk, 1))[:3], atol=1e-5)


def test_nifti_output_of_a_dicom_scan(dicom_scan, tmp_path):
    scan, labels = dicom_scan["scan"], dicom_scan["labels"]
    out = write_labels_as(tmp_path / "labels.nii.gz", labels, source=scan)
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, scan.affine, atol=1e-4)  # float32 sform
    assert int(img.header["sform_code"]) == 1  # scanner coordinates, as dcm2niix writes
    np.testing.assert_array_equal(np.asarray(img.dataobj), labels.data)


def test_images_to_nrrd_and_mha(dicom_scan, tmp_path):
    scan = dicom_scan["scan"]
    prob = scan.with_data((scan.data / 255.0).astype(np.float32), metadata={"kind": "image"})
    for name in ("p.nrrd", "p.mha", "p.nii.gz"):
        out = write_as(tmp_path / name, prob, source=scan)
        back = read_scan(out)
        np.testing.assert_allclose(back.data, prob.data, atol=1e-6)
        np.testing.assert_allclose(back.affine, scan.affine, atol=1e-4)
    with pytest.raises(VolumeError, match="cannot write an image there"):
        write_as(tmp_path / "p.seg.nrrd", prob)


def test_dicom_seg_references_the_source_series(dicom_scan, tmp_path):
    hd = pytest.importorskip("highdicom")
    scan, labels = dicom_scan["scan"], dicom_scan["labels"]
    out = write_labels_as(tmp_path / "labels.dcm", labels, source=scan, label_table=TABLE)
    seg = hd.seg.segread(str(out))
    assert seg.SegmentationType == "BINARY"
    names = {int(d.SegmentNumber): d.SegmentLabel for d in seg.SegmentSequence}
    assert names == {1: "cortex", 2: "white matter"}  # the labels present; "unused" has no voxel
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == dicom_scan["series_uid"]
    referenced = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(dicom_scan["sop_uids"])
    assert seg.StudyInstanceUID == dicom_scan["study_uid"]
    k_of = {uid: k for k, uid in enumerate(dicom_scan["sop_uids"])}
    frames = seg.pixel_array
    for f, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        src_uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = k_of[src_uid]
        ipp = np.array(group.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(ipp, dicom_scan["ipp"][k], atol=1e-4)  # the frame sits on its source slice
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(frames[f].astype(bool), labels.data[:, :, k].T == number)


def test_dicom_seg_needs_a_dicom_source(odd_geometry_files, tmp_path):
    scan = read_scan(odd_geometry_files["lps"]["image"])
    labels = scan.with_data((scan.data > 100).astype(np.uint8), metadata={"kind": "labels"})
    with pytest.raises(VolumeError) as info:
        write_labels_as(tmp_path / "seg.dcm", labels, source=scan)
    msg = str(info.value)
    assert "\n" not in msg and "opened from DICOM" in msg and not (tmp_path / "seg.dcm").exists()


def test_never_over_the_source_and_on_its_grid(dicom_scan, tmp_path):
    scan, labels = dicom_scan["scan"], dicom_scan["labels"]
    seg = write_labels_as(tmp_path / "x.seg.nrrd", labels, source=scan)
    reread = read_scan(seg)
    before = seg.read_bytes()
    with pytest.raises(VolumeError, match="refusing to overwrite"):
        write_labels_as(seg, reread)
    assert seg.read_bytes() == before
    named = write_dicom_series(tmp_path / "named", colin_crop((8, 8, 4)), row_dir=(1, 0, 0), col_dir=(0, 1, 0),
                               origin_lps=(0, 0, 0), pixel_spacing=(1, 1), slice_step=1, suffix=".dcm")
    small = read_scan(tmp_path / "named")
    slice_file = named["files"][2]
    before = slice_file.read_bytes()
    with pytest.raises(VolumeError, match="refusing to overwrite"):  # a DICOM SEG over one of its source slices
        write_labels_as(slice_file, small.with_data(np.ones(small.spatial_shape, np.uint8)), source=small)
    assert slice_file.read_bytes() == before
    moved = labels.with_data(labels.data)
    moved.affine = labels.affine.copy()
    moved.affine[0, 3] += 1.0
    with pytest.raises(GeometryError, match="would not land"):
        write_labels_as(tmp_path / "moved.nrrd", moved, source=scan)
    with pytest.raises(VolumeError, match="must end in"):
        write_labels_as(tmp_path / "labels.png", labels, source=scan)


def test_failed_write_leaves_the_old_file(dicom_scan, tmp_path, monkeypatch):
    scan, labels = dicom_scan["scan"], dicom_scan["labels"]
    out = write_labels_as(tmp_path / "keep.nrrd", labels, source=scan)
    good = out.read_bytes()

    def broken(filename, *args, **kwargs):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nrrd, "write", broken)
    with pytest.raises(OSError, match="No space left"):
        write_labels_as(out, labels.with_data(labels.data * 0), source=scan)
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nrrd"]  # no temporary file left


def test_napari_writer_keeps_label_names(tmp_path, dicom_scan):
    pytest.importorskip("napari")
    from napari.layers import Labels

    from napari_vit3d._napari.reader import read_layers
    from napari_vit3d._napari.writer import write_labels_layer_as

    src = write_labels_as(tmp_path / "in.seg.nrrd", dicom_scan["labels"], source=dicom_scan["scan"], label_table=TABLE)
    (data, kwargs, layer_type), = read_layers(str(src))
    assert layer_type == "labels" and list(kwargs["features"]["name"])[:3] == ["background", "cortex", "white matter"]
    layer = Labels(data, **kwargs)
    d, state, _ = layer.as_layer_data_tuple()
    (out,) = write_labels_layer_as(str(tmp_path / "out.seg.nrrd"), d, state)
    arr, hdr = nrrd.read(out)
    np.testing.assert_array_equal(arr, dicom_scan["labels"].data)
    assert {hdr[f"Segment{i}_Name"] for i in range(3)} == {"cortex", "white matter", "unused"}
    with pytest.raises(Vit3dError, match="refusing to overwrite"):
        write_labels_layer_as(str(src), d, state)


def test_dicom_seg_labelmap_type(dicom_scan, tmp_path):
    hd = pytest.importorskip("highdicom")
    out = write_labels_as(tmp_path / "lm.dcm", dicom_scan["labels"], source=dicom_scan["scan"], label_table=TABLE,
                          segmentation_type="LABELMAP")
    seg = hd.seg.segread(str(out))
    assert seg.SegmentationType == "LABELMAP"
    assert {"cortex", "white matter"} <= {d.SegmentLabel for d in seg.SegmentSequence}
    # highdicom's own geometry of the SEG (LPS; axes frame, row, column; empty frames left out) puts every
    # voxel on a voxel centre of the scan, with the scan's label there
    vol = seg.get_volume(combine_segments=True)
    arr = np.asarray(vol.array)
    inv = np.linalg.inv(np.diag([-1.0, -1.0, 1.0, 1.0]) @ dicom_scan["scan"].affine)
    rng = np.random.default_rng(2)
    for idx in rng.integers(0, arr.shape[:3], size=(40, 3)):
        ijk = (inv @ vol.affine @ np.append(idx, 1.0))[:3]
        np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-3)
        assert arr[tuple(idx)] == dicom_scan["labels"].data[tuple(np.round(ijk).astype(int))]


def test_export_review_writes_seg_nrrd_and_dicom_seg(dicom_scan, tmp_path):
    """The Export use case (labels + label table + provenance) takes the Slicer and PACS formats too: read back
    by pynrrd / highdicom, the labels sit on the source grid with their names; the provenance is beside them."""
    import json

    import nrrd

    from napari_vit3d.errors import VolumeError
    from napari_vit3d.review.export import export_review

    scan, labels = dicom_scan["scan"], dicom_scan["labels"]
    paths = export_review(tmp_path / "brain.seg.nrrd", scan, labels.data, label_table=TABLE)
    data, header = nrrd.read(str(paths["labels"]))
    np.testing.assert_array_equal(data, labels.data)
    names = {int(header[f"Segment{i}_LabelValue"]): header[f"Segment{i}_Name"] for i in range(2)}
    assert names == {1: "cortex", 2: "white matter"}
    assert json.loads(paths["provenance"].read_text())["exported_labels"] == "brain.seg.nrrd"
    assert paths["provenance"].name == "brain.provenance.json"
    hd = pytest.importorskip("highdicom")
    seg = hd.seg.segread(str(export_review(tmp_path / "brain.dcm", scan, labels.data, label_table=TABLE)["labels"]))
    assert {d.SegmentLabel for d in seg.SegmentSequence} == {"cortex", "white matter"}
    nifti_scan = scan.with_data(scan.data, metadata={})  # not read from DICOM: no series to reference
    with pytest.raises(VolumeError, match="DICOM SEG references the DICOM series"):
        export_review(tmp_path / "x.dcm", nifti_scan, labels.data)
    with pytest.raises(VolumeError, match="cannot write a label map there"):
        export_review(tmp_path / "x.png", scan, labels.data)
