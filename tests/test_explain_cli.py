"""``napari-vit3d explain`` end to end on a re-oriented Colin27 crop with a tiny random ViTSeg (CLS)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import colin27_crop, write_spec
from nibabel.affines import apply_affine

from napari_vit3d.cli import main
from napari_vit3d.cli.explain import sidecar_path


@pytest.fixture(scope="module")
def crop(tmp_path_factory) -> Path:
    """A 50×44×40 crop of Colin27 stored LPS-like (x and y flipped) on disk."""
    return colin27_crop(tmp_path_factory.mktemp("scan"), np.s_[66:116, 88:132, 70:110])


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    spec = {"name": "tiny-vit", "architecture": "vit_seg", "in_channels": 1, "channel_names": ["T1"],
            "spacing": [1.5, 1.5, 1.5], "roi_size": [32, 32, 32], "normalization": {"kind": "zscore_nonzero"},
            "arch_kwargs": {"patch_size": 8, "hidden_size": 32, "mlp_dim": 64, "num_layers": 3, "num_heads": 4,
                            "feature_size": 4},
            "labels": [{"index": 0, "name": "background"}, {"index": 1, "name": "brain"}]}
    return write_spec(tmp_path_factory.mktemp("model"), spec, "tiny-vit")


def _check_on_grid(out: Path, src: Path, n4=None):
    a, b = nib.load(str(out)), nib.load(str(src))
    assert a.shape[:3] == b.shape[:3]
    assert (len(a.shape) == 4 and a.shape[3] == n4) if n4 else len(a.shape) == 3
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)
    assert int(a.header["sform_code"]) == int(b.header["sform_code"])
    d = a.get_fdata(dtype=np.float32)
    assert np.isfinite(d).all() and d.max() > 0
    return d


def test_attention_rollout_dino_erf_through_cli(crop, spec_path, tmp_path, capsys):
    world = apply_affine(nib.load(str(crop)).affine, (25, 22, 20))
    out = tmp_path / "att.nii.gz"
    rc = main(["explain", str(crop), "--method", "attention", "--point-world", ",".join(f"{v:.3f}" for v in world),
               "--layer", "2", "--head", "1", "--model", str(spec_path), "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    _check_on_grid(out, crop)
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["method"] == "attention" and meta["layer"] == 2 and meta["head"] == 1 and meta["model"] == "tiny-vit"
    np.testing.assert_allclose(meta["query"]["world_mm"], world, atol=1e-3)

    out = tmp_path / "all.nii"
    assert main(["explain", str(crop), "--method", "attention", "--point-voxel", "25,22,20", "--head", "all",
                 "--model", str(spec_path), "-o", str(out)]) == 0
    _check_on_grid(out, crop, n4=4)

    out = tmp_path / "rollout.nii.gz"
    assert main(["explain", str(crop), "--method", "rollout", "--discard-ratio", "0.5", "--head-fusion", "max",
                 "--model", str(spec_path), "-o", str(out)]) == 0
    _check_on_grid(out, crop)
    assert json.loads(sidecar_path(out).read_text())["query"]["token"] == "cls"

    out, masks = tmp_path / "dino.nii.gz", tmp_path / "dino_masks.nii.gz"
    assert main(["explain", str(crop), "--method", "dino-heads", "--model", str(spec_path), "-o", str(out),
                 "--keep-mass", "0.5", "--masks-output", str(masks)]) == 0
    d = _check_on_grid(out, crop, n4=4)
    m = nib.load(str(masks))
    assert m.shape == d.shape[:3] and np.issubdtype(m.get_data_dtype(), np.integer)
    assert set(np.unique(np.asarray(m.dataobj)).tolist()) <= {0, 1, 2, 3, 4} and np.asarray(m.dataobj).max() > 0

    out = tmp_path / "similar.nii.gz"
    assert main(["explain", str(crop), "--method", "similar", "--point-voxel", "25,22,20", "--model", str(spec_path),
                 "-o", str(out)]) == 0
    d = _check_on_grid(out, crop)
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["method"] == "similar" and meta["coverage"] == "scan" and d.max() <= 1.0 + 1e-5

    out, stats = tmp_path / "erf.nii.gz", tmp_path / "erf_stats.json"
    assert main(["explain", str(crop), "--method", "erf", "--point-voxel", "25,22,20", "--class", "1",
                 "--model", str(spec_path), "-o", str(out), "--stats", str(stats)]) == 0
    _check_on_grid(out, crop)
    st = json.loads(stats.read_text())
    assert len(st["axis_extent_mm"]["0.9"]) == 3 and st["box_side_mm"]["0.5"] <= st["box_side_mm"]["0.99"]


def test_cli_user_errors_are_one_line(crop, spec_path, tmp_path, capsys):
    out = tmp_path / "x.nii.gz"
    assert main(["explain", str(crop), "--method", "attention", "--point-voxel", "500,1,1",
                 "--model", str(spec_path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "outside" in err[-1]
    assert main(["explain", str(crop), "--method", "attention", "--model", str(spec_path), "-o", str(out)]) == 2
    assert "needs a query" in capsys.readouterr().err
    assert main(["explain", str(crop), "--method", "attention", "--point-voxel", "2,2,2", "--layer", "7",
                 "--model", str(spec_path), "-o", str(out)]) == 2
    assert "layer 7 does not exist" in capsys.readouterr().err
    assert main(["explain", str(crop), "--method", "erf", "--point-voxel", "2,2,2", "--model", str(spec_path),
                 "-o", str(crop)]) == 2
    assert not out.exists()
    assert main(["explain", str(crop), "--method", "erf", "--point-voxel", "2,2,2", "--model", str(spec_path),
                 "-o", str(out), "--stats", str(sidecar_path(out))]) == 2
    assert "taken by another output" in capsys.readouterr().err


def test_model_is_chosen_when_not_given(crop, spec_path, tmp_path, monkeypatch, capsys):
    from napari_vit3d.models import add_model, registry

    monkeypatch.setenv("NAPARI_VIT3D_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setattr(registry, "_bundled_specs", lambda: {})
    from napari_vit3d.cli.explain import choose_model
    from napari_vit3d.errors import ModelError

    with pytest.raises(ModelError, match="no registered model supports dino-heads"):
        choose_model("dino-heads")
    add_model(spec_path, name="my-vit")
    out = tmp_path / "d.nii.gz"
    assert main(["explain", str(crop), "--method", "dino-heads", "-o", str(out)]) == 0
    assert "model my-vit" in capsys.readouterr().err
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["model"] == "my-vit" and meta["model_chosen_automatically"] is True


TINY = {
    "unetr": {"architecture": "unetr", "roi_size": [32, 32, 32],
              "arch_kwargs": {"feature_size": 4, "hidden_size": 48, "mlp_dim": 64, "num_heads": 4}},
    "swin_unetr": {"architecture": "swin_unetr", "roi_size": [64, 64, 64],  # 32³ leaves a 1³ bottleneck (InstanceNorm fails)
                   "arch_kwargs": {"feature_size": 12, "num_heads": [1, 1, 2, 2]}},
    "segformer3d": {"architecture": "segformer3d", "roi_size": [32, 32, 32],
                    "arch_kwargs": {"embed_dims": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 2],
                                    "decoder_dim": 16}},
}


@pytest.mark.parametrize("arch", sorted(TINY))
def test_every_architecture_through_cli_on_real_scan(arch, crop, tmp_path, capsys):
    spec = {"name": f"tiny-{arch}", "in_channels": 1, "channel_names": ["T1"], "spacing": [2.0, 2.0, 2.0],
            "normalization": {"kind": "zscore_nonzero"},
            "labels": [{"index": 0, "name": "background"}, {"index": 1, "name": "brain"}], **TINY[arch]}
    sp = write_spec(tmp_path, spec, "spec")
    # ERF is architecture-agnostic (tested on every architecture in benchmarks/bench_explain.py): skip the
    # slowest backward pass here
    methods = ["attention"] + (["erf"] if arch != "swin_unetr" else []) + (["rollout"] if arch == "unetr" else [])
    for method in methods:
        out = tmp_path / f"{method}.nii.gz"
        rc = main(["explain", str(crop), "--method", method, "--point-voxel", "24,20,18", "--model", str(sp),
                   "-o", str(out)])
        assert rc == 0, capsys.readouterr().err
        _check_on_grid(out, crop)
    meta = json.loads(sidecar_path(tmp_path / "attention.nii.gz").read_text())
    if arch == "swin_unetr":
        assert meta["swin"]["window_size"] and "stage" in meta
    assert main(["explain", str(crop), "--method", "dino-heads", "--model", str(sp), "-o", str(tmp_path / "d.nii")]) == 2
    assert "does not support dino-heads" in capsys.readouterr().err


def test_negative_world_coordinates_are_values_not_options(crop, spec_path, tmp_path, capsys):
    """``--point-world -12.5,3,4`` (a point left of the origin) used to fail in argparse: "expected one
    argument"; only ``--point-world=-12.5,...`` worked."""
    aff = nib.load(str(crop)).affine
    vox = next(v for v in np.ndindex(50, 44, 40) if apply_affine(aff, v)[0] < -1 and apply_affine(aff, v)[1] < -1)
    world = apply_affine(aff, vox)
    text = ",".join(f"{v:.3f}" for v in world)
    assert text.startswith("-")
    out = tmp_path / "att.nii.gz"
    rc = main(["explain", str(crop), "--method", "attention", "--point-world", text, "--model", str(spec_path),
               "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads(sidecar_path(out).read_text())
    np.testing.assert_allclose(meta["query"]["world_mm"], np.round(world, 3), atol=1e-3)
