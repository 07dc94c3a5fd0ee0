"""Safe checkpoint loading: safetensors, wrapped/prefixed .pt files, numpy scalars, malicious pickles,
strict key checks with readable errors."""

import builtins

import numpy as np
import pytest
import torch
from torch import nn

from napari_vit3d.errors import CheckpointError
from napari_vit3d.models.checkpoints import apply_state_dict, load_state_dict, save_safetensors


def small_net(seed=0, width=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(1, width, 3, padding=1), nn.BatchNorm3d(width), nn.ReLU(), nn.Conv3d(width, 2, 1))


def outputs_equal(a, b):
    x = torch.randn(1, 1, 6, 6, 6)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_safetensors_round_trip(tmp_path):
    src = small_net(0)
    src[1].running_mean.fill_(0.3)  # buffers travel too
    path = save_safetensors(src, tmp_path / "m.safetensors", metadata={"spec": "x"})
    dst = apply_state_dict(small_net(1), load_state_dict(path), source=str(path))
    assert outputs_equal(src, dst)
    assert torch.equal(dst[1].running_mean, torch.full((4,), 0.3))


def test_pt_with_state_dict_wrapper_module_prefix_and_numpy_scalars(tmp_path):
    src = small_net(0)
    wrapped = {"epoch": np.int64(12), "best_metric": np.float64(0.81), "lr": np.float32(1e-4),
               "history": np.arange(3.0), "dtype": np.dtype("float32"),
               "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}
    path = tmp_path / "m.pth"
    torch.save(wrapped, path)
    dst = apply_state_dict(small_net(1), load_state_dict(path), source=str(path))
    assert outputs_equal(src, dst)


def test_numpy_1_style_pickle_globals_are_accepted(tmp_path):
    """Checkpoints written under numpy 1.x name ``numpy.core.multiarray.scalar`` (numpy 2: ``numpy._core``)."""
    import zipfile

    src = small_net(0)
    new = tmp_path / "np2.pt"
    torch.save({"state_dict": src.state_dict(), "epoch": np.int64(3), "best": np.float64(0.9)}, new)
    old = tmp_path / "np1.pt"
    with zipfile.ZipFile(new) as zin, zipfile.ZipFile(old, "w", compression=zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(item.filename, data)
    assert "numpy.core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(str(old))
    assert outputs_equal(src, apply_state_dict(small_net(1), load_state_dict(old), source=str(old)))


def test_model_key_and_lightning_style_prefix(tmp_path):
    src = small_net(0)
    path = tmp_path / "m.ckpt"
    torch.save({"model": {f"model.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = apply_state_dict(small_net(1), load_state_dict(path), source=str(path))
    assert outputs_equal(src, dst)


class _Payload:
    """Unpickling this would create a file (it asks pickle to call ``exec``)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.target!r}, 'w').close()",))


@pytest.mark.parametrize("zipfile", [True, False])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, zipfile):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": small_net().state_dict(), "x": np.int64(1), "evil": _Payload(marker)}, path,
               _use_new_zipfile_serialization=zipfile)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    msg = str(info.value)
    assert "evil.pt" in msg and "exec" in msg and "safetensors" in msg and "\n" not in msg
    assert not marker.exists()
    # the check is real: an unrestricted load of the same file would run the payload
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_mismatched_checkpoint_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    state = small_net(width=4).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["3.bias"]
    path = tmp_path / "m.safetensors"
    save_safetensors(state, path)
    target = small_net(width=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        apply_state_dict(target, load_state_dict(path), source=str(path))
    msg = str(info.value)
    assert "missing 1: 3.bias" in msg
    assert "unexpected 1: extra.weight" in msg
    assert "0.weight (4, 1, 3, 3, 3) vs (5, 1, 3, 3, 3)" in msg
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing half-loaded


def test_long_key_lists_are_truncated():
    net = nn.Sequential(*[nn.Linear(2, 2) for _ in range(20)])
    with pytest.raises(CheckpointError, match=r"missing 40: .*\(\+32 more\)"):
        apply_state_dict(net, {}, source="empty")


def test_stale_monai_cross_attention_keys_are_dropped_with_a_warning():
    from monai.networks.nets import ViT

    torch.manual_seed(0)
    src = ViT(in_channels=1, img_size=16, patch_size=8, hidden_size=16, mlp_dim=16, num_layers=1, num_heads=2)
    state = dict(src.state_dict())
    # what MONAI 1.4-1.5 stored: an unused CrossAttentionBlock in every TransformerBlock
    state["blocks.0.cross_attn.qkv.weight"] = torch.zeros(48, 16)
    state["blocks.0.cross_attn.out_proj.weight"] = torch.zeros(16, 16)
    torch.manual_seed(1)
    dst = ViT(in_channels=1, img_size=16, patch_size=8, hidden_size=16, mlp_dim=16, num_layers=1, num_heads=2)
    with pytest.warns(UserWarning, match="cross-attention"):
        apply_state_dict(dst, state, source="old")
    x = torch.randn(1, 1, 16, 16, 16)
    assert torch.equal(src.eval()(x)[0], dst.eval()(x)[0])


def test_unreadable_and_unknown_files_are_user_errors(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "b.pt").write_bytes(b"garbage")
    (tmp_path / "c.h5").write_bytes(b"")
    for name in ("a.safetensors", "b.pt", "c.h5", "missing.pt"):
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            load_state_dict(tmp_path / name)
