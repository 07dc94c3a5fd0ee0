"""The model registry survives a corrupt ``models.json`` (set aside, bundled models still listed), tests every
model before adding it, and NaN/Inf weights are refused instead of giving arbitrary labels."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_vit3d.cli import main
from napari_vit3d.errors import CheckpointError, ModelError, ModelWarning
from napari_vit3d.models.checkpoints import load_state_dict, save_safetensors
from napari_vit3d.models.registry import add_model, build_network, config_dir, get_spec, list_models
from napari_vit3d.models.spec import ModelSpec

TINY = {"name": "tiny-seg", "architecture": "segformer3d", "in_channels": 1, "channel_names": ["T1"],
        "spacing": [1.0, 1.0, 1.0], "roi_size": [32, 32, 32],
        "arch_kwargs": {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
                        "decoder_dim": 16},
        "labels": [{"index": 0, "name": "background"}, {"index": 1, "name": "brain"}]}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_VIT3D_CONFIG_DIR", str(tmp_path / "config"))


def write_model(folder: Path, spec: dict = TINY, *, weights_spec: dict | None = None, nan: bool = False) -> Path:
    """``<name>.json`` + ``<name>.safetensors`` (weights of ``weights_spec``'s network, default the spec's own)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = spec["name"]
    net = build_network(ModelSpec.from_dict({**(weights_spec or spec), "name": name}))
    if nan:
        next(net.parameters()).data[0] = float("nan")
    save_safetensors(net, folder / f"{name}.safetensors")
    path = folder / f"{name}.json"
    path.write_text(json.dumps({**spec, "weights": f"{name}.safetensors"}))
    return path


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]", "\udcff"])
def test_corrupt_registry_is_set_aside_and_bundled_models_are_still_listed(content, capsys):
    reg = config_dir() / "models.json"
    reg.parent.mkdir(parents=True)
    reg.write_text(content, encoding="utf-8", errors="surrogateescape")
    with pytest.warns(ModelWarning, match="corrupt"):
        names = [e.name for e in list_models()]
    assert {"segformer3d-brain", "dino-vit-brain"} <= set(names)
    aside = list(reg.parent.glob("models.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content.encode("utf-8", "surrogateescape")
    assert not reg.exists()
    reg.write_text(content, encoding="utf-8", errors="surrogateescape")
    assert main(["models"]) == 0
    out, err = capsys.readouterr()
    assert "segformer3d-brain" in out and err.count("\n") == 1 and "corrupt" in err


def test_add_model_test_loads_before_registering(tmp_path, capsys):
    good = write_model(tmp_path / "good")
    assert add_model(good).name == "tiny-seg"
    # weights of another architecture width: the keys do not match
    wide = {**TINY, "arch_kwargs": {**TINY["arch_kwargs"], "embed_dims": [8, 16, 24, 40], "num_heads": [1, 2, 2, 4]}}
    bad = write_model(tmp_path / "bad", {**TINY, "name": "mismatch"}, weights_spec=wide)
    with pytest.raises(CheckpointError, match="not added, it does not load"):
        add_model(bad)
    broken = tmp_path / "broken" / "broken.json"
    broken.parent.mkdir()
    broken.write_text(json.dumps({**TINY, "name": "broken", "arch_kwargs": {"no_such_argument": 1}}))
    with pytest.raises(ModelError, match="not added"):
        add_model(broken)
    assert main(["models", "--add", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not load" in err
    assert [e.name for e in list_models() if e.source == "user"] == ["tiny-seg"]


def test_nan_weights_are_refused(tmp_path, capsys):
    path = write_model(tmp_path / "nan", {**TINY, "name": "nan-model"}, nan=True)
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_state_dict(path.with_suffix(".safetensors"))
    rng = np.random.default_rng(0)
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(100, 20, (40, 36, 32)).astype(np.float32), np.eye(4)), str(scan))
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", str(scan), "-o", str(out), "--model", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NaN or Inf" in err and not out.exists()
    with pytest.raises(CheckpointError):
        add_model(path)


def test_specs_from_code_may_still_name_absolute_weights(tmp_path):
    """A checkpoint the user passes by path is theirs to choose: only paths written in spec files are confined."""
    path = write_model(tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = get_spec(path.with_suffix(".safetensors"))
    assert Path(spec.weights).is_absolute() and spec.weights_path.is_file()
