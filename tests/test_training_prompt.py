"""Promptable-model training: objects and clicks from the real sample, the loop learns and resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_vit3d.io.nifti import read_nifti
from napari_vit3d.io.samples import sample_path
from napari_vit3d.prompt.clicks import border_distance
from napari_vit3d.training import prompt_data as P
from napari_vit3d.training.train_prompt import train_prompt


@pytest.fixture(scope="module")
def sources():
    """The bundled Colin27 sample at 2 mm (voxel blocks of the 1 mm grid) as one prompt source."""
    t1 = read_nifti(sample_path("colin27_t1.nii.gz")).data.astype(np.float32)[::2, ::2, ::2]
    mask = np.asarray(read_nifti(sample_path("colin27_brainmask.nii.gz")).data)[::2, ::2, ::2]
    return [P.colin_source(t1, mask, n_segments=(40,))]


def config(**over):
    cfg = {
        "seed": 4,
        "model": {"name": "tiny-prompt", "architecture": "segformer3d",
                  "arch_kwargs": {"embed_dims": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                                  "sr_ratios": [2, 1, 1, 1], "mlp_ratio": 2, "decoder_dim": 16, "refine_dim": 4},
                  "in_channels": 4, "channel_names": ["image", "positive clicks", "negative clicks", "previous mask"],
                  "normalization": P.CROP_NORMALIZATION, "roi_size": [32, 32, 32],
                  "labels": [{"index": 0, "name": "background"}, {"index": 1, "name": "object"}],
                  "extra": {"task": "prompt", "levels_mm": [1.0, 2.0], "click_radius_vox": 1.5}},
        "sample": {"size": 32, "p_kind": [1.0, 0.0, 0.0], "p_previous": 0.0},
        "batch_size": 2, "steps": 24, "lr": 0.01, "warmup": 2, "checkpoint_every": 4, "log_every": 1,
    }
    cfg.update(over)
    return cfg


def test_samples_are_objects_with_a_click_inside(sources):
    rng = np.random.default_rng(0)
    cfg = P.PromptSampleConfig(size=32)
    for _ in range(12):
        x, y = P.sample(rng, sources, cfg)
        assert x.shape == (4, 32, 32, 32) and y.shape == (32, 32, 32) and y.any()
        assert 0.0 <= x[0].min() and x[0].max() <= 1.0
        pos = x[1] > 0
        assert pos.any()
        # the first positive click is deep inside the object: its ball centre is an object voxel
        # at (nearly) the largest distance from the border (jitter 0.3)
        centre_vox = [tuple(v) for v in np.argwhere(pos)]
        d = border_distance(y)
        assert max(d[c] for c in centre_vox) >= 0.7 * d.max() - 1.0


def test_synthetic_shapes_and_corruptions():
    rng = np.random.default_rng(1)
    changed = 0
    for _ in range(8):
        m = P.synthetic_shape(rng, 32)
        assert m.dtype == bool and m.any() and not m.all()
        c = P.corrupt(rng, m)
        assert c.shape == m.shape
        changed += not np.array_equal(c, m)
    assert changed >= 6  # a previous mask that is wrong, nearly always
    img = np.random.default_rng(2).normal(50, 5, (40, 40, 40)).astype(np.float32)
    out, les = P.plant_lesion(np.random.default_rng(10_000), img, (20, 20, 20), size=24)
    assert les.any() and out.shape == img.shape
    assert abs(float(out[les].mean()) - float(img[les].mean())) > 3  # the lesion differs from its host


def test_prompt_training_learns_and_resumes_exactly(sources, tmp_path):
    run = tmp_path / "run"
    summary = train_prompt(config(), run, sources=sources, progress=False)
    assert summary["finished"]
    rows = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert np.mean(losses[-6:]) < 0.85 * np.mean(losses[:6])
    from napari_vit3d.prompt import load_prompt_model

    model = load_prompt_model(str(run / "model.json"))   # the real loading code reads the run's spec
    assert model.spec.extra["task"] == "prompt"
    cfg = config(steps=6, checkpoint_every=2)
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train_prompt(cfg, straight, sources=sources, progress=False)
    train_prompt(cfg, halves, sources=sources, progress=False, max_steps=3)
    mid = torch.load(halves / "ckpt.pt", weights_only=True)
    train_prompt(cfg, halves, sources=sources, progress=False, resume=True)
    a = torch.load(straight / "ckpt.pt", weights_only=True)["modules"]["network"]
    b = torch.load(halves / "ckpt.pt", weights_only=True)["modules"]["network"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert any(not torch.equal(v, mid["modules"]["network"][k]) for k, v in a.items() if v.is_floating_point())


def test_object_scale_drawn_uniformly_or_log_uniformly():
    """``extent_log``: the object's extent / crop ratio is log-uniform (median √(lo·hi)), else uniform."""
    from napari_vit3d.training.prompt_data import PromptSampleConfig, _choose_spacing

    def ratios(log):
        cfg = PromptSampleConfig(extent_ratio=(0.1, 2.5), extent_log=log, spacing_range=(1e-3, 1e3))
        rng = np.random.default_rng(0)
        return np.array([40.0 / (_choose_spacing(rng, 40.0, cfg) * cfg.size) for _ in range(4000)])

    lin, log = ratios(False), ratios(True)
    for r in (lin, log):
        assert r.min() >= 0.1 - 1e-9 and r.max() <= 2.5 + 1e-9
    assert abs(np.median(log) - 0.5) < 0.05 and abs(np.median(lin) - 1.3) < 0.08
    assert abs(np.mean(np.log(log)) - np.mean(np.log([0.1, 2.5]))) < 0.05


def test_plain_background_share_for_synthetic_shapes(sources):
    """``p_plain``: a synthetic shape lands in a plain noisy background (no anatomy) instead of a real crop.

    Checked on the image channel outside the object: a real head crop has edges (skull, sulci) whose
    gradient far exceeds the noise, a plain background's smoothed gradient is small; with ``p_plain = 0``
    the backgrounds are real crops again.
    """
    from scipy import ndimage

    def background_edges(p_plain):
        cfg = P.PromptSampleConfig(size=32, p_kind=(0.0, 0.0, 1.0), p_previous=0.0, p_plain=p_plain, p_ct=0.0)
        rng = np.random.default_rng(3)
        out = []
        for _ in range(6):
            x, y = P.sample(rng, sources, cfg)
            img = ndimage.gaussian_filter(x[0], 1.5)
            g = np.linalg.norm(np.gradient(img), axis=0)
            away = ~ndimage.binary_dilation(y > 0, iterations=4)
            out.append(float(np.percentile(g[away], 95) / max(np.ptp(x[0]), 1e-6)))
        return np.array(out)

    plain, real = background_edges(1.0), background_edges(0.0)
    assert np.median(plain) < 0.5 * np.median(real)


def test_border_piece_is_one_sided_and_near_the_asked_voxel():
    """A border edit's error: cut from the structure (missing) or lying wholly outside it (extra), at the
    structure's border near the voxel asked for."""
    g = np.stack(np.meshgrid(*[np.arange(48)] * 3, indexing="ij"), -1)
    y = np.linalg.norm(g - 24, axis=-1) <= 16
    near = np.array([24, 24, 40])          # on the sphere's surface
    rng = np.random.default_rng(5)
    kinds = set()
    for _ in range(16):
        out = P.border_piece(rng, y, near)
        assert out is not None
        piece, missing = out
        kinds.add(missing)
        assert piece.sum() >= 8
        assert not (piece & ~y).any() if missing else not (piece & y).any()
        # the piece touches the border: within one voxel of the sphere's surface
        r = np.linalg.norm(np.argwhere(piece) - 24, axis=1)
        assert np.min(np.abs(r - 16)) <= 1.5
        assert np.min(np.linalg.norm(np.argwhere(piece) - near, axis=1)) <= 10
    assert kinds == {True, False}


def test_border_edits_click_only_on_the_previous_masks_error(sources):
    """``p_border``: a structure larger than the crop, the previous mask wrong at one piece of its border, and
    the clicks (no first click deep in the object) on that piece: positive if it is missing, negative if extra."""
    rng = np.random.default_rng(6)
    cfg = P.PromptSampleConfig(size=32, p_border=1.0, border_spacing=(1.0,), p_ct=0.0)
    signs = set()
    for _ in range(10):
        x, y = P.sample(rng, sources, cfg)
        y = y > 0
        prev, pos, neg = x[3] > 0.5, x[1] > 0, x[2] > 0
        assert 0.05 <= y.mean() <= 0.95            # the structure's border crosses the crop
        missing, extra = y & ~prev, prev & ~y
        assert missing.any() != extra.any()          # one piece, one kind of error
        assert pos.any() != neg.any()
        if pos.any():
            assert missing.any() and (pos & missing).any()
        else:
            assert extra.any() and (neg & extra).any()
        signs.add(bool(pos.any()))
    assert signs == {True, False}
