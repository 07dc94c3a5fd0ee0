"""A MONAI bundle's config is code: nothing of an untrusted bundle runs (the marker file of a smuggled
expression never appears) on listing, ``models --card`` (with or without ``--cost``), ``models --add``,
``segment``, ``explain``, ``compare`` and ``batch``; with trust (for one run, or recorded for the config's
content hash) the bundle runs, and a changed config is untrusted again. Spec fields that name files stay
inside the spec's folder; the pickle refusal hands out no unsafe one-liner."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_vit3d.cli import main
from napari_vit3d.errors import CheckpointError, ModelError, UntrustedCodeError
from napari_vit3d.models import registry
from napari_vit3d.models.bundle import bundle_spec, load_bundle
from napari_vit3d.models.checkpoints import load_state_dict
from napari_vit3d.models.registry import get_spec, list_models, load_model
from napari_vit3d.models.trust import (
    bundle_digest,
    describe_bundle_code,
    is_trusted,
    trust_bundle,
    trusted_bundles_path,
)

UNET = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
        "channels": [4, 8], "strides": [2], "num_res_units": 1}
PRE = [{"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": "no_channel"},
       {"_target_": "ScaleIntensityd", "keys": "image"}]
INFERER = {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 1, "overlap": 0.25}
POST = [{"_target_": "AsDiscrete", "argmax": True}]


def touch(marker: Path) -> str:
    return f"__import__('os').system('touch {marker}')"


def write_bundle(folder: Path, *, network_def=None, pre=None, inferer=None, post=None, spatial_shape=True) -> Path:
    """A tiny UNet bundle; its weights are the network's own (saved as a plain state dict)."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    config = {"network_def": network_def or UNET,
              "preprocessing": {"_target_": "Compose", "transforms": pre or PRE},
              "inferer": inferer or INFERER,
              "postprocessing": {"_target_": "Compose", "transforms": post or POST}}
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    image = {"num_channels": 1, **({"spatial_shape": [16, 16, 16]} if spatial_shape else {})}
    meta = {"name": folder.name, "version": "0.0.1", "network_data_format": {
        "inputs": {"image": image}, "outputs": {"pred": {"num_channels": 2, "channel_def": {"0": "bg", "1": "fg"}}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(**{k: v for k, v in UNET.items() if k != "_target_"})
    torch.save({"state_dict": net.state_dict()}, folder / "models" / "model.pt")
    return folder


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_VIT3D_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


@pytest.fixture
def scan(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(100, 20, (20, 18, 16)).astype(np.float32), np.eye(4)), str(path))
    return path


def _payload_bundles(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """The issue's smuggled code, one bundle per place a config runs it."""
    return {
        "network_def": write_bundle(tmp_path / "b_net", network_def={**UNET, "channels": f"${touch(marker)} or [4, 8]"}),
        "preprocessing": write_bundle(tmp_path / "b_pre", pre=[*PRE, {"_target_": "os.system",
                                                                     "command": f"touch {marker}"}]),
        "lambdad": write_bundle(tmp_path / "b_post", post=[{"_target_": "Lambdad", "keys": "pred",
                                                            "func": f"${touch(marker)} or (lambda x: x)"}]),
        "inferer": write_bundle(tmp_path / "b_inf", spatial_shape=False,
                                inferer={**INFERER, "roi_size": f"${touch(marker)} or [16, 16, 16]"}),
    }


COMMANDS = {
    "segment": lambda b, scan, out: ["segment", str(scan), "-o", str(out / "l.nii.gz"), "--model", str(b), "--quiet"],
    "explain": lambda b, scan, out: ["explain", str(scan), "--method", "erf", "--point-voxel", "5,5,5", "--model",
                                     str(b), "-o", str(out / "e.nii.gz")],
    "compare": lambda b, scan, out: ["compare", str(scan), "--model-a", str(b), "--model-b", str(b), "-o",
                                     str(out / "d.nii.gz"), "--device", "cpu"],
    "models --card --cost": lambda b, scan, out: ["models", "--card", str(b), "--cost", "--repeats", "1"],
    "models --add": lambda b, scan, out: ["models", "--add", str(b)],
    "batch": lambda b, scan, out: ["batch", str(scan), "-o", str(out / "batch"), "--model", str(b), "--quiet"],
}


def test_untrusted_bundle_code_never_runs(tmp_path, scan, capsys):
    marker = tmp_path / "MARKER"
    bundles = _payload_bundles(tmp_path, marker)
    out = tmp_path / "out"
    out.mkdir()
    # listed through the registry (a hand-written entry: adding one would test-load it), specs, cards: no code runs
    registry._write_registry({name: {"path": str(b)} for name, b in bundles.items()})
    assert {e.name for e in list_models()} >= set(bundles)
    for name, b in bundles.items():
        assert bundle_spec(b).architecture == "monai_bundle" and get_spec(name).root == str(b.resolve())
        assert main(["models", "--card", str(b)]) == 0
        assert not marker.exists(), name
    assert get_spec(bundles["inferer"]).roi_size == (96, 96, 96)  # an expression is not evaluated, not even here
    assert main(["models"]) == 0
    capsys.readouterr()
    for what, b in bundles.items():
        for command, argv in COMMANDS.items():
            rc = main(argv(b, scan, out))
            err = capsys.readouterr().err.strip()
            assert not marker.exists(), f"{what} ran on {command}"
            assert rc == 2, (what, command, err)
            assert len(err.splitlines()) == 1 and "--trust-bundle" in err and "config is code" in err, err
            with pytest.raises(UntrustedCodeError):
                load_bundle(b)
    assert not list(out.rglob("*.nii.gz"))
    # the check is real: with trust, the smuggled expression does run
    assert main(["models", "--card", str(bundles["network_def"]), "--cost", "--repeats", "1", "--trust-bundle"]) == 0
    assert marker.exists()


def test_describe_bundle_code_lists_every_entry_with_its_key(tmp_path):
    marker = tmp_path / "M"
    bundles = _payload_bundles(tmp_path, marker)
    net = describe_bundle_code(bundles["network_def"])
    assert any(line.startswith("inference.json network_def#channels: evaluates $__import__('os')") for line in net)
    assert any("network_def#_target_: instantiates monai.networks.nets.UNet" in line for line in net)
    pre = describe_bundle_code(bundles["preprocessing"])
    assert any("preprocessing#transforms#2#_target_: instantiates os.system" in line for line in pre)
    post = describe_bundle_code(bundles["lambdad"])
    assert any("postprocessing#transforms#0#_target_: instantiates Lambdad with func $__import__" in line
               for line in post)
    assert not marker.exists()


def test_trusted_bundle_runs_and_a_changed_config_is_untrusted_again(tmp_path, scan, capsys, config_dir):
    b = write_bundle(tmp_path / "legit")
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", str(scan), "-o", str(out), "--model", str(b), "--quiet"]) == 2
    assert "refused to load this MONAI bundle" in capsys.readouterr().err and not out.exists()
    # trusted for one run: nothing is recorded
    assert main(["segment", str(scan), "-o", str(out), "--model", str(b), "--quiet", "--trust-bundle"]) == 0
    assert nib.load(str(out)).shape == (20, 18, 16) and not trusted_bundles_path().exists()
    # recorded: models --add --trust-bundle test-loads it and records the content hash
    assert main(["models", "--add", str(b), "--name", "legit", "--trust-bundle"]) == 0
    record = json.loads(trusted_bundles_path().read_text())
    assert bundle_digest(b) in record["bundles"] and is_trusted(b)
    assert main(["segment", str(scan), "-o", str(out), "--model", "legit", "--quiet"]) == 0
    assert load_model("legit").bundle is not None
    capsys.readouterr()
    # one changed character in a config: untrusted again, and said so
    cfg = b / "configs" / "inference.json"
    cfg.write_text(cfg.read_text().replace('"overlap": 0.25', '"overlap": 0.5'))
    assert not is_trusted(b)
    assert main(["segment", str(scan), "-o", str(out), "--model", "legit", "--quiet"]) == 2
    assert "changed since it was trusted" in capsys.readouterr().err
    trust_bundle(b)
    assert is_trusted(b) and load_bundle(b).inferer.overlap == 0.5


def test_file_macros_are_refused_even_when_trusted(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"net": UNET}))
    b = write_bundle(tmp_path / "macro", network_def=f"%{other}#net")
    assert any("macro" in line for line in describe_bundle_code(b))
    with pytest.raises(ModelError, match="macro that reads another file"):
        load_bundle(b, trust=True)


def _spec(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"name": "tiny", "architecture": "identity", "in_channels": 1, "channel_names": ["T1"],
            "labels": [{"index": 0, "name": "bg"}, {"index": 1, "name": "fg"}], **fields}
    path = folder / "tiny.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.parametrize("field", ["weights", "card"])
@pytest.mark.parametrize("value", ["/etc/passwd", "../secret.md", "sub/../../secret.md"])
def test_spec_file_fields_must_stay_in_the_spec_folder(tmp_path, capsys, field, value):
    (tmp_path / "secret.md").write_text("SECRET-CONTENT")
    path = _spec(tmp_path / "model", **{field: value})
    with pytest.raises(ModelError, match="inside the spec's folder"):
        get_spec(path)
    assert main(["models", "--card", str(path)]) == 2
    captured = capsys.readouterr()
    assert "SECRET" not in captured.out and "root:" not in captured.out
    assert len(captured.err.strip().splitlines()) == 1


def test_links_out_of_the_spec_folder_are_refused_and_cards_are_not_printed(tmp_path, capsys):
    (tmp_path / "secret.md").write_text("SECRET-CONTENT")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "card.md").symlink_to(tmp_path / "secret.md")
    (folder / "w.safetensors").symlink_to(tmp_path / "secret.md")
    path = _spec(folder, card="card.md")
    assert main(["models", "--card", str(path)]) == 0
    captured = capsys.readouterr()
    assert "SECRET" not in captured.out and "leads out of the spec's folder" in captured.err
    with pytest.raises(ModelError, match="leads out of the spec's folder"):
        load_model(_spec(folder, weights="w.safetensors"))
    # a card that is not a text file is not printed either
    (folder / "blob.bin").write_bytes(b"\x00SECRET")
    assert main(["models", "--card", str(_spec(folder, card="blob.bin"))]) == 0
    captured = capsys.readouterr()
    assert "SECRET" not in captured.out and "not a text file" in captured.err
    # a card inside the folder still is
    (folder / "real.md").write_text("# Tiny\nhello card")
    assert main(["models", "--card", str(_spec(folder, card="real.md"))]) == 0
    assert "hello card" in capsys.readouterr().out


class _Payload:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        import builtins

        return (builtins.exec, (f"open({self.target!r}, 'w').close()",))


def test_pickle_refusal_gives_no_unsafe_one_liner(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "evil": _Payload(tmp_path / "pwned")}, path)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    msg = str(info.value)
    assert "weights_only=False" not in msg and "torch.load" not in msg
    assert "docs/security.md" in msg and "trust" in msg and "isolated" in msg
    assert not (tmp_path / "pwned").exists()
