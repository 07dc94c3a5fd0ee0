"""A real napari viewer (under Xvfb): samples open through the plugin where nibabel says they are,
and the screen shows the radiological view (anterior at the top, the patient's right on the left)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine

from napari_vit3d.demo import plugin_widget_names, save_screenshot, setup_viewer
from napari_vit3d.gui.viewer_setup import RADIOLOGICAL_ORIENTATION, install_radiological_view, viewer_camera
from napari_vit3d.io.samples import sample_path

pytestmark = pytest.mark.gui
PLUGIN = "napari-vit3d"
SAR_FROM_RAS = [2, 1, 0]


def _corner_box(path):
    img = nib.load(str(path))
    n = img.shape[:3]
    corners = np.array([[i, j, k] for i in (0, n[0] - 1) for j in (0, n[1] - 1) for k in (0, n[2] - 1)])
    w = apply_affine(img.affine, corners)[:, SAR_FROM_RAS]
    return w.min(axis=0), w.max(axis=0)


def _assert_radiological(viewer):
    cam = viewer_camera(viewer)
    assert tuple(str(getattr(o, "value", o)) for o in cam.orientation) == RADIOLOGICAL_ORIENTATION
    assert str(getattr(cam.handedness, "value", cam.handedness)) == "right"  # a 3D render is not mirrored
    assert viewer.dims.ndisplay == 2
    assert [viewer.dims.axis_labels[a] for a in viewer.dims.displayed] == ["A", "R"]  # axial


def test_samples_open_through_plugin_where_nibabel_puts_them(make_napari_viewer):
    viewer = make_napari_viewer()
    before = tuple(viewer_camera(viewer).orientation)
    viewer.open(str(sample_path("colin27_t1")), plugin=PLUGIN)
    assert tuple(viewer_camera(viewer).orientation) == before  # the reader has no side effects on the viewer
    viewer.layers.clear()
    install_radiological_view(viewer)  # what every dock widget of the plugin does when it is created
    for name, layer_type in (("colin27_t1", "Image"), ("mni152_2009a_t1", "Image"), ("colin27_brainmask", "Labels")):
        path = sample_path(name)
        added = viewer.open(str(path), plugin=PLUGIN)
        assert [type(lay).__name__ for lay in added] == [layer_type]
        lo, hi = _corner_box(path)
        np.testing.assert_allclose(added[0].extent.world[0], lo, atol=1e-6)
        np.testing.assert_allclose(added[0].extent.world[1], hi, atol=1e-6)
        _assert_radiological(viewer)
    # the manifest's sample data gives the same layer as opening the file
    viewer.layers.clear()
    added = viewer.open_sample(PLUGIN, "colin27_t1")
    lo, hi = _corner_box(sample_path("colin27_t1"))
    np.testing.assert_allclose(added[0].extent.world, [lo, hi], atol=1e-6)
    assert added[0].metadata["vit3d"]["source_path"] == str(sample_path("colin27_t1").resolve())
    _assert_radiological(viewer)
    # a user looking in 3D keeps that view when opening another scan
    viewer.dims.ndisplay = 3
    viewer.open(str(sample_path("colin27_brainmask")), plugin=PLUGIN)
    assert viewer.dims.ndisplay == 3


def _marker_scan(path):
    """An LPS scan (anisotropic) with two markers: bright at the patient's left-anterior, dimmer at
    the right-posterior, both on the middle axial slice. Returns the markers' RAS positions."""
    shape = (40, 30, 9)
    affine = np.diag([-1.0, -1.2, 2.0, 1.0])
    affine[:3, 3] = (20.0, 18.0, -8.0)
    data = np.full(shape, 60, np.uint8)
    inv = np.linalg.inv(affine)
    markers = {"left_anterior": (np.array([-10.0, 8.0, 0.0]), 255),
               "right_posterior": (np.array([10.0, -8.0, 0.0]), 160)}
    for ras, value in markers.values():
        i, j, k = np.round(apply_affine(inv, ras)).astype(int)
        data[i - 2:i + 3, j - 2:j + 3, k] = value
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return {name: ras for name, (ras, _) in markers.items()}


def test_screen_shows_anterior_up_and_patient_right_on_the_left(make_napari_viewer, tmp_path):
    path = tmp_path / "markers_lps.nii.gz"
    markers = _marker_scan(path)
    viewer = make_napari_viewer(show=True)
    install_radiological_view(viewer)  # as the plugin's widgets do
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    layer.contrast_limits = (0, 255)
    viewer.dims.set_point(0, markers["left_anterior"][2])  # world axis 0 is S
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int).mean(axis=2)
    inside = shot > 30
    rows, cols = np.nonzero(inside)
    centre = np.array([(rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2])
    bright = np.argwhere(shot > 220).mean(axis=0)
    dim = np.argwhere((shot > 130) & (shot < 190)).mean(axis=0)
    # left-anterior marker: upper half (anterior up) and right half (patient's left on the screen's right)
    assert bright[0] < centre[0] - 5 and bright[1] > centre[1] + 5, (bright, centre)
    # right-posterior marker: lower half and left half
    assert dim[0] > centre[0] + 5 and dim[1] < centre[1] - 5, (dim, centre)
    # the footprint is 30 × 1.2 mm (A) tall and 40 × 1 mm (R) wide: not stretched or transposed
    height, width = rows.max() - rows.min(), cols.max() - cols.min()
    assert abs(height / width - 36.0 / 40.0) < 0.05


def test_bad_file_through_viewer_gives_our_message(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20), np.float32), np.eye(4)), str(good))
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(Exception) as info:
        viewer.open(str(bad), plugin=PLUGIN)
    chain = []
    exc = info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("broken.nii.gz: is truncated or corrupt" in m for m in chain), chain
    assert len(viewer.layers) == 0


def test_demo_docks_every_manifest_widget_and_saves_screenshot(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    docked = setup_viewer(viewer)
    assert len(docked) == len(plugin_widget_names())
    assert viewer.layers[0].name == "colin27_t1"
    _assert_radiological(viewer)
    png = save_screenshot(viewer, tmp_path)
    from skimage.io import imread

    img = imread(png)
    assert img.ndim == 3 and img.shape[0] > 400 and img.shape[1] > 600
    assert img[..., :3].std() > 10  # not a blank window


def test_plugin_as_default_reader_through_napari_settings(make_napari_viewer, tmp_path):
    """What the user guide tells users to do: map *.nii / *.nii.gz to the plugin in napari's settings,
    then File > Open (and viewer.open(path, plugin=None)) uses our reader."""
    from napari.settings import get_settings

    viewer = make_napari_viewer()
    settings = get_settings()
    assert "napari_vit3d_tests_" in str(settings.config_path)  # never the user's real preferences
    settings.plugins.extension2reader = {**settings.plugins.extension2reader,
                                         "*.nii": PLUGIN, "*.nii.gz": PLUGIN}
    path = tmp_path / "plain.nii"
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.diag([-2.0, 1, 1, 1])), str(path))
    (layer,) = viewer.open(str(path), plugin=None)  # None: use the preferences (the default is "napari")
    assert layer.metadata["vit3d"]["source_path"] == str(path.resolve())
    np.testing.assert_allclose(layer.extent.world, np.array(_corner_box(path)), atol=1e-6)


def test_docking_a_plugin_widget_sets_the_radiological_view(make_napari_viewer):
    from napari_vit3d.gui.export_widget import ExportWidget

    viewer = make_napari_viewer()
    ExportWidget(viewer)
    viewer.open(str(sample_path("colin27_t1")), plugin=PLUGIN)
    _assert_radiological(viewer)
    assert viewer.dims.ndisplay == 2
