"""Writers: never over the source scan, atomic, clear errors."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_vit3d._napari.reader import read_layers
from napari_vit3d._napari.writer import write_image_layer, write_labels_layer
from napari_vit3d.errors import Vit3dError


def _layer_state(path, cls=None):
    data, kwargs, layer_type = read_layers(str(path))[0]
    layer = (cls or (Labels if layer_type == "labels" else Image))(data, **kwargs)
    d, state, _ = layer.as_layer_data_tuple()
    return d, state


def test_refuses_to_overwrite_source_scan(odd_geometry_files, tmp_path):
    src = odd_geometry_files["lps"]["image"]
    before = src.read_bytes()
    d, state = _layer_state(src)
    with pytest.raises(Vit3dError, match="refusing to overwrite"):
        write_image_layer(str(src), d, state)
    # the same file through another name (a symlink) is refused too
    link = tmp_path / "link.nii.gz"
    link.symlink_to(src)
    with pytest.raises(Vit3dError, match="refusing to overwrite"):
        write_image_layer(str(link), d, state)
    # labels painted on a scan opened as labels may not replace that scan either
    labels = Labels(np.zeros(d.shape, np.uint8), **{k: state[k] for k in ("scale", "translate")},
                    metadata=state["metadata"])
    ld, lstate, _ = labels.as_layer_data_tuple()
    with pytest.raises(Vit3dError, match="refusing to overwrite"):
        write_labels_layer(str(src), ld, lstate)
    assert src.read_bytes() == before


def test_write_is_atomic_when_saving_fails(odd_geometry_files, tmp_path, monkeypatch):
    src = odd_geometry_files["lsa"]["labels"]
    d, state = _layer_state(src)
    out = tmp_path / "labels.nii.gz"
    write_labels_layer(str(out), d, state)
    good = out.read_bytes()

    def broken_save(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    d2 = d.copy()
    d2[:] = 3
    with pytest.raises(OSError, match="disk full"):
        write_labels_layer(str(out), d2, state)
    assert out.read_bytes() == good  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]  # no temporary left behind


def test_written_file_is_readable_by_others(odd_geometry_files, tmp_path):
    d, state = _layer_state(odd_geometry_files["lps"]["labels"])
    out = write_labels_layer(str(tmp_path / "x.nii.gz"), d, state)[0]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask


def test_labels_dtype_grows_with_label_values(odd_geometry_files, tmp_path):
    d, state = _layer_state(odd_geometry_files["ras_aniso"]["labels"])
    for top, dtype in ((255, np.uint8), (256, np.uint16), (70000, np.uint32)):
        arr = d.astype(np.int64)
        arr.flat[5] = top
        out = write_labels_layer(str(tmp_path / f"l{top}.nii.gz"), arr, state)[0]
        res = nib.load(out)
        assert res.get_data_dtype() == dtype
        assert int(np.asanyarray(res.dataobj).max()) == top


def test_writer_rejects_bad_layers(odd_geometry_files, tmp_path):
    d, state = _layer_state(odd_geometry_files["ras_aniso"]["labels"])
    with pytest.raises(Vit3dError, match="no longer matches"):
        write_labels_layer(str(tmp_path / "crop.nii.gz"), d[1:], state)
    with pytest.raises(Vit3dError, match="folder"):
        write_labels_layer(str(tmp_path / "missing" / "x.nii.gz"), d, state)
    flat = Image(np.zeros((5, 6), np.float32))
    fd, fstate, _ = flat.as_layer_data_tuple()
    with pytest.raises(Vit3dError, match="3D"):
        write_image_layer(str(tmp_path / "flat.nii.gz"), fd, fstate)


def test_image_converted_to_labels_in_napari_saves_on_source_grid(odd_geometry_files, tmp_path):
    """The user guide's opt-in: an integer scan opened as an image, right-click > Convert to Labels,
    then saved: it lands on the source file voxel for voxel."""
    from napari.components import LayerList
    from napari.layers._layer_actions import _convert

    src = tmp_path / "integer_scan.nii.gz"  # integer, but its name does not say "labels"
    ref = nib.load(str(odd_geometry_files["lsa"]["labels"]))
    nib.save(nib.Nifti1Image(np.asanyarray(ref.dataobj), ref.affine, ref.header), str(src))
    data, kwargs, layer_type = read_layers(str(src))[0]
    assert layer_type == "image"
    layers = LayerList([Image(data, **kwargs)])
    layers.selection = {layers[0]}
    _convert(layers, "labels")
    (converted,) = layers
    assert isinstance(converted, Labels)
    d, state, _ = converted.as_layer_data_tuple()
    out = write_labels_layer(str(tmp_path / "converted.nii.gz"), d, state)[0]
    res = nib.load(out)
    assert np.array_equal(np.asanyarray(res.dataobj), np.asanyarray(ref.dataobj))
    np.testing.assert_allclose(res.affine, ref.affine)
    assert int(res.header["sform_code"]) == int(ref.header["sform_code"])


def test_napari_save_shows_our_message(odd_geometry_files, tmp_path):
    """napari's layer saving treats a ValueError from a writer as "no writer": ours must get through."""
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins

    _initialize_plugins()
    viewer = ViewerModel()
    src = odd_geometry_files["lps"]["image"]
    viewer.open(str(src), plugin="napari-vit3d")
    viewer.layers.selection = {viewer.layers[0]}
    with pytest.raises(Vit3dError, match="refusing to overwrite the source scan"):
        viewer.layers.save(str(src), selected=True)
    out = tmp_path / "copy.nii.gz"
    assert viewer.layers.save(str(out), selected=True) == [str(out)]
