"""A DICOM series in the viewer: open the folder, segment it from the Segment widget, export the labels as a 3D
Slicer ``.seg.nrrd`` and as DICOM SEG from the Export widget; pynrrd and highdicom read them back on the
source geometry with the label names."""

from __future__ import annotations

import _gui_helpers
import numpy as np
import pytest
from _formats_helpers import colin_crop, oblique_orientation, write_dicom_series
from _gui_helpers import dock, segment_and_wait, tiny_spec, wait_for

pytest.importorskip("pydicom")


@pytest.fixture
def gui_env(tmp_path, monkeypatch):
    return _gui_helpers.gui_env(tmp_path, monkeypatch, tiny_spec("tiny-formats-test"))


def test_dicom_folder_segmented_and_exported_as_seg_nrrd_and_dicom_seg(make_napari_viewer, qtbot, gui_env,
                                                                      tmp_path):
    import nrrd
    import torch

    r, c = oblique_orientation()
    folder = tmp_path / "series"
    info = write_dicom_series(folder, colin_crop((64, 64, 40)), row_dir=r, col_dir=c, origin_lps=(10.0, -5.0, 22.0),
                              pixel_spacing=(1.1, 0.9), slice_step=2.0)
    viewer = make_napari_viewer()
    (scan,) = viewer.open(str(folder), plugin="napari-vit3d")
    seg = dock(viewer, "1 Segment")
    assert seg.add_model(str(gui_env.spec("tiny-formats-test"))), gui_env.messages
    seg.scan_combo.select(scan.name)
    torch.manual_seed(0)
    segment_and_wait(qtbot, seg)
    assert not gui_env.messages["error"], gui_env.messages
    labels = viewer.layers[f"{scan.name} · labels"]
    np.testing.assert_allclose(labels.extent.world, scan.extent.world)
    labels.data[...] = 0
    labels.data[10:30, 12:40, 5:20] = 1  # a known block, in display order
    labels.refresh()

    export = dock(viewer, "4 Export")
    export.labels_combo.select(labels.name)
    export.folder.setText(str(tmp_path))
    from napari_vit3d.gui._layers import volume_from_layer

    expected = volume_from_layer(labels).data  # the block in the scan file order
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    scan_vol = volume_from_layer(scan)
    for suffix in (".seg.nrrd", ".dcm"):
        export.format_combo.setCurrentIndex(export.format_combo.findData(suffix))
        export.stem.setText("brain")
        export.export()
        wait_for(qtbot, lambda: not export.busy)
        assert not gui_env.messages["error"], gui_env.messages
        out = tmp_path / f"brain{suffix}"
        assert out.is_file() and (tmp_path / "brain.provenance.json").is_file()
        if suffix == ".seg.nrrd":
            data, header = nrrd.read(str(out))
            np.testing.assert_array_equal(data, expected)
            aff = lps @ scan_vol.affine  # the source's voxel -> LPS mapping
            np.testing.assert_allclose(np.asarray(header["space directions"], float).T, aff[:3, :3], atol=1e-4)
            np.testing.assert_allclose(header["space origin"], aff[:3, 3], atol=1e-4)
            assert header["space"] == "left-posterior-superior"
            assert header["Segment0_Name"] == "tissue A"
        else:
            hd = pytest.importorskip("highdicom")
            dcm = hd.seg.segread(str(out))
            assert dcm.ReferencedSeriesSequence[0].SeriesInstanceUID == info["series_uid"]
            assert {d.SegmentLabel for d in dcm.SegmentSequence} == {"tissue A"}
            k_of = {uid: k for k, uid in enumerate(info["sop_uids"])}
            for f, group in enumerate(dcm.PerFrameFunctionalGroupsSequence):
                k = k_of[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
                np.testing.assert_array_equal(dcm.pixel_array[f].astype(bool), expected[:, :, k].T == 1)
        (tmp_path / "brain.provenance.json").unlink()
        for side in ("brain.labels.json", "brain.itksnap.txt"):
            (tmp_path / side).unlink(missing_ok=True)


def test_a_folder_with_two_series_is_refused_in_one_line_that_lists_them(make_napari_viewer, tmp_path):
    """napari shows a reader's error as a notification: ours names the series and how to choose one."""
    r, c = oblique_orientation()
    folder = tmp_path / "two"
    a = write_dicom_series(folder, colin_crop((16, 16, 6)), row_dir=r, col_dir=c, origin_lps=(0.0, 0.0, 0.0),
                           pixel_spacing=(1.0, 1.0), slice_step=2.0, series_description="T1 axial", seed=1)
    b = write_dicom_series(folder, colin_crop((16, 16, 6)), row_dir=r, col_dir=c, origin_lps=(0.0, 0.0, 0.0),
                           pixel_spacing=(1.0, 1.0), slice_step=2.0, series_description="T2 axial", seed=2,
                           study_uid=a["study_uid"])
    viewer = make_napari_viewer()
    with pytest.raises(Exception) as info:
        viewer.open(str(folder), plugin="napari-vit3d")
    chain, exc = [], info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    ours = [m for m in chain if a["series_uid"] in m and b["series_uid"] in m]
    assert ours and len(ours[0].splitlines()) == 1 and "--series" in ours[0], chain
    assert len(viewer.layers) == 0


def _marker_volume(shape, at, value=1000):
    data = np.full(shape, 10, np.int16)
    data[at] = value
    return data


@pytest.mark.parametrize("fmt", ["nrrd", "mha", "mgz"])
def test_nrrd_mha_mgz_open_in_napari_where_their_own_library_puts_them(make_napari_viewer, tmp_path, fmt):
    """A single bright voxel written by the format's own library (pynrrd / SimpleITK / nibabel) at a known
    index of an oblique, anisotropic grid: in napari its layer voxel lies at the physical point that library
    gives for that index (LPS converted to RAS; napari's world axes are S, A, R)."""
    shape, at = (12, 10, 8), (7, 3, 5)
    data = _marker_volume(shape, at)
    rot = np.array([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]])
    spacing = np.array([0.9, 1.3, 2.5])
    origin_lps = np.array([12.0, -7.5, 30.0])
    path = tmp_path / f"marker.{fmt}"
    if fmt == "nrrd":
        import nrrd

        nrrd.write(str(path), data, {"space": "left-posterior-superior", "space directions": (rot * spacing).T,
                                     "space origin": origin_lps})
        world_lps = origin_lps + (rot * spacing) @ np.array(at, float)
    elif fmt == "mha":
        sitk = pytest.importorskip("SimpleITK")
        img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))  # SimpleITK arrays are z, y, x
        img.SetSpacing(tuple(spacing))
        img.SetOrigin(tuple(origin_lps))
        img.SetDirection(tuple(rot.ravel()))
        sitk.WriteImage(img, str(path))
        world_lps = np.array(img.TransformIndexToPhysicalPoint(tuple(int(v) for v in at)))
    else:
        import nibabel as nib

        ras = np.eye(4)
        ras[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rot * spacing
        ras[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ origin_lps
        nib.save(nib.MGHImage(data.astype(np.float32), ras), str(path))
        world_lps = np.diag([-1.0, -1.0, 1.0]) @ nib.affines.apply_affine(ras, at)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-vit3d")
    peak = np.unravel_index(int(np.argmax(layer.data)), layer.data.shape)
    world_sar = np.asarray(layer.data_to_world(peak), float)
    world_ras = world_sar[::-1]
    np.testing.assert_allclose(world_ras, np.diag([-1.0, -1.0, 1.0]) @ world_lps, atol=1e-3)
