"""The spec-declared label post-processing (``inference.postprocess.tissue_em``): tissue classes re-decided
inside the brain by the scan's intensities with the network's probabilities as the prior.

Checked against a naive float64 EM written here without subsampling, against the true classes of a planted
three-class phantom, through the engine (the brain mask and the probabilities are untouched, the settings
record it, ``postprocess=False`` gives the plain argmax), the CLI flag, and bad specs (one line each)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_vit3d.cli import main
from napari_vit3d.errors import ModelError
from napari_vit3d.inference.engine import segment
from napari_vit3d.inference.postprocess import tissue_em
from napari_vit3d.io.nifti import read_nifti, write_volume
from napari_vit3d.io.volume import Volume
from napari_vit3d.models.spec import ModelSpec

CFG = {"labels": [1, 2, 3], "prior_power": 1.0, "iterations": 10, "sample": 10**9}


def phantom(seed=0, shape=(40, 44, 36)):
    """Nested shells: background 0, then CSF 1 (dark), GM 2, WM 3 (bright) with noise; and a blurred,
    shifted 'network' that knows the layout only roughly (its logits)."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(np.float32)
    c = (np.array(shape, np.float32) - 1) / 2
    r = np.sqrt((((idx - c[:, None, None, None]) / (c[:, None, None, None] * 0.9)) ** 2).sum(0))
    truth = np.select([r < 0.45, r < 0.7, r < 0.85], [3, 2, 1], 0).astype(np.uint8)
    means = np.array([5.0, 30.0, 70.0, 110.0], np.float32)
    img = means[truth] + rng.normal(0, 6.0, shape).astype(np.float32)
    onehot = np.stack([truth == k for k in range(4)], -1).astype(np.float32)
    blurred = ndimage.gaussian_filter(onehot, sigma=(3, 3, 3, 0))
    logits = 4.0 * np.roll(blurred, 2, axis=0)          # a smooth prior, its borders 2 voxels off
    return img, truth, logits


def naive_em(img, labels, logits, iters=10):
    brain = labels > 0
    x = img[brain].astype(np.float64)
    lp = logits[brain][:, 1:4].astype(np.float64)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    r = np.exp(lp)
    for _ in range(iters):
        w = r.sum(0)
        mu = (r * x[:, None]).sum(0) / w
        var = (r * (x[:, None] - mu) ** 2).sum(0) / w
        z = lp - 0.5 * (x[:, None] - mu) ** 2 / var - 0.5 * np.log(var)
        r = np.exp(z - z.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)
    out = labels.copy()
    out[brain] = 1 + np.argmax(lp - 0.5 * (x[:, None] - mu) ** 2 / var - 0.5 * np.log(var), 1)
    return out, mu, np.sqrt(var)


def dice(a, b):
    return 2 * np.sum(a & b) / (a.sum() + b.sum())


def test_tissue_em_equals_a_naive_em_and_finds_the_planted_classes():
    img, truth, logits = phantom()
    labels = np.argmax(logits, -1).astype(np.uint8)
    out, info = tissue_em(img, labels, lambda m: logits[m][:, 1:4], CFG)
    ref, mu, sd = naive_em(img, labels, logits)
    assert (out != ref).sum() <= 1e-4 * ref.size          # float32 against float64
    for k, c in enumerate((1, 2, 3)):
        assert info["classes"][c]["mean"] == pytest.approx(mu[k], rel=1e-3)
        assert info["classes"][c]["sd"] == pytest.approx(sd[k], rel=1e-3)
    np.testing.assert_array_equal(out > 0, labels > 0)     # the brain mask never changes
    inside = labels > 0
    for c in (1, 2, 3):                                     # much closer to the truth than the prior's argmax
        before = dice((labels == c) & inside, (truth == c) & inside)
        after = dice((out == c) & inside, (truth == c) & inside)
        assert after > before + 0.1 and after > 0.9, (c, before, after)
    # the planted intensities are recovered (numpy's own per-class statistics of the true classes)
    for c in (2, 3):
        sel = (truth == c) & inside
        assert info["classes"][c]["mean"] == pytest.approx(float(img[sel].mean()), abs=2.0)


def test_subsampled_fit_labels_like_the_full_fit():
    img, _, logits = phantom(seed=1)
    labels = np.argmax(logits, -1).astype(np.uint8)
    full, _ = tissue_em(img, labels, lambda m: logits[m][:, 1:4], CFG)
    sub, info = tissue_em(img, labels, lambda m: logits[m][:, 1:4], {**CFG, "sample": 1000})
    assert info["voxels"] > 5 * 1000   # fitted on every 9th voxel or so
    assert (full != sub).mean() < 0.005


def test_too_few_tissue_voxels_leave_the_labels_alone():
    img, _, logits = phantom()
    labels = np.zeros(img.shape, np.uint8)
    labels[0, 0, :5] = 2
    out, info = tissue_em(img, labels, lambda m: logits[m][:, 1:4], CFG)
    np.testing.assert_array_equal(out, labels)
    assert "skipped" in info


SPEC = {"name": "tiny-tissue", "architecture": "segformer3d", "in_channels": 1, "channel_names": ["T1"],
        "spacing": [2.0, 2.0, 2.0], "roi_size": [32, 32, 32],
        "arch_kwargs": {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
                        "decoder_dim": 16},
        "normalization": {"kind": "percentile", "lower": 1.0, "upper": 99.0, "b_min": 0.0, "b_max": 1.0,
                          "clip": True},
        "labels": [{"index": i, "name": n} for i, n in enumerate(["background", "CSF", "GM", "WM"])],
        "postprocess": {"tissue_em": {"labels": [1, 2, 3]}}}


@pytest.mark.parametrize("bad, match", [
    ({"tissue_em": {"labels": [1, 9]}}, "label indices of the model"),
    ({"tissue_em": {"labels": [1]}}, "two or more"),
    ({"tissue_em": {}}, "needs \"labels\""),
    ({"tissue_em": {"labels": [1, 2], "alpha": 1}}, "unknown keys alpha"),
    ({"tissue_em": {"labels": [1, 2], "iterations": 0}}, "iterations"),
    ({"smooth": {}}, "unknown postprocess step"),
    ([1, 2], "must be an object"),
])
def test_bad_postprocess_specs_are_one_line_errors(bad, match):
    with pytest.raises(ModelError, match=match) as e:
        ModelSpec.from_dict({**SPEC, "postprocess": bad})
    assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="one input channel"):
        ModelSpec.from_dict({**SPEC, "in_channels": 2, "channel_names": ["T1", "T2"]})


@pytest.fixture
def tiny_model(tmp_path):
    import torch

    from napari_vit3d.models.checkpoints import save_safetensors
    from napari_vit3d.models.registry import build_network, load_model

    spec = ModelSpec.from_dict(SPEC)
    torch.manual_seed(0)
    net = build_network(spec)
    save_safetensors(net.state_dict(), tmp_path / "tiny.safetensors")
    (tmp_path / "tiny.json").write_text(json.dumps({**SPEC, "weights": "tiny.safetensors"}))
    return load_model(tmp_path / "tiny.json", device="cpu"), tmp_path / "tiny.json"


def _scan():
    img, _, _ = phantom(shape=(30, 34, 28))
    aff = np.diag([-1.5, 1.5, 2.0, 1.0])
    aff[:3, 3] = [20, -25, -30]
    return Volume(data=img, affine=aff, name="phantom")


def test_engine_applies_it_records_it_and_keeps_mask_and_probabilities(tiny_model):
    model, _ = tiny_model
    vol = _scan()
    post = segment(vol, model, device="cpu", use_cache=False)
    raw = segment(vol, model, device="cpu", use_cache=False, postprocess=False)
    np.testing.assert_array_equal(post.labels.data > 0, raw.labels.data > 0)
    np.testing.assert_array_equal(post.probabilities.data, raw.probabilities.data)
    np.testing.assert_array_equal(raw.labels.data, np.argmax(raw.probabilities.data, -1))   # plain argmax
    # by hand: the same step on the raw labels with the logits' log-probabilities
    probs = raw.probabilities.data
    expected, _ = tissue_em(vol.data, raw.labels.data, lambda m: np.log(np.maximum(probs[m][:, 1:4], 1e-30)),
                            model.spec.postprocess["tissue_em"])
    assert (post.labels.data != expected).mean() < 1e-3
    assert post.metadata["settings"]["postprocess"] == {"tissue_em": model.spec.postprocess["tissue_em"]}
    assert "postprocess" not in raw.metadata["settings"]
    assert post.metadata["postprocess"]["tissue_em"]["voxels"] == int((raw.labels.data > 0).sum())


def test_cli_no_postprocess_writes_the_plain_argmax(tiny_model, tmp_path, capsys):
    model, spec_path = tiny_model
    vol = _scan()
    src = tmp_path / "scan.nii.gz"
    write_volume(src, vol)
    for flag, want in (([], True), (["--no-postprocess"], False)):
        out = tmp_path / f"labels{len(flag)}.nii.gz"
        assert main(["segment", str(src), "-o", str(out), "--model", str(spec_path), "--quiet", *flag]) == 0
        api = segment(read_nifti(src), model, device="cpu", use_cache=False, postprocess=want)
        np.testing.assert_array_equal(np.asarray(read_nifti(out).data), api.labels.data)
