"""MONAI bundles through ``inference.segment``: the bundle's own pipeline runs, and its output is placed
back onto the scan's voxels (checked against the mask a pass-through bundle was given, and against MONAI
running the bundle's components itself)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from nibabel.affines import apply_affine, from_matvec
from scipy.spatial.transform import Rotation

from napari_vit3d.inference import segment
from napari_vit3d.io.nifti import write_image
from napari_vit3d.io.volume import Volume
from napari_vit3d.models.bundle import load_bundle

OBLIQUE_LPS = from_matvec(Rotation.from_euler("z", 20, degrees=True).as_matrix() @ np.diag([-0.8, -0.8, 2.0]),
                          [30.0, 20.0, -10.0])


def write_bundle(folder: Path, network_def, preprocessing, postprocessing, *, n_in=3, n_out=3, state=None):
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    config = {"network_def": network_def, "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
              "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2,
                          "overlap": 0.25, "mode": "gaussian"}}
    if postprocessing is not None:
        config["postprocessing"] = {"_target_": "Compose", "transforms": postprocessing}
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    meta = {"name": folder.name, "version": "0.0.1", "network_data_format": {
        "inputs": {"image": {"num_channels": n_in, "spatial_shape": [16, 16, 16]}},
        "outputs": {"pred": {"num_channels": n_out, "channel_def": {str(i): f"c{i}" for i in range(n_out)}}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    torch.save({"state_dict": state or {}}, folder / "models" / "model.pt")
    return folder


def blobs(shape, affine):
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    world = apply_affine(affine, idx)
    centre = apply_affine(affine, (np.asarray(shape) - 1) / 2)
    mask = np.zeros(shape, np.int64)
    mask[np.linalg.norm(world - centre - [4, 0, 0], axis=-1) < 8] = 1
    mask[np.linalg.norm(world - centre + [6, 3, 0], axis=-1) < 5] = 2
    return mask


def identity(n):
    """A 1×1×1 convolution with identity weights: a pass-through network MONAI can build from a config."""
    net = {"_target_": "torch.nn.Conv3d", "in_channels": n, "out_channels": n, "kernel_size": 1, "bias": False}
    return net, {"weight": torch.eye(n).reshape(n, n, 1, 1, 1)}


ORIENT = {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"}


def test_passthrough_bundle_exact_on_oblique_lps(tmp_path):
    folder = write_bundle(tmp_path / "orient", identity(3)[0], [ORIENT], [{"_target_": "AsDiscrete", "argmax": True}],
                          state=identity(3)[1])
    mask = blobs((36, 30, 10), OBLIQUE_LPS)
    vol = Volume(np.eye(3, dtype=np.float32)[mask], OBLIQUE_LPS, name="oblique")
    calls = []
    res = segment(vol, load_bundle(folder, trust=True), device="cpu", progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_array_equal(res.labels.data, mask)
    np.testing.assert_array_equal(res.labels.affine, OBLIQUE_LPS)
    np.testing.assert_array_equal(np.argmax(res.probabilities.data, -1), mask)
    assert calls and calls[-1][0] == calls[-1][1]


def test_passthrough_bundle_resampling_and_dict_postprocessing(tmp_path):
    spacing = {"_target_": "Spacingd", "keys": "image", "pixdim": [1.2, 1.2, 1.2], "mode": "bilinear"}
    folder = write_bundle(tmp_path / "spacing", identity(3)[0], [ORIENT, spacing],
                          [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}], state=identity(3)[1])
    mask = blobs((36, 30, 10), OBLIQUE_LPS)
    vol = Volume(np.eye(3, dtype=np.float32)[mask], OBLIQUE_LPS, name="oblique")
    res = segment(vol, load_bundle(folder, trust=True), device="cpu")
    assert res.labels.data.shape == mask.shape
    # the bundle discretised on its own 1.2 mm grid, so the boundary is only known to ±0.6 mm: what must
    # hold is that the labels sit where the balls are (no shift) with the overlap such a grid allows
    for c, min_dice in ((1, 0.95), (2, 0.9)):
        a, b = res.labels.data == c, mask == c
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= min_dice
        shift = apply_affine(OBLIQUE_LPS, np.argwhere(a).mean(0)) - apply_affine(OBLIQUE_LPS, np.argwhere(b).mean(0))
        assert np.linalg.norm(shift) < 0.25
    # the probabilities come from the raw logits, resampled linearly: nearly exact
    for c in (1, 2):
        a, b = np.argmax(res.probabilities.data, -1) == c, mask == c
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.98


def test_file_reading_bundle_never_saves(tmp_path):
    out_dir = tmp_path / "bundle_outputs"
    out_dir.mkdir()
    pre = [{"_target_": "LoadImaged", "keys": "image", "image_only": True},
           {"_target_": "EnsureChannelFirstd", "keys": "image"}, ORIENT]
    post = [{"_target_": "SaveImaged", "keys": "pred", "output_dir": str(out_dir)}]
    folder = write_bundle(tmp_path / "files", identity(1)[0], pre, post, n_in=1, n_out=1, state=identity(1)[1])
    aff = from_matvec(np.diag([-1.0, 1.0, -1.5]), [5, 6, 7])
    mask = blobs((30, 28, 12), aff)
    src = tmp_path / "scan.nii.gz"
    write_image(src, mask.astype(np.float32), aff)
    from napari_vit3d.io.nifti import read_nifti

    vol = read_nifti(src, as_labels=False)
    res = segment(vol, load_bundle(folder, trust=True), device="cpu", return_probabilities=False)
    np.testing.assert_array_equal(res.labels.data, mask)  # one-channel output: the bundle's labels, placed exactly
    assert list(out_dir.iterdir()) == []


def test_unet_bundle_labels_equal_monai_running_the_bundle(tmp_path):
    from monai.bundle import ConfigParser

    unet = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
            "channels": [4, 8], "strides": [2], "num_res_units": 1}
    torch.manual_seed(0)
    parser = ConfigParser()
    parser.read_config({"network_def": unet})
    state = parser.get_parsed_content("network_def").state_dict()
    pre = [{"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": "no_channel"},
           {"_target_": "ScaleIntensityd", "keys": "image"}]
    folder = write_bundle(tmp_path / "unet", unet, pre, [{"_target_": "AsDiscrete", "argmax": True}],
                          n_in=1, n_out=3, state=state)
    rng = np.random.default_rng(0)
    vol = Volume(rng.gamma(2, 30, (24, 20, 18)).astype(np.float32), from_matvec(np.eye(3), [1, 2, 3]))
    res = segment(vol, load_bundle(folder, trust=True), device="cpu")
    # MONAI itself: ConfigParser builds everything, torch.load reads the weights
    ref = ConfigParser()
    ref.read_config(str(folder / "configs" / "inference.json"))
    net = ref.get_parsed_content("network_def")
    net.load_state_dict(torch.load(folder / "models" / "model.pt", weights_only=False)["state_dict"])
    net.eval()
    with torch.no_grad():
        image = ref.get_parsed_content("preprocessing")({"image": torch.from_numpy(vol.data)})["image"][None]
        logits = ref.get_parsed_content("inferer")(image, net)
    labels = ref.get_parsed_content("postprocessing")(logits[0])
    np.testing.assert_array_equal(res.labels.data, np.asarray(labels)[0].astype(int))
    torch.testing.assert_close(res.logits, torch.as_tensor(logits[0]).as_subclass(torch.Tensor), atol=1e-5, rtol=0)
