"""Geometry against nibabel: napari world coordinates are the file's RAS mm for every voxel, and
labels written back land voxel for voxel on the source file with its affine and codes.

References are independent of our code: ``nibabel.load`` + ``nibabel.affines.apply_affine`` on the
file, and napari's own ``layer.data_to_world``.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import NIBABEL_FILES, ODD_GEOMETRIES, nibabel_test_file
from napari.layers import Image, Labels
from nibabel.affines import apply_affine

from napari_vit3d._napari.reader import read_layers
from napari_vit3d._napari.writer import write_image_layer, write_labels_layer
from napari_vit3d.io import read_nifti
from napari_vit3d.io.layers import volume_to_layer_data

SAR_FROM_RAS = [2, 1, 0]  # napari world axes (S, A, R) from RAS


def _make_layer(data, kwargs, layer_type):
    return (Labels if layer_type == "labels" else Image)(data, **kwargs)


def _file_data(path) -> np.ndarray:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj) if img.dataobj.slope in (None, 1) else img.get_fdata()


def _check_world_matches_file(layer, path, channel=None, n=60, seed=0):
    """Random display voxels: napari's world position maps (through the file's own affine) to a
    whole file voxel holding the same value."""
    img = nib.load(str(path))
    ref = _file_data(path)
    if channel is not None:
        ref = ref[..., channel]
    ref = ref.reshape(ref.shape[:3])
    if ref.dtype.kind == "f":  # the reader replaces NaN/Inf by 0 (with a VolumeWarning)
        ref = np.where(np.isfinite(ref), ref, 0)
    inv = np.linalg.inv(img.affine)
    rng = np.random.default_rng(seed)
    shape = np.asarray(layer.data.shape)
    idx = rng.integers(0, shape, size=(n, 3))
    idx = np.vstack([idx, [0, 0, 0], shape - 1])  # include two corners
    for d in idx:
        world_sar = np.asarray(layer.data_to_world(d), float)
        ras = world_sar[SAR_FROM_RAS]
        ijk = apply_affine(inv, ras)
        np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-4)
        ijk = tuple(int(v) for v in np.round(ijk))
        assert layer.data[tuple(d)] == ref[ijk]
    # and the other way: a file voxel's RAS position (apply_affine) is where napari shows its value
    for ijk in rng.integers(0, ref.shape, size=(10, 3)):
        ras = apply_affine(img.affine, ijk)
        d = np.round(np.asarray(layer.world_to_data(ras[SAR_FROM_RAS]), float)).astype(int)
        np.testing.assert_allclose(layer.data_to_world(d), ras[SAR_FROM_RAS], atol=1e-4)
        assert layer.data[tuple(d)] == ref[tuple(ijk)]


def _world_corners(path) -> np.ndarray:
    img = nib.load(str(path))
    shape = img.shape[:3]
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    return apply_affine(img.affine, corners)[:, SAR_FROM_RAS]


@pytest.mark.parametrize("name", list(ODD_GEOMETRIES))
def test_odd_geometry_world_equals_nibabel(odd_geometry_files, name):
    path = odd_geometry_files[name]["image"]
    tuples = read_layers(str(path))
    n_channels = ODD_GEOMETRIES[name][2]
    assert len(tuples) == n_channels
    for c, (data, kwargs, layer_type) in enumerate(tuples):
        assert layer_type == "image"
        layer = _make_layer(data, kwargs, layer_type)
        _check_world_matches_file(layer, path, channel=c if n_channels > 1 else None)
        # the bounding box of the world corners of the voxel centres equals napari's world extent
        corners = _world_corners(path)
        if "affine" not in kwargs:  # axis-aligned: napari's extent is exactly the corner box
            ext = layer.extent.world
            np.testing.assert_allclose(ext[0], corners.min(axis=0), atol=1e-4)
            np.testing.assert_allclose(ext[1], corners.max(axis=0), atol=1e-4)


def test_oblique_residual_rotation_kept_in_affine(odd_geometry_files):
    data, kwargs, _ = read_layers(str(odd_geometry_files["oblique20"]["image"]))[0]
    assert "affine" in kwargs  # not silently dropped
    # the array was only permuted/flipped: its axes are the closest to +S, +A, +R
    lin = np.asarray(kwargs["affine"])[:3, :3]
    assert np.all(np.diag(np.abs(lin)) == np.abs(lin).max(axis=0))
    assert np.all(np.diag(lin) > 0)


@pytest.mark.filterwarnings("ignore:.*NaN/Inf voxels:napari_vit3d.errors.VolumeWarning")
@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing:UserWarning")
@pytest.mark.parametrize("name", NIBABEL_FILES)
def test_nibabel_files_world_equals_nibabel(name):
    path = nibabel_test_file(name)
    img = nib.load(str(path))
    tuples = read_layers(str(path))
    n = img.shape[3] if len(img.shape) == 4 else 1
    assert len(tuples) == n
    for c, (data, kwargs, layer_type) in enumerate(tuples):
        _check_world_matches_file(_make_layer(data, kwargs, layer_type), path, channel=c if n > 1 else None, n=30)


def _assert_lands_on_source(out, src_path, expected):
    """The written file holds ``expected`` in the source's voxel order with its affine and codes."""
    src, res = nib.load(str(src_path)), nib.load(str(out))
    assert res.shape == expected.shape
    assert np.array_equal(np.asanyarray(res.dataobj), expected)
    np.testing.assert_allclose(res.affine, src.affine, atol=1e-5)
    for key in ("qform_code", "sform_code"):
        assert int(res.header[key]) == int(src.header[key]), key
    np.testing.assert_allclose(res.header.get_qform(), src.header.get_qform(), atol=1e-5)
    if int(src.header["sform_code"]):
        np.testing.assert_allclose(res.header.get_sform(), src.header.get_sform(), atol=1e-5)
    np.testing.assert_allclose(res.header.get_zooms()[:3], src.header.get_zooms()[:3], atol=1e-6)
    slope, inter = res.header.get_slope_inter()
    assert slope in (None, 1.0) and inter in (None, 0.0)


@pytest.mark.parametrize("name", [n for n, g in ODD_GEOMETRIES.items() if g[2] == 1])
def test_labels_roundtrip_voxel_identical(odd_geometry_files, tmp_path, name):
    src = odd_geometry_files[name]["labels"]
    tuples = read_layers(str(src))
    assert [t[2] for t in tuples] == ["labels"]  # *_seg name → Labels layer
    layer = _make_layer(*tuples[0])
    data, state, _ = layer.as_layer_data_tuple()
    out = write_labels_layer(str(tmp_path / "out.nii.gz"), data, state)[0]
    expected = np.asanyarray(nib.load(str(src)).dataobj)
    _assert_lands_on_source(out, src, expected)
    assert nib.load(out).get_data_dtype() == np.uint8


@pytest.mark.parametrize("name", ["anatomical.nii", "standard.nii.gz", "example_nifti2.nii.gz"])
def test_nibabel_files_labels_roundtrip(tmp_path, name):
    """Integer scans opened as label maps (the user's choice) come back identical, big-endian and
    NIfTI-2 files included; an .nii output stays uncompressed."""
    src = nibabel_test_file(name)
    vol = read_nifti(src, as_labels=name != "example_nifti2.nii.gz")
    if vol.data.ndim == 4:  # a label map is 3D: take the first volume as the label map
        vol = vol.channel(0)
    data, kwargs, layer_type = volume_to_layer_data(vol, kind="labels")[0]
    layer = Labels(data, **kwargs)
    d, state, _ = layer.as_layer_data_tuple()
    out = write_labels_layer(str(tmp_path / "out.nii"), d, state)[0]
    expected = np.asanyarray(nib.load(str(src)).dataobj)
    expected = expected[..., 0] if expected.ndim == 4 else expected
    _assert_lands_on_source(out, src, expected)
    with open(out, "rb") as fh:
        assert fh.read(2) != b"\x1f\x8b"
    lo, hi = int(expected.min()), int(expected.max())
    dt = nib.load(out).get_data_dtype()
    assert np.iinfo(dt).min <= lo and np.iinfo(dt).max >= hi
    assert dt.itemsize <= 2


def test_painted_labels_land_on_source_voxel(odd_geometry_files, tmp_path):
    """Paint one voxel at a world position in napari; the file has it at apply_affine⁻¹ of that position."""
    src = odd_geometry_files["lsa"]["labels"]
    layer = _make_layer(*read_layers(str(src))[0])
    layer.data[:] = 0
    ras_target = np.array([3.0, -12.0, 14.0])
    d = np.round(np.asarray(layer.world_to_data(ras_target[SAR_FROM_RAS]))).astype(int)
    layer.data[tuple(d)] = 7
    data, state, _ = layer.as_layer_data_tuple()
    out = write_labels_layer(str(tmp_path / "painted.nii.gz"), data, state)[0]
    res = nib.load(out)
    arr = np.asanyarray(res.dataobj)
    (ijk,) = np.argwhere(arr == 7)
    expected = np.round(apply_affine(np.linalg.inv(res.affine), apply_affine(layer_affine_ras(layer), d)))
    np.testing.assert_array_equal(ijk, expected)
    # and it is the file voxel nearest the world point we painted at
    np.testing.assert_allclose(apply_affine(res.affine, ijk), apply_affine(layer_affine_ras(layer), d), atol=1e-4)
    assert np.linalg.norm(apply_affine(res.affine, ijk) - ras_target) < 1.5


def layer_affine_ras(layer) -> np.ndarray:
    """napari's data→world of a 3D layer as a RAS 4×4 (built from data_to_world, not our code)."""
    origin = np.asarray(layer.data_to_world([0, 0, 0]), float)
    cols = [np.asarray(layer.data_to_world(np.eye(3)[i]), float) - origin for i in range(3)]
    a = np.eye(4)
    a[:3, :3] = np.array(cols).T[SAR_FROM_RAS]
    a[:3, 3] = origin[SAR_FROM_RAS]
    return a


def test_multichannel_image_roundtrip_and_channels(odd_geometry_files, tmp_path):
    src = odd_geometry_files["multichannel_lip"]["image"]
    tuples = read_layers(str(src))
    stem = "multichannel_lip"
    assert [t[1]["name"] for t in tuples] == [f"{stem} [0]", f"{stem} [1]", f"{stem} [2]"]
    transforms = [{k: t[1][k] for k in ("scale", "translate")} for t in tuples]
    assert all(tr == transforms[0] for tr in transforms)
    # one channel written as an image map lands on the source channel
    layer = _make_layer(*tuples[1])
    d, state, _ = layer.as_layer_data_tuple()
    out = write_image_layer(str(tmp_path / "ch1.nii.gz"), d, state)[0]
    expected = np.asanyarray(nib.load(str(src)).dataobj)[..., 1]
    _assert_lands_on_source(out, src, expected)
    # all channels as one layer (channel axis first in napari) → a 4D file with channels last
    vol = read_nifti(src)
    data, kwargs, _ = volume_to_layer_data(vol, split_channels=False)[0]
    layer4 = Image(data, **kwargs)
    assert layer4.data.shape[0] == 3
    d, state, _ = layer4.as_layer_data_tuple()
    out4 = write_image_layer(str(tmp_path / "all.nii.gz"), d, state)[0]
    _assert_lands_on_source(out4, src, np.asanyarray(nib.load(str(src)).dataobj))
    assert nib.load(out4).get_data_dtype() == np.float32


def test_qform_and_sform_that_differ_are_both_kept(tmp_path):
    shape = (6, 5, 4)
    sform = np.diag([-1.0, 1.0, 2.0, 1.0]); sform[:3, 3] = (5, -3, 2)
    qform = np.diag([1.0, 1.0, 2.0, 1.0]); qform[:3, 3] = (-1, 2, 3)
    img = nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.int16).reshape(shape) % 4, None)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=4)
    src = tmp_path / "two_forms_seg.nii.gz"
    nib.save(img, src)
    layer = _make_layer(*read_layers(str(src))[0])
    d, state, _ = layer.as_layer_data_tuple()
    out = write_labels_layer(str(tmp_path / "out"), d, state)[0]
    assert out.endswith(".nii.gz")
    _assert_lands_on_source(out, src, np.asanyarray(img.dataobj))


@pytest.mark.parametrize("transform", [
    {"scale": (3.0, 0.7, 0.7), "translate": (10.0, -5.0, 2.0)},
    {"scale": (1.0, 2.0, 1.0), "affine": np.array([[0, 0, -1, 5], [0, 1, 0, 1], [1, 0, 0, -3], [0, 0, 0, 1.0]])},
    {"rotate": 25.0, "scale": (2.0, 1.0, 1.5)},
])
def test_labels_without_plugin_metadata_use_their_napari_transform(tmp_path, transform):
    rng = np.random.default_rng(3)
    layer = Labels(rng.integers(0, 6, (5, 7, 6)).astype(np.int32), **transform)
    d, state, _ = layer.as_layer_data_tuple()
    out = write_labels_layer(str(tmp_path / "plain.nii.gz"), d, state)[0]
    res = nib.load(out)
    arr = np.asanyarray(res.dataobj)
    assert arr.dtype == np.uint8 and int(res.header["sform_code"]) > 0
    inv = np.linalg.inv(res.affine)
    for idx in np.ndindex(layer.data.shape):
        ras = np.asarray(layer.data_to_world(idx), float)[SAR_FROM_RAS]
        ijk = apply_affine(inv, ras)
        np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-4)
        assert arr[tuple(np.round(ijk).astype(int))] == layer.data[idx]
