"""Registry: networks built from specs equal MONAI's own constructors; names, paths and user-added models;
load_model with safe weights."""

import json

import pytest
import torch

from napari_vit3d.errors import ModelError, Vit3dError
from napari_vit3d.models import registry
from napari_vit3d.models.checkpoints import save_safetensors
from napari_vit3d.models.registry import (
    add_model,
    build_network,
    default_model_name,
    get_spec,
    list_models,
    load_model,
    remove_model,
)
from napari_vit3d.models.spec import ModelSpec

LABELS = [{"index": 0, "name": "background"}, {"index": 1, "name": "brain", "color": [1, 0, 0, 1]}]


@pytest.fixture(autouse=True)
def user_config(tmp_path, monkeypatch):
    d = tmp_path / "config"
    monkeypatch.setenv("NAPARI_VIT3D_CONFIG_DIR", str(d))
    return d


@pytest.fixture
def no_bundled(tmp_path, monkeypatch):
    d = tmp_path / "bundled"
    d.mkdir()
    monkeypatch.setattr(registry, "bundled_models_dir", lambda: d)
    return d


def spec(arch, **kw):
    return ModelSpec(name=kw.pop("name", f"tiny-{arch}"), architecture=arch, labels=LABELS,
                     roi_size=kw.pop("roi_size", (32, 32, 32)), **kw)


def same_output(a, b, shape=(1, 1, 32, 32, 32)):
    x = torch.randn(shape)
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    return ya.shape == yb.shape and torch.equal(ya, yb)


def test_unetr_from_spec_equals_monai_constructed_directly():
    from monai.networks.nets import UNETR

    kw = dict(feature_size=4, hidden_size=24, mlp_dim=48, num_heads=2)
    torch.manual_seed(0)
    ours = build_network(spec("unetr", arch_kwargs=kw, roi_size=(16, 16, 32)))  # img_size defaults to the ROI
    torch.manual_seed(0)
    ref = UNETR(in_channels=1, out_channels=2, img_size=(16, 16, 32), **kw)
    assert len(ours.vit.blocks) == 12  # MONAI's UNETR always has 12 layers
    assert same_output(ours, ref, shape=(1, 1, 16, 16, 32))


def test_swin_unetr_from_spec_equals_monai_and_drops_stale_img_size():
    from monai.networks.nets import SwinUNETR

    # batch norm: instance norm cannot normalise the 1-voxel bottleneck of a 32³ input
    kw = dict(feature_size=12, depths=(1, 1, 1, 1), num_heads=(3, 3, 3, 3), norm_name="batch")
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="img_size"):
        ours = build_network(spec("swin_unetr", arch_kwargs={**kw, "img_size": [96, 96, 96], "use_checkpoint": False}))
    torch.manual_seed(0)
    ref = SwinUNETR(in_channels=1, out_channels=2, **kw)
    assert ours.swinViT.layers1[0].blocks[0].use_checkpoint is False
    assert same_output(ours, ref)


def test_segformer3d_and_vit_seg_build_from_specs():
    sf = build_network(spec("segformer3d", arch_kwargs=dict(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4),
                                                              decoder_dim=16)))
    assert sf.attn_scale == "head_dim"
    vs = build_network(spec("vit_seg", arch_kwargs=dict(patch_size=8, hidden_size=48, mlp_dim=96, num_layers=2,
                                                          num_heads=4, feature_size=8)))
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert sf.eval()(x).shape == vs.eval()(x).shape == (1, 2, 32, 32, 32)


def test_identity_model_returns_the_input_mask():
    net = build_network(spec("identity"))
    mask = torch.randint(0, 2, (1, 1, 5, 6, 7)).float()
    assert torch.equal(net(mask).argmax(1, keepdim=True).float(), mask)


def test_bad_arch_kwargs_are_user_errors():
    with pytest.raises(ModelError, match="arch_kwargs"):
        build_network(spec("segformer3d", arch_kwargs={"no_such_argument": 1}))
    with pytest.raises(ModelError, match=r"ROI \(32, 32, 40\) must be a multiple of 32"):
        build_network(spec("segformer3d", roi_size=(32, 32, 40)))
    with pytest.raises(ModelError, match="only accepts windows of its img_size"):
        build_network(spec("unetr", arch_kwargs={"img_size": [64, 64, 64]}))
    with pytest.raises(ModelError, match="out_channels=3 but 2 labels"):
        build_network(spec("unetr", arch_kwargs={"out_channels": 3}))


def write_model(folder, arch="segformer3d", name="my-seg", seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    s = spec(arch, name=name, arch_kwargs=dict(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), decoder_dim=16),
             weights="model.safetensors", spacing=(1.5, 1.5, 2.0))
    torch.manual_seed(seed)
    net = build_network(s)
    save_safetensors(net, folder / "model.safetensors")
    s.to_json(folder / "model.json")
    return s, net


def test_checkpoint_with_spec_beside_it_loads_the_weights(tmp_path):
    s, net = write_model(tmp_path / "m")
    for handle in (tmp_path / "m" / "model.safetensors", tmp_path / "m" / "model.json"):
        loaded = load_model(handle)
        assert not loaded.network.training
        assert loaded.spec.spacing == (1.5, 1.5, 2.0) and loaded.weights_sha256 and len(loaded.weights_sha256) == 64
        assert same_output(loaded.network, net)
    (tmp_path / "m" / "model.json").unlink()
    with pytest.raises(ModelError, match="model.json"):
        get_spec(tmp_path / "m" / "model.safetensors")


def test_user_added_model_round_trip(tmp_path, user_config, no_bundled):
    s, net = write_model(tmp_path / "m")
    added = add_model(tmp_path / "m" / "model.safetensors", name="brain-seg")
    assert added.name == "brain-seg"
    assert (user_config / "models.json").is_file()
    entries = list_models()
    assert [(e.name, e.source) for e in entries] == [("brain-seg", "user")]
    got = get_spec("brain-seg")
    want = {**s.to_dict(), "name": "brain-seg", "weights": str((tmp_path / "m" / "model.safetensors").resolve())}
    roundtrip = lambda d: json.loads(json.dumps(d))  # noqa: E731 (JSON turns tuples into lists)
    assert roundtrip(got.to_dict()) == roundtrip(want)
    assert same_output(load_model("brain-seg").network, net)
    write_model(tmp_path / "other", name="other")
    with pytest.raises(ModelError, match="already registered"):
        add_model(tmp_path / "other" / "model.json", name="brain-seg")
    remove_model("brain-seg")
    assert list_models() == []
    with pytest.raises(ModelError, match="unknown model 'brain-seg'"):
        get_spec("brain-seg")


def test_bundled_specs_and_default_model(no_bundled, tmp_path):
    with pytest.raises(ModelError, match="no bundled default model yet; pass --model"):
        default_model_name()
    s, net = write_model(no_bundled, name="shipped")
    (no_bundled / "model.json").rename(no_bundled / "shipped.json")
    d = json.loads((no_bundled / "shipped.json").read_text())
    d["extra"] = {"default": True}
    (no_bundled / "shipped.json").write_text(json.dumps(d))
    assert default_model_name() == "shipped"
    [entry] = list_models()
    assert entry.source == "bundled" and entry.is_default and entry.spec.name == "shipped"
    assert same_output(load_model("shipped").network, net)
    with pytest.raises(ModelError, match="taken by a bundled model"):
        add_model(no_bundled / "shipped.json")


def test_random_init_warns_and_unknown_names_list_known_ones(no_bundled):
    with pytest.warns(UserWarning, match="random"):
        loaded = load_model(spec("segformer3d", arch_kwargs=dict(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4),
                                                                   decoder_dim=16)))
    assert loaded.weights_sha256 is None
    with pytest.raises(Vit3dError, match="unknown model 'nope'"):
        get_spec("nope")
    with pytest.raises(Vit3dError, match="no such file"):
        get_spec("missing/model.safetensors")
    with pytest.raises(Vit3dError, match="unknown device 'gpu9'"):
        load_model(loaded.spec, device="gpu9")
    assert load_model(loaded.spec, device="auto").device.type in ("cuda", "mps", "cpu")


def test_one_device_choice_for_inference_and_loading(monkeypatch):
    """One ``resolve_device`` (``models.devices``) for loading, inference and the front ends: "auto"
    (also None / "") picks CUDA > MPS > CPU; a GPU index that does not exist is refused in one line
    instead of failing inside torch."""
    import torch

    from napari_vit3d import inference
    from napari_vit3d.errors import ModelError
    from napari_vit3d.models import devices, registry

    resolve_device = devices.resolve_device
    assert inference.resolve_device is resolve_device and registry.resolve_device is resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if not devices._mps_available():
        assert resolve_device() == resolve_device(None) == resolve_device("") == torch.device("cpu")
    assert resolve_device("CPU") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("gpu9", "meta"):
        with pytest.raises(ModelError, match=f"unknown device '{bad}'"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ModelError, match="only 1 CUDA GPU"):
        resolve_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="no CUDA GPU is available"):
        resolve_device(torch.device("cuda"))
