"""Training loops: a tiny configuration runs on CPU, the loss goes down, and resuming is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_vit3d.io.nifti import read_nifti
from napari_vit3d.io.samples import sample_path
from napari_vit3d.models import load_model
from napari_vit3d.training import synthesis as S
from napari_vit3d.training.train_dino import (
    block_masks,
    dino_loss,
    ibot_patch_loss,
    koleo_loss,
    sinkhorn_targets,
    train_dino,
)
from napari_vit3d.training.train_seg import dice_ce_loss, export_bundled, train_seg


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory):
    """4 synthetic 32³ volumes at 4 mm from the bundled Colin27 sample (T1 + brain mask)."""
    t1 = read_nifti(sample_path("colin27_t1.nii.gz"))
    mask = read_nifti(sample_path("colin27_brainmask.nii.gz"))
    lm = S.label_map_from_arrays("colin27", t1.data.astype(np.float32), mask.data, t1.affine, spacing_mm=4)
    path = tmp_path_factory.mktemp("bank") / "bank.npz"
    S.build_bank(None, path, n=4, seed=0, cfg=S.SynthConfig(out_shape=(32, 32, 32), deform_vox=1.0), maps=[lm])
    return path


LABELS = [{"index": i, "name": n, "color": [0.1 * i, 0.2, 0.3, 1.0]} for i, n in enumerate(S.CLASS_NAMES)]
NORM = {"kind": "percentile", "lower": 1.0, "upper": 99.0, "b_min": 0.0, "b_max": 1.0, "clip": True}


def seg_config(bank_path, **over):
    cfg = {
        "seed": 3,
        "model": {"name": "tiny-seg", "architecture": "segformer3d",
                  "arch_kwargs": {"embed_dims": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                                  "sr_ratios": [2, 1, 1, 1], "mlp_ratio": 2, "decoder_dim": 16},
                  "spacing": [4.0, 4.0, 4.0], "normalization": NORM, "roi_size": [32, 32, 32], "labels": LABELS},
        "bank": {"path": str(bank_path), "n": 4, "seed": 0},
        "crop": [32, 32, 32], "batch_size": 2, "steps": 20, "lr": 0.01, "warmup": 2,
        "checkpoint_every": 5, "log_every": 1,
        "augment": {"gamma": 0.0, "contrast": 0.0, "noise": 0.0, "flip_lr": 0.0},
    }
    cfg.update(over)
    return cfg


def dino_config(bank_path, **over):
    cfg = {
        "seed": 5,
        "model": {"name": "tiny-vit", "architecture": "vit_seg",
                  "arch_kwargs": {"img_size": [16, 16, 16], "patch_size": 8, "hidden_size": 24, "mlp_dim": 48,
                                  "num_layers": 2, "num_heads": 2, "feature_size": 4},
                  "spacing": [4.0, 4.0, 4.0], "normalization": NORM, "roi_size": [16, 16, 16], "labels": LABELS},
        "bank": {"path": str(bank_path), "n": 4, "seed": 0},
        "batch_size": 2, "steps": 4, "out_dim": 64, "head_hidden": 32, "head_bottleneck": 16,
        "n_global": 2, "n_local": 2, "local_size": [8, 8, 8], "checkpoint_every": 3, "log_every": 1,
    }
    cfg.update(over)
    return cfg


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_dice_ce_loss_matches_hand_computation():
    logits = torch.tensor([[[2.0, -1.0]], [[-1.0, 3.0]]]).view(1, 2, 1, 1, 2)  # 2 classes, 2 voxels
    target = torch.tensor([0, 1]).view(1, 1, 1, 2)
    loss, parts = dice_ce_loss(logits, target, eps=0.0)
    p = torch.softmax(torch.tensor([[2.0, -1.0], [-1.0, 3.0]]), dim=0)  # class × voxel
    ce = -(torch.log(p[0, 0]) + torch.log(p[1, 1])) / 2
    dice0 = 2 * p[0, 0] / (p[0].sum() + 1)
    dice1 = 2 * p[1, 1] / (p[1].sum() + 1)
    expected = ce + 1 - (dice0 + dice1) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert parts["ce"] == pytest.approx(float(ce), rel=1e-5)


def test_seg_training_loss_goes_down_and_outputs_load(tiny_bank, tmp_path):
    run = tmp_path / "run"
    summary = train_seg(seg_config(tiny_bank), run, progress=False)
    assert summary["finished"] and summary["step"] == 20
    losses = [r["loss"] for r in _log(run)]
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    saved = json.loads((run / "config.json").read_text())
    assert saved["seed"] == 3 and saved["steps"] == 20
    # the run's spec + weights load through the real registry code and give the same logits
    loaded = load_model(str(run / "model.json"), device="cpu")
    x = torch.rand(1, 1, 32, 32, 32)
    state = torch.load(run / "ckpt.pt", weights_only=True)["modules"]["network"]
    from napari_vit3d.models.registry import build_network
    ref = build_network(loaded.spec)
    ref.load_state_dict(state)
    ref.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.network(x), ref(x), atol=1e-6)
    # export: fp16 weights + spec that the registry reads back
    spec_path = export_bundled(run, tmp_path / "bundle", "tiny", description="t", extra={"default": True})
    again = load_model(str(spec_path), device="cpu")
    assert again.spec.extra["default"] is True
    with torch.no_grad():
        assert torch.allclose(again.network(x), ref(x), atol=5e-2)


def test_seg_resume_is_exact(tiny_bank, tmp_path):
    cfg = seg_config(tiny_bank, steps=6, checkpoint_every=2)
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train_seg(cfg, straight, progress=False)
    first = train_seg(cfg, halves, progress=False, max_steps=3)
    assert first["step"] == 3 and not first["finished"]
    mid = torch.load(halves / "ckpt.pt", weights_only=True)
    with pytest.raises(Exception, match="--resume"):
        train_seg(cfg, halves, progress=False)
    train_seg(cfg, halves, progress=False, resume=True)
    a = torch.load(straight / "ckpt.pt", weights_only=True)
    b = torch.load(halves / "ckpt.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k, v in a["modules"]["network"].items():
        assert torch.equal(v, b["modules"]["network"][k]), k
    # the comparison can fail: the weights after 3 steps differ from those after 6
    assert any(not torch.equal(v, mid["modules"]["network"][k]) for k, v in a["modules"]["network"].items()
               if v.is_floating_point())


def test_dino_loss_matches_numpy_reference():
    rng = np.random.default_rng(0)
    k, b, n_views, n_global = 6, 3, 4, 2
    s = rng.normal(size=(n_views * b, k))
    t = rng.normal(size=(n_global * b, k))
    c = rng.normal(size=(1, k)) * 0.1
    got = dino_loss(torch.tensor(s), torch.tensor(t), torch.tensor(c), n_views=n_views, n_global=n_global,
                    student_temp=0.1, teacher_temp=0.04)

    def softmax(z):
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)

    terms = []
    for ti in range(n_global):
        for si in range(n_views):
            if si == ti:
                continue
            for j in range(b):
                q = softmax((t[ti * b + j] - c[0]) / 0.04)
                logp = np.log(softmax(s[si * b + j] / 0.1))
                terms.append(-(q * logp).sum())
    assert float(got) == pytest.approx(np.mean(terms), rel=1e-6)
    # a uniform student scores log K whatever the teacher says
    flat = dino_loss(torch.zeros(n_views * b, k), torch.tensor(t), torch.tensor(c), n_views=n_views,
                     n_global=n_global, student_temp=0.1, teacher_temp=0.04)
    assert float(flat) == pytest.approx(np.log(k), rel=1e-6)


def test_dino_training_runs_and_resumes_exactly(tiny_bank, tmp_path):
    cfg = dino_config(tiny_bank)
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    summary = train_dino(cfg, straight, progress=False)
    assert summary["finished"] and (straight / "backbone.safetensors").exists()
    losses = [r["loss"] for r in _log(straight)]
    assert all(np.isfinite(losses))
    train_dino(cfg, halves, progress=False, max_steps=2)
    train_dino(cfg, halves, progress=False, resume=True)
    a = torch.load(straight / "ckpt.pt", weights_only=True)
    b = torch.load(halves / "ckpt.pt", weights_only=True)
    for part in ("student", "teacher"):
        for k, v in a["modules"][part].items():
            assert torch.equal(v, b["modules"][part][k]), (part, k)
    # the teacher moved away from its initial copy (EMA of a trained student)
    from napari_vit3d.models.checkpoints import load_state_dict
    back = load_state_dict(straight / "backbone.safetensors")
    assert "encoder.cls_token" in back


def test_sinkhorn_targets_and_koleo():
    rng = np.random.default_rng(1)
    t = torch.tensor(rng.normal(size=(12, 5)), dtype=torch.float32)
    q = sinkhorn_targets(t, 0.1, iters=50)
    # rows are distributions, and (after enough iterations) every prototype gets an equal share of the batch
    np.testing.assert_allclose(q.sum(1).numpy(), 1.0, rtol=1e-4)
    np.testing.assert_allclose(q.sum(0).numpy(), 12 / 5, rtol=1e-2)
    # KoLeo: −mean log nearest-neighbour distance of the l2-normalised rows
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    assert float(koleo_loss(x)) == pytest.approx(-np.log(np.sqrt(2)), rel=1e-5)


def test_dino_anti_collapse_options_run_and_resume_exactly(tiny_bank, tmp_path):
    cfg = dino_config(tiny_bank, centering="sinkhorn", koleo=0.1, freeze_last_layer=2, weight_decay_end=0.4,
                      teacher_temp_start=0.02, teacher_temp_warmup=2)
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train_dino(cfg, straight, progress=False)
    rows = _log(straight)
    assert all(np.isfinite(r["loss"]) and "koleo" in r for r in rows)
    assert rows[0]["teacher_temp"] == pytest.approx(0.02) and rows[-1]["teacher_temp"] == pytest.approx(0.04)
    train_dino(cfg, halves, progress=False, max_steps=2)
    train_dino(cfg, halves, progress=False, resume=True)
    a = torch.load(straight / "ckpt.pt", weights_only=True)
    b = torch.load(halves / "ckpt.pt", weights_only=True)
    for k, v in a["modules"]["student"].items():
        assert torch.equal(v, b["modules"]["student"][k]), k
    # the prototype layer was frozen for the first 2 steps only: it moved during steps 3–4
    init = tmp_path / "init"
    train_dino(cfg, init, progress=False, max_steps=2)
    c = torch.load(init / "ckpt.pt", weights_only=True)
    key = "head.last_layer.parametrizations.weight.original1"
    assert not torch.equal(a["modules"]["student"][key], c["modules"]["student"][key])
    # a new run can start from another run's student, teacher and centre
    cont = tmp_path / "cont"
    train_dino(dict(cfg, init_checkpoint=str(init / "ckpt.pt"), steps=1), cont, progress=False)
    d = torch.load(cont / "ckpt.pt", weights_only=True)
    assert json.loads(d["extra"])["center"] != json.loads(c["extra"])["center"]  # moved on from the loaded centre
    # with no steps to run, the exported backbone is exactly the loaded teacher's network
    zero = tmp_path / "zero"
    train_dino(dict(cfg, init_checkpoint=str(init / "ckpt.pt"), steps=0), zero, progress=False)
    from napari_vit3d.models.checkpoints import load_state_dict
    back = load_state_dict(zero / "backbone.safetensors")
    for k, v in back.items():
        assert torch.equal(v, c["modules"]["teacher"]["network." + k]), k
    # another number of prototypes: the backbone comes from the other run, the prototype layer and
    # the centre start fresh (with the new size)
    half = cfg["out_dim"] // 2
    other_k = tmp_path / "other_k"
    train_dino(dict(cfg, init_checkpoint=str(init / "ckpt.pt"), steps=0, out_dim=half), other_k, progress=False)
    for k, v in load_state_dict(other_k / "backbone.safetensors").items():
        assert torch.equal(v, c["modules"]["teacher"]["network." + k]), k
    train_dino(dict(cfg, init_checkpoint=str(init / "ckpt.pt"), steps=1, out_dim=half), tmp_path / "k1", progress=False)
    e = torch.load(tmp_path / "k1" / "ckpt.pt", weights_only=True)
    assert len(json.loads(e["extra"])["center"]) == half
    assert e["modules"]["teacher"]["head.last_layer.parametrizations.weight.original1"].shape[0] == half


def _tiny_vit(tiny_bank):
    from napari_vit3d.models.registry import build_network
    from napari_vit3d.models.spec import ModelSpec

    torch.manual_seed(0)
    return build_network(ModelSpec.from_dict(dino_config(tiny_bank)["model"])).eval()


def test_masked_patches_are_hidden_from_the_encoder(tiny_bank):
    from napari_vit3d.models.vit_seg import vit_tokens

    net = _tiny_vit(tiny_bank)
    vit, grid = net.encoder, tuple(net.feat_size)
    x = torch.rand(2, 1, 16, 16, 16)
    none = torch.zeros(2, 8, dtype=torch.bool)
    token = torch.randn(1, 1, 24)
    with torch.no_grad():
        ref = vit(x)[0]                                               # MONAI's own forward
        np.testing.assert_allclose(vit_tokens(vit, x, grid, patch_mask=none, mask_token=token)[0].numpy(),
                                   ref.numpy(), atol=1e-6)
        mask = none.clone()
        mask[:, 0] = True                                             # token 0 = the voxel block [0:8]³
        y = x.clone()
        y[:, :, :8, :8, :8] = torch.rand(2, 1, 8, 8, 8)
        a = vit_tokens(vit, x, grid, patch_mask=mask, mask_token=token)[0]
        b = vit_tokens(vit, y, grid, patch_mask=mask, mask_token=token)[0]
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)   # the masked content cannot be seen …
        z = x.clone()
        z[:, :, 8:, 8:, 8:] = torch.rand(2, 1, 8, 8, 8)
        c = vit_tokens(vit, z, grid, patch_mask=mask, mask_token=token)[0]
        assert not torch.allclose(a, c)                               # … the unmasked content can
    with pytest.raises(Exception, match="mask token"):
        vit_tokens(vit, x, grid, patch_mask=mask)


def test_ibot_block_masks_and_patch_loss():
    m = block_masks(np.random.default_rng(0), 40, (8, 8, 8), (0.2, 0.4), 1.0)
    share = m.float().mean(1).numpy()
    assert m.shape == (40, 512) and share.min() >= 0.2 and share.max() < 0.75
    assert not block_masks(np.random.default_rng(0), 5, (8, 8, 8), (0.2, 0.4), 0.0).any()
    half = block_masks(np.random.default_rng(1), 200, (4, 4, 4), (0.1, 0.5), 0.5).any(1).float().mean()
    assert 0.35 < float(half) < 0.65
    assert torch.equal(m, block_masks(np.random.default_rng(0), 40, (8, 8, 8), (0.2, 0.4), 1.0))
    # the loss: mean over masked patches of −Σ t·log softmax(s/τ), against a numpy loop
    rng = np.random.default_rng(2)
    s = rng.normal(size=(2, 6, 5))
    t = rng.dirichlet(np.ones(5), size=(2, 6))
    mk = rng.random((2, 6)) < 0.5
    ref = []
    for b in range(2):
        for n in range(6):
            if mk[b, n]:
                z = s[b, n] / 0.1
                ref.append(-(t[b, n] * (z - z.max() - np.log(np.exp(z - z.max()).sum()))).sum())
    got = ibot_patch_loss(torch.tensor(s), torch.tensor(t), torch.tensor(mk), student_temp=0.1)
    assert float(got) == pytest.approx(np.mean(ref), rel=1e-6)
    assert float(ibot_patch_loss(torch.tensor(s), torch.tensor(t), torch.zeros(2, 6, dtype=torch.bool),
                                 student_temp=0.1)) == 0.0


def test_ibot_training_runs_resumes_exactly_and_starts_from_a_backbone(tiny_bank, tmp_path):
    from napari_vit3d.models.checkpoints import load_state_dict, save_safetensors

    cfg = dino_config(tiny_bank, centering="sinkhorn", ibot=1.0, ibot_out_dim=32, ibot_head_hidden=16,
                      ibot_mask_prob=1.0)
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train_dino(cfg, straight, progress=False)
    rows = _log(straight)
    assert all(np.isfinite(r["ibot_loss"]) and r["ibot_masked"] > 0 for r in rows)
    train_dino(cfg, halves, progress=False, max_steps=2)
    train_dino(cfg, halves, progress=False, resume=True)
    a = torch.load(straight / "ckpt.pt", weights_only=True)
    b = torch.load(halves / "ckpt.pt", weights_only=True)
    assert "mask_token" in a["modules"]["student"]
    for k, v in a["modules"]["student"].items():
        assert torch.equal(v, b["modules"]["student"][k]), k
    # a plain DINO run's checkpoint starts an iBOT run: the backbone is loaded, the patch head starts fresh
    plain = tmp_path / "plain"
    train_dino(dino_config(tiny_bank, centering="sinkhorn"), plain, progress=False, max_steps=1)
    p = torch.load(plain / "ckpt.pt", weights_only=True)
    zero = tmp_path / "zero"
    train_dino(dict(cfg, init_checkpoint=str(plain / "ckpt.pt"), steps=0), zero, progress=False)
    for k, v in load_state_dict(zero / "backbone.safetensors").items():
        assert torch.equal(v, p["modules"]["teacher"]["network." + k]), k
    # a ViTSeg weights file (e.g. a bundled model's, float16) starts both encoders
    net = _tiny_vit(tiny_bank)
    weights = tmp_path / "vit.safetensors"
    save_safetensors(net.half(), weights)
    fromb = tmp_path / "from_backbone"
    train_dino(dict(cfg, init_backbone=str(weights), steps=0), fromb, progress=False)
    got = load_state_dict(fromb / "backbone.safetensors")
    for k, v in net.state_dict().items():
        if k.startswith("encoder."):
            assert torch.equal(got[k], v.float()), k
    with pytest.raises(Exception, match="encoder"):
        bad = tmp_path / "bad.safetensors"
        save_safetensors(torch.nn.Linear(2, 2), bad)
        train_dino(dict(cfg, init_backbone=str(bad), steps=0), tmp_path / "bad", progress=False)


def test_dino_backbone_initialises_segmentation_finetune(tiny_bank, tmp_path):
    dino = tmp_path / "dino"
    train_dino(dino_config(tiny_bank, steps=1), dino, progress=False)
    cfg = dino_config(tiny_bank)
    seg = {"seed": 1, "model": cfg["model"], "bank": cfg["bank"], "crop": [16, 16, 16], "batch_size": 1,
           "steps": 2, "warmup": 1, "freeze_init_steps": 2, "init": {"path": str(dino / "backbone.safetensors"), "source_prefix": "encoder.", "prefix": "encoder."}}
    run = tmp_path / "seg"
    train_seg(seg, run, progress=False)
    from napari_vit3d.models.checkpoints import load_state_dict
    back = load_state_dict(dino / "backbone.safetensors")
    final = load_state_dict(run / "model.safetensors")
    enc = [k for k in back if k.startswith("encoder.")]
    assert enc
    for k in enc:  # frozen for both steps: the encoder is exactly the DINO teacher's
        assert torch.equal(back[k], final[k]), k
    dec = [k for k in back if k.startswith("decoders.") and back[k].is_floating_point()]
    assert any(not torch.equal(back[k], final[k]) for k in dec)
