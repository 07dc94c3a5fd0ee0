"""MONAI bundles written by the test: our loader (safe weights) gives what MONAI's own ConfigParser +
torch.load give; metadata becomes the spec; the stale SwinUNETR img_size is dropped with a warning."""

import json

import numpy as np
import pytest
import torch

from napari_vit3d.errors import CheckpointError, ModelError
from napari_vit3d.models.bundle import bundle_spec, load_bundle
from napari_vit3d.models.registry import add_model, get_spec, list_models, load_model

UNET = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
        "channels": [4, 8], "strides": [2], "num_res_units": 1}
SWIN = {"_target_": "SwinUNETR", "img_size": [96, 96, 96], "in_channels": 1, "out_channels": 3, "feature_size": 12,
        "depths": [1, 1, 1, 1], "num_heads": [3, 3, 3, 3], "norm_name": "batch"}


def write_bundle(folder, network_def, *, yaml=False, seed=0):
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    config = {
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": "no_channel"},
            {"_target_": "ScaleIntensityd", "keys": "image"}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.25},
        "postprocessing": {"_target_": "AsDiscrete", "argmax": True},
    }
    if yaml:
        import yaml as pyyaml
        (folder / "configs" / "inference.yaml").write_text(pyyaml.safe_dump(config))
    else:
        (folder / "configs" / "inference.json").write_text(json.dumps(config))
    meta = {"name": "Tiny test bundle", "version": "0.0.1", "monai_version": "1.6.1",
            "network_data_format": {
                "inputs": {"image": {"num_channels": 1, "spatial_shape": [16, 16, 16], "channel_def": {"0": "MRI"}}},
                "outputs": {"pred": {"num_channels": 3, "channel_def": {"0": "background", "1": "left", "2": "right"}}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    from monai.bundle import ConfigParser

    torch.manual_seed(seed)
    parser = ConfigParser()
    parser.read_config({"network_def": {k: v for k, v in network_def.items() if k != "img_size"}})
    net = parser.get_parsed_content("network_def")
    for m in net.modules():  # non-trivial buffers so that a loader that skips them would be caught
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    torch.save({"state_dict": net.state_dict(), "epoch": np.int64(7)}, folder / "models" / "model.pt")
    return folder


def monai_reference(folder, x):
    """What a MONAI user does: ConfigParser builds everything, torch.load reads the weights."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(next((folder / "configs").glob("inference.*"))))
    net = parser.get_parsed_content("network")
    net.load_state_dict(torch.load(folder / "models" / "model.pt", weights_only=False)["state_dict"])
    net.eval()
    pre, inferer, post = (parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing"))
    with torch.no_grad():
        image = pre({"image": x})["image"][None]
        logits = inferer(image, net)
    return logits, post(logits[0])


@pytest.mark.parametrize("yaml", [False, True])
def test_bundle_gives_monai_own_output(tmp_path, yaml):
    folder = write_bundle(tmp_path / "bundle", UNET, yaml=yaml)
    bundle = load_bundle(folder, trust=True)
    assert not bundle.network.training
    assert bundle.spec.architecture == "monai_bundle" and bundle.spec.name == "Tiny test bundle"
    assert [(l.index, l.name) for l in bundle.spec.labels] == [(0, "background"), (1, "left"), (2, "right")]
    assert bundle.spec.channel_names == ("MRI",) and bundle.spec.roi_size == (16, 16, 16)
    x = torch.rand(24, 20, 16) * 100
    with torch.no_grad():
        image = bundle.preprocessing({"image": x})["image"][None]
        logits = bundle.inferer(image, bundle.network)
    labels = bundle.postprocessing(logits[0])
    ref_logits, ref_labels = monai_reference(folder, x)
    torch.testing.assert_close(torch.as_tensor(logits), torch.as_tensor(ref_logits), atol=1e-6, rtol=0)
    assert torch.equal(torch.as_tensor(labels), torch.as_tensor(ref_labels))
    assert labels.shape == (1, 24, 20, 16)


def test_stale_swin_unetr_img_size_is_dropped_with_a_warning(tmp_path):
    from monai.bundle import ConfigParser
    from monai.networks.nets import SwinUNETR

    folder = write_bundle(tmp_path / "swin", SWIN)
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    with pytest.raises(Exception):  # MONAI itself cannot build this published-style config any more
        parser.get_parsed_content("network_def")
    with pytest.warns(UserWarning, match="img_size"):
        bundle = load_bundle(folder, trust=True)
    ref = SwinUNETR(**{k: v for k, v in SWIN.items() if k not in ("_target_", "img_size")})
    ref.load_state_dict(torch.load(folder / "models" / "model.pt", weights_only=False)["state_dict"])
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(bundle.network(x), ref.eval()(x))


def test_bundle_through_the_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_VIT3D_CONFIG_DIR", str(tmp_path / "config"))
    folder = write_bundle(tmp_path / "b", UNET)
    spec = add_model(folder, name="tiny-bundle", trust_bundle=True)
    assert spec.architecture == "monai_bundle"
    assert get_spec(folder / "configs" / "inference.json").architecture == "monai_bundle"
    assert "tiny-bundle" in [e.name for e in list_models()]
    loaded = load_model("tiny-bundle")
    assert loaded.bundle is not None and loaded.bundle.inferer is not None
    assert loaded.spec.name == "tiny-bundle" and len(loaded.weights_sha256) == 64


def test_broken_bundles_are_user_errors(tmp_path):
    folder = write_bundle(tmp_path / "b", UNET)
    (folder / "models" / "model.pt").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_bundle(folder, trust=True)
    assert bundle_spec(folder).weights is None
    with pytest.raises(ModelError, match="not a MONAI bundle"):
        load_bundle(tmp_path, trust=True)
    bad = write_bundle(tmp_path / "bad", {**UNET, "channels": [4, 8, 16], "strides": [2, 2]})
    torch.save({"state_dict": {"x": torch.zeros(1)}}, bad / "models" / "model.pt")
    with pytest.raises(CheckpointError, match="unexpected 1: x"):
        load_bundle(bad, trust=True)
