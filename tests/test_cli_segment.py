"""``napari-vit3d segment`` end to end on a crop of the Colin27 scan with a tiny random SegFormer3D."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import colin27_crop, write_spec

from napari_vit3d.cli import main


@pytest.fixture(scope="module")
def crop(tmp_path_factory) -> Path:
    """A 44×40×34 crop of Colin27, re-oriented to LPS-like voxel order (x and y flipped) on disk."""
    return colin27_crop(tmp_path_factory.mktemp("scan"), np.s_[70:114, 90:130, 70:104])


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    spec = {"name": "tiny-segformer", "architecture": "segformer3d", "in_channels": 1, "channel_names": ["T1"],
            "spacing": [1.5, 1.5, 1.5], "roi_size": [32, 32, 32], "normalization": {"kind": "zscore_nonzero"},
            "arch_kwargs": {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
                            "decoder_dim": 16},
            "labels": [{"index": 0, "name": "background"}, {"index": 1, "name": "brain"},
                       {"index": 2, "name": "csf"}]}
    return write_spec(tmp_path_factory.mktemp("model"), spec, "tiny")


def test_segment_output_lands_on_input(crop, spec_path, tmp_path, capsys):
    out = tmp_path / "labels.nii.gz"
    probs = tmp_path / "probs.nii.gz"
    unc = tmp_path / "unc.nii"
    rc = main(["segment", str(crop), "-o", str(out), "--model", str(spec_path), "--device", "cpu",
               "--overlap", "0.5", "--save-probabilities", str(probs), "--save-uncertainty", str(unc)])
    assert rc == 0
    src, lab = nib.load(str(crop)), nib.load(str(out))
    assert lab.shape == src.shape
    np.testing.assert_allclose(lab.affine, src.affine, atol=1e-6)
    assert np.issubdtype(lab.get_data_dtype(), np.integer)
    assert int(lab.header["sform_code"]) == int(src.header["sform_code"])
    values = np.unique(np.asarray(lab.dataobj))
    assert set(values.tolist()) <= {0, 1, 2}
    p = nib.load(str(probs))
    assert p.shape == src.shape + (3,)
    np.testing.assert_allclose(p.affine, src.affine, atol=1e-6)
    pd = p.get_fdata(dtype=np.float32)
    np.testing.assert_allclose(pd.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(np.argmax(pd, -1), np.asarray(lab.dataobj))
    u = nib.load(str(unc)).get_fdata()
    assert u.shape == src.shape and u.min() >= 0 and u.max() <= 1 + 1e-6
    err = capsys.readouterr().err
    assert "wrote" in err and "window" in err  # summary and tqdm progress bar on stderr


def test_exit_codes(crop, spec_path, tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    out = tmp_path / "x.nii.gz"
    assert main(["segment", str(bad), "-o", str(out), "--model", str(spec_path), "--quiet"]) == 2
    assert "broken.nii.gz" in capsys.readouterr().err
    assert main(["segment", str(crop), "-o", str(out), "--model", str(tmp_path / "nope.json"), "--quiet"]) == 2
    assert "nope.json" in capsys.readouterr().err
    assert main(["segment", str(crop), "-o", str(crop), "--model", str(spec_path), "--quiet"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert not out.exists()


def test_interrupted_run_writes_nothing(crop, spec_path, tmp_path, monkeypatch):
    import napari_vit3d.inference as inference

    def interrupted(*args, **kwargs):
        kwargs["progress"](1, 4)
        raise KeyboardInterrupt

    monkeypatch.setattr(inference, "segment", interrupted)
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", str(crop), "-o", str(out), "--model", str(spec_path)]) == 130
    assert not out.exists() and not list(tmp_path.iterdir())


def test_info_reports_geometry(crop, spec_path, capsys):
    assert main(["info", str(crop), "--json", "--model", str(spec_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    img = nib.load(str(crop))
    assert info["shape"] == [44, 40, 34] and info["orientation"] == "LPS" and not info["oblique"]
    np.testing.assert_allclose(info["affine"], img.affine, atol=1e-6)
    assert info["spacing_mm"] == [1.0, 1.0, 1.0]
    # model grid: 1.5 mm covering the 44 × 40 × 34 mm field of view and every voxel centre
    assert info["model_grid"]["shape"] == [30, 27, 23] and info["model_grid"]["resampled"]
    assert main(["info", str(crop)]) == 0
    assert "LPS" in capsys.readouterr().out
    assert main(["info", str(crop.parent / "missing.nii.gz")]) == 2


BAD_SPECS = {
    "binary": b"\xcb\x00\xff" * 100,
    "list": b"[1, 2]",
    "list_of_objects": b'[{"a": 1}]',
    "spacing_text": b'{"name": "x", "architecture": "unetr", "spacing": "abc", "labels": []}',
    "spacing_two": b'{"name": "x", "architecture": "unetr", "spacing": [1, 1], "labels": []}',
    "label_without_index": b'{"name": "x", "architecture": "unetr", "labels": [{"name": "b"}]}',
    "roi_two": b'{"name": "x", "architecture": "unetr", "roi_size": [96, 96], "labels": []}',
    "roi_fraction": b'{"name": "x", "architecture": "unetr", "roi_size": [96, 96, 95.5], "labels": []}',
}


@pytest.mark.parametrize("kind", sorted(BAD_SPECS))
def test_broken_spec_files_are_one_line_errors(kind, crop, tmp_path, capsys):
    """A hand-written spec with wrong content is a user error (exit 2, one line), never a traceback."""
    spec = tmp_path / f"{kind}.json"
    spec.write_bytes(BAD_SPECS[kind])
    for argv in (["info", str(crop), "--model", str(spec)], ["models", "--card", str(spec)],
                 ["segment", str(crop), "-o", str(tmp_path / "o.nii.gz"), "--model", str(spec), "--quiet"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "o.nii.gz").exists()


def test_zero_window_batch_is_refused(crop, spec_path, tmp_path, capsys):
    """``--sw-batch-size 0`` used to fall back silently to the automatic size."""
    out = tmp_path / "o.nii.gz"
    assert main(["segment", str(crop), "-o", str(out), "--model", str(spec_path), "--sw-batch-size", "0",
                 "--quiet"]) == 2
    assert "window batch size must be at least 1" in capsys.readouterr().err
    assert not out.exists()


def test_no_model_and_no_bundled_default_says_what_to_do(crop, tmp_path, monkeypatch, capsys):
    from napari_vit3d.models import registry

    empty = tmp_path / "no_models"
    empty.mkdir()
    monkeypatch.setattr(registry, "bundled_models_dir", lambda: empty)
    monkeypatch.setenv("NAPARI_VIT3D_CONFIG_DIR", str(tmp_path / "cfg"))
    assert main(["segment", str(crop), "-o", str(tmp_path / "o.nii.gz"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no bundled default model yet; pass --model") and "\n" not in err


def test_multiscale_flag_averages_three_passes(crop, spec_path, tmp_path):
    """``--multiscale``: the saved probabilities are the API's multi-scale mean (``MULTISCALE``), the labels
    their argmax, on the input's grid. (The spec has no weights: each load draws them from torch's seed.)"""
    import torch

    from napari_vit3d.inference import segment
    from napari_vit3d.inference.engine import MULTISCALE
    from napari_vit3d.io.nifti import read_nifti

    out, probs = tmp_path / "labels.nii.gz", tmp_path / "probs.nii.gz"
    torch.manual_seed(5)
    assert main(["segment", str(crop), "-o", str(out), "--model", str(spec_path), "--device", "cpu", "--quiet",
                 "--multiscale", "--save-probabilities", str(probs)]) == 0
    torch.manual_seed(5)
    ref = segment(read_nifti(crop), str(spec_path), device="cpu", use_cache=False, scales=MULTISCALE)
    p = nib.load(str(probs)).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(p, ref.probabilities.data, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), ref.labels.data)
    torch.manual_seed(5)
    plain = segment(read_nifti(crop), str(spec_path), device="cpu", use_cache=False)
    assert not np.allclose(plain.probabilities.data, p, atol=1e-4)
