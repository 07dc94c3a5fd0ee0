"""`napari-vit3d models` (list, card, add, remove, cost) and the cost card's counts."""

import json

import pytest
import torch
from torch import nn

from napari_vit3d.cli import main
from napari_vit3d.models import registry
from napari_vit3d.models.checkpoints import save_safetensors
from napari_vit3d.models.cost import format_cost, model_cost
from napari_vit3d.models.registry import build_network
from napari_vit3d.models.spec import ModelSpec


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_VIT3D_CONFIG_DIR", str(tmp_path / "config"))
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    monkeypatch.setattr(registry, "bundled_models_dir", lambda: bundled)
    return bundled


def test_cost_counts_parameters_and_flops_of_a_convolution():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(2, 3, kernel_size=3, padding=1), nn.ReLU(), nn.Conv3d(3, 4, kernel_size=1))
    cost = model_cost(net, (8, 8, 16), 2, "cpu", repeats=2)
    assert cost["params"] == (2 * 3 * 27 + 3) + (3 * 4 + 4) == cost["trainable_params"]
    voxels = 8 * 8 * 16
    # a multiply-add is 2 FLOPs; per output voxel: conv1 3 outputs × 2·27 inputs, conv2 4 outputs × 3 inputs
    assert cost["flops"] == 2 * voxels * (3 * 2 * 27 + 4 * 3)
    assert len(cost["latency_all_s"]) == 2 and cost["latency_s"] > 0
    text = format_cost(cost)
    assert "parameters:   181 (181 trainable)" in text and "FLOPs/window" in text


class _TwoTemporaries(nn.Module):
    def forward(self, x):
        y = x * 2.0  # one input-sized tensor
        z = y + 1.0  # a second one while y is alive
        return z


def test_cost_peak_memory_on_cpu_counts_live_tensors():
    cost = model_cost(_TwoTemporaries(), (16, 16, 32), 3, "cpu", repeats=1)
    assert cost["memory_method"] == "torch_profiler_cpu_allocations"
    two = 2 * (3 * 16 * 16 * 32) * 4
    assert two <= cost["peak_memory_bytes"] < two + 1024  # + a few bytes of scalar operands
    assert cost["params"] == 0 and cost["flops"] == 0


def write_model(folder, name="tiny-seg", default=False, card=None):
    folder.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec(name=name, architecture="segformer3d", roi_size=(32, 32, 32), spacing=(1, 1, 1.5),
                     arch_kwargs=dict(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), decoder_dim=16),
                     labels=[{"index": 0, "name": "background"}, {"index": 1, "name": "brain"}],
                     weights=f"{name}.safetensors", card=card, extra={"default": True} if default else {})
    save_safetensors(build_network(spec), folder / f"{name}.safetensors")
    spec.to_json(folder / f"{name}.json")
    return folder / f"{name}.json"


def test_list_add_card_remove(tmp_path, isolated, capsys):
    assert main(["models"]) == 0
    assert "no models yet" in capsys.readouterr().out
    (isolated / "shipped.md").write_text("# Shipped model\n\nTrained on synthetic brains.\n")
    write_model(isolated, name="shipped", default=True, card="shipped.md")
    user = write_model(tmp_path / "mine", name="mine")
    assert main(["models", "--add", str(user.with_suffix(".safetensors")), "--name", "my-model"]) == 0
    assert "added model 'my-model'" in capsys.readouterr().out

    assert main(["models"]) == 0
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line
            for line in capsys.readouterr().out.splitlines()[2:] if line.strip() and not line.startswith("* default")}
    assert rows["shipped"].startswith("*") and "bundled" in rows["shipped"] and "1×1×1.5" in rows["shipped"]
    assert "segformer3d" in rows["my-model"] and "user" in rows["my-model"] and "32×32×32" in rows["my-model"]

    assert main(["models", "--card", "shipped"]) == 0
    out = capsys.readouterr().out
    assert "Trained on synthetic brains." in out and '"architecture": "segformer3d"' in out

    assert main(["models", "--card", "my-model", "--cost", "--repeats", "1", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["spec"]["name"] == "my-model"
    assert card["cost"]["params"] == sum(p.numel() for p in build_network(ModelSpec.from_json(user)).parameters())
    assert card["cost"]["flops"] > 0

    assert main(["models", "--remove", "my-model"]) == 0
    capsys.readouterr()
    assert main(["models", "--json"]) == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)] == ["shipped"]


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["models", "--card", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'nope'") and err.count("\n") == 1
    assert main(["models", "--add", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["models", "--cost"]) == 2
    assert "--cost only goes with --card" in capsys.readouterr().err
