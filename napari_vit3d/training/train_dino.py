"""DINO self-distillation pre-training of a small 3D ViT (``napari-vit3d train-dino``).

Caron et al. 2021, in 3D and written here: a student and a teacher with the same architecture (the
``ViTSeg`` encoder: a MONAI ViT with a CLS token, patch 8) each followed by a ``DINOHead``. Every
step takes ``batch_size`` volumes of the synthetic bank (synthetic + augmented real scans) and
makes 3D multi-crops of each: ``n_global`` global crops (a random box covering ``global_scale`` of
the volume, resized to ``img_size``) and ``n_local`` local crops (``local_scale``, resized to
``local_size``), each with its own intensity augmentation and LR flip. The teacher sees only the
global crops; the student sees all. Loss: cross-entropy between the teacher's centred, sharpened
distribution ``softmax((t − c) / τ_t)`` and the student's ``log_softmax(s / τ_s)`` over all pairs of
different crops. The teacher is an EMA of the student (momentum cosine-scheduled from
``momentum`` to 1); the centre ``c`` is an EMA (``center_momentum``) of the teacher's batch mean.

Local crops are smaller than ``img_size``: their positional embeddings are the learned ones
trilinearly interpolated to the local token grid (:func:`encode_cls`).

Config keys (defaults in :data:`DEFAULTS`): ``seed``, ``model`` (a ViTSeg ModelSpec: the encoder's
arguments come from its ``arch_kwargs``), ``bank``, ``batch_size``, ``steps``, ``lr``,
``weight_decay``, ``warmup``, ``out_dim``, ``head_hidden``, ``head_bottleneck``, ``teacher_temp``,
``student_temp``, ``center_momentum``, ``momentum``, ``n_global``, ``n_local``, ``global_scale``,
``local_scale``, ``local_size``, ``checkpoint_every``, ``log_every``, ``augment``; anti-collapse options
(off by default): ``teacher_temp_start``/``teacher_temp_warmup`` (linear τ_t warm-up),
``weight_decay_end`` (cosine weight-decay schedule), ``freeze_last_layer`` (steps without updates to the
prototype layer), ``centering`` = ``"sinkhorn"`` (Sinkhorn-Knopp teacher targets, DINOv2, instead of the
EMA centre), ``koleo`` (weight of the KoLeo spreading term on the student's global-crop CLS embeddings,
DINOv2) and ``init_checkpoint`` (start from another run's student, teacher and centre; with a
different ``out_dim`` the prototype layer starts fresh and the centre at zero; modules the other run did
not have, e.g. the iBOT head, start fresh) or ``init_backbone`` (a ViTSeg ``.safetensors``, e.g. a
bundled model's weights: its encoder starts both student and teacher, the heads start fresh). The log
also records ``teacher_temp`` and ``teacher_top1_unique`` (distinct argmax prototypes in the teacher
batch).

**iBOT** (``ibot`` > 0; Zhou et al. 2022, written here in 3D): a patch-level objective beside the CLS
one. A share ``ibot_mask_prob`` of the student's global crops has random 3D blocks of patches
(``ibot_mask_ratio`` of them) replaced by a learned mask token; a second head (``ibot_out_dim``
prototypes) on every patch token; the teacher sees the unmasked crop and its patch-token targets are
Sinkhorn-Knopp normalised over all the batch's tokens (thousands per step, so a small batch still
spreads them over the prototypes); the loss is the cross-entropy between the teacher's target and the
student's prediction at the masked patches of the same crop. The CLS loss then uses the masked
student crops, as in iBOT. The log adds ``ibot_loss``, ``ibot_target_entropy`` and ``ibot_masked``.

Outputs: ``config.json``, ``ckpt.pt`` (student, teacher, heads, centre, optimiser, RNG, step),
``log.jsonl`` and ``backbone.safetensors``: the teacher's ViTSeg weights (encoder trained, decoder
freshly initialised), which ``train-seg`` takes as ``init`` to fine-tune a segmentation decoder.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..inference.preprocess import normalize
from ..models.checkpoints import save_safetensors
from ..models.registry import build_network
from ..models.spec import ModelSpec
from ..models.vit_seg import DINOHead, vit_tokens
from .common import (
    Logger,
    TrainingError,
    load_checkpoint,
    lr_at,
    merge_config,
    progress_bar,
    save_checkpoint,
    set_lr,
    start_run,
    step_rng,
)
from .train_seg import _init_from, ensure_bank

DEFAULTS = {
    "seed": 0,
    "batch_size": 4,
    "steps": 600,
    "lr": 5e-4,
    "weight_decay": 0.04,
    "warmup": 30,
    "out_dim": 2048,
    "head_hidden": 512,
    "head_bottleneck": 128,
    "teacher_temp": 0.04,
    "student_temp": 0.1,
    "center_momentum": 0.9,
    "momentum": 0.99,
    "n_global": 2,
    "n_local": 4,
    "global_scale": [0.35, 1.0],
    "local_scale": [0.04, 0.3],
    "local_size": [32, 32, 32],
    "checkpoint_every": 50,
    "log_every": 10,
    # anti-collapse options (defaults keep the original behaviour)
    "teacher_temp_start": None,    # linear warm-up of τ_t from this value to teacher_temp …
    "teacher_temp_warmup": 0,      # … over this many steps
    "weight_decay_end": None,      # cosine schedule of the weight decay to this value
    "freeze_last_layer": 0,        # steps during which the head's prototype layer gets no update
    "centering": "ema",            # "ema" (DINO) or "sinkhorn" (Sinkhorn-Knopp teacher targets, DINOv2)
    "sinkhorn_iters": 3,
    "koleo": 0.0,                  # weight of the KoLeo spreading term on the student's global CLS (DINOv2)
    "init_checkpoint": None,       # continue from another run's ckpt.pt: student, teacher and centre
                                   # (fresh optimiser and schedules)
    "init_backbone": None,         # or: a ViTSeg .safetensors whose encoder starts both student and teacher
    # iBOT (Zhou et al. 2022): masked patch-token self-distillation on the global crops (off when 0)
    "ibot": 0.0,                   # weight of the patch-token loss beside the CLS loss
    "ibot_out_dim": 256,           # prototypes of the patch head (its own head; Sinkhorn targets over the tokens)
    "ibot_head_hidden": 256,
    "ibot_mask_ratio": [0.1, 0.5], # share of a masked crop's patches hidden behind the mask token (3D blocks)
    "ibot_mask_prob": 0.5,         # share of the global crops that are masked
    "augment": {"gamma": 0.35, "contrast": 0.25, "noise": 0.04, "flip_lr": 0.5, "blur": 0.5},
}


def full_config(cfg: dict) -> dict:
    out = merge_config(DEFAULTS, cfg)
    for key in ("model", "bank"):
        if key not in out:
            raise TrainingError(f"DINO config needs {key!r}")
    return out


# --------------------------------------------------------------------------------------------
# the backbone forward for any crop size

def encode_cls(vit, x: torch.Tensor) -> torch.Tensor:
    """CLS embedding ``(B, hidden)`` of a MONAI ``ViT`` (CLS token) for an input of any size divisible by the patch
    (``models.vit_seg.vit_tokens``: the learned positional embedding trilinearly resized when the token grid
    differs from the one it was made for)."""
    n = vit.patch_embedding.position_embeddings.shape[1]
    side = round(n ** (1 / 3))
    full = getattr(vit, "_vit3d_grid", None) or (side, side, side)
    return vit_tokens(vit, x, tuple(full))[0][:, 0]


class DINOModel(nn.Module):
    """A ViTSeg (its encoder is the backbone) + a DINO projection head (+ for iBOT a patch head and a mask
    token)."""

    def __init__(self, network: nn.Module, head: DINOHead, patch_head: DINOHead | None = None):
        super().__init__()
        self.network = network
        self.head = head
        self.network.encoder._vit3d_grid = tuple(network.feat_size)
        if patch_head is not None:
            self.patch_head = patch_head
            self.mask_token = nn.Parameter(torch.zeros(1, 1, int(network.hidden_size)))
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    def global_outputs(self, x: torch.Tensor, patch_mask: torch.Tensor | None = None):
        """Global crops ``x`` (B, 1, *img_size) → ``(CLS head output (B, K), patch head output (B, N, K_p),
        CLS embedding (B, hidden))``; ``patch_mask`` (B, N) hides patches behind the mask token."""
        vit = self.network.encoder
        tokens, _ = vit_tokens(vit, x, tuple(self.network.feat_size), patch_mask=patch_mask,
                               mask_token=self.mask_token if patch_mask is not None else None)
        cls = tokens[:, 0]
        return self.head(cls), self.patch_head(tokens[:, 1:]), cls

    def forward(self, crops: list[torch.Tensor], return_cls: bool = False):
        # crops of one size are batched together (one backbone pass per size)
        out, cls = [], []
        i = 0
        while i < len(crops):
            j = i
            while j < len(crops) and crops[j].shape == crops[i].shape:
                j += 1
            emb = encode_cls(self.network.encoder, torch.cat(crops[i:j]))
            cls.append(emb)
            out.append(self.head(emb))
            i = j
        if return_cls:
            return torch.cat(out), cls[0]
        return torch.cat(out)


# --------------------------------------------------------------------------------------------
# multi-crop

def _random_box(rng, shape, scale_range, aspect: float = 0.3):
    """A random box (starts, sizes) whose volume fraction lies in ``scale_range``."""
    frac = rng.uniform(*scale_range)
    sides = np.array(shape, float) * frac ** (1 / 3)
    sides *= np.exp(rng.uniform(-aspect, aspect, 3))
    sides = np.clip(np.round(sides), 8, shape).astype(int)
    starts = [int(rng.integers(0, s - z + 1)) for s, z in zip(shape, sides)]
    return starts, sides


def _augment(rng, x: torch.Tensor, aug: dict) -> torch.Tensor:
    if aug.get("gamma"):
        x = x.clamp_min(0) ** float(np.exp(rng.normal(0, aug["gamma"])))
    if aug.get("contrast"):
        x = x * float(1 + rng.uniform(-aug["contrast"], aug["contrast"])) + float(rng.normal(0, aug["contrast"] / 4))
    if aug.get("blur") and rng.random() < aug["blur"]:
        k = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype)
        for ax in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + ax] = 3
            x = F.conv3d(x, k.view(shape), padding=[1 if a == ax else 0 for a in range(3)])
    if aug.get("noise"):
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        x = x + torch.randn(x.shape, generator=g) * float(rng.uniform(0, aug["noise"]))
    if rng.random() < aug.get("flip_lr", 0.0):
        x = x.flip(2)
    return x


def multi_crop(volume: np.ndarray, rng, cfg: dict, img_size, normalization: dict) -> list[torch.Tensor]:
    """``n_global`` crops at ``img_size`` then ``n_local`` crops at ``local_size``, each (1, 1, D, H, W)."""
    x = normalize(volume.astype(np.float32)[..., None] / 255.0, normalization)[..., 0]
    t = torch.from_numpy(np.ascontiguousarray(x))[None, None]
    crops = []
    for kind, n, size, scale in (("g", cfg["n_global"], img_size, cfg["global_scale"]),
                                 ("l", cfg["n_local"], cfg["local_size"], cfg["local_scale"])):
        for _ in range(int(n)):
            starts, sides = _random_box(rng, x.shape, scale)
            (z0, y0, x0), (dz, dy, dx) = starts, sides
            sub = t[:, :, z0:z0 + dz, y0:y0 + dy, x0:x0 + dx]
            sub = F.interpolate(sub, size=tuple(int(s) for s in size), mode="trilinear", align_corners=False)
            crops.append(_augment(rng, sub, cfg["augment"]))
    return crops


def make_views(images, seed: int, step: int, cfg: dict, img_size, normalization) -> list[torch.Tensor]:
    """Views for one step: a list over crop index of batched tensors (B, 1, …)."""
    rng = step_rng(seed, step, stream=1)
    per_volume = []
    for _ in range(int(cfg["batch_size"])):
        i = int(rng.integers(images.shape[0]))
        per_volume.append(multi_crop(images[i], rng, cfg, img_size, normalization))
    n_views = len(per_volume[0])
    return [torch.cat([pv[v] for pv in per_volume]) for v in range(n_views)]


def block_masks(rng, n: int, grid, ratio_range, prob: float) -> torch.Tensor:
    """iBOT masks for ``n`` crops: ``(n, prod(grid))`` bool in token order. A crop is masked with
    probability ``prob``; a masked crop gets random 3D blocks (sides 1 to half the grid) until a share drawn
    from ``ratio_range`` of its patches is hidden (a block may overshoot it a little)."""
    grid = tuple(int(g) for g in grid)
    out = np.zeros((n, *grid), bool)
    for i in range(n):
        if rng.random() >= prob:
            continue
        goal = rng.uniform(*ratio_range) * np.prod(grid)
        while out[i].sum() < goal:
            side = [int(rng.integers(1, max(2, g // 2 + 1))) for g in grid]
            start = [int(rng.integers(0, g - s + 1)) for g, s in zip(grid, side)]
            out[i][tuple(slice(a, a + b) for a, b in zip(start, side))] = True
    return torch.from_numpy(out.reshape(n, -1))


def ibot_patch_loss(student_patch: torch.Tensor, teacher_targets: torch.Tensor, mask: torch.Tensor, *,
                    student_temp: float) -> torch.Tensor:
    """Cross-entropy between the teacher's patch targets and the student's patch outputs at the masked
    patches (mean over the masked patches of the batch); ``(B, N, K)``, ``(B, N, K)``, ``(B, N)``."""
    if not bool(mask.any()):
        return student_patch.sum() * 0.0
    ce = torch.sum(-teacher_targets.detach() * F.log_softmax(student_patch / student_temp, dim=-1), dim=-1)
    return ce[mask].mean()


# --------------------------------------------------------------------------------------------
# loss

def dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor, *, n_views: int,
              n_global: int, student_temp: float, teacher_temp: float,
              targets: torch.Tensor | None = None) -> torch.Tensor:
    """DINO cross-entropy over (teacher global view, different student view) pairs.

    ``student_out`` is ``(n_views·B, K)`` grouped by view, ``teacher_out`` ``(n_global·B, K)``.
    ``targets`` (same shape as ``teacher_out``), when given, replaces the centred, sharpened
    teacher distribution (e.g. Sinkhorn-Knopp targets).
    """
    s = (student_out / student_temp).chunk(n_views)
    if targets is None:
        targets = F.softmax((teacher_out - center) / teacher_temp, dim=-1)
    t = targets.detach().chunk(n_global)
    total, n = 0.0, 0
    for ti, tq in enumerate(t):
        for si, sv in enumerate(s):
            if si == ti:
                continue
            total = total + torch.sum(-tq * F.log_softmax(sv, dim=-1), dim=-1).mean()
            n += 1
    return total / n


@torch.no_grad()
def sinkhorn_targets(teacher_out: torch.Tensor, teacher_temp: float, iters: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp teacher targets (SwAV / DINOv2): rows sum to 1, prototypes get equal mass over the batch."""
    q = torch.exp((teacher_out.float() - teacher_out.float().max()) / teacher_temp).t()  # (K, B)
    k, b = q.shape
    q /= q.sum()
    for _ in range(int(iters)):
        q /= q.sum(dim=1, keepdim=True).clamp_min(1e-30)
        q /= k
        q /= q.sum(dim=0, keepdim=True).clamp_min(1e-30)
        q /= b
    return (q * b).t()


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo (Sablayrolles et al. 2019, DINOv2): −mean log distance of each l2-normalised row to its
    nearest other row."""
    x = F.normalize(x, dim=-1, p=2)
    d = torch.cdist(x, x)
    d = d + torch.eye(x.shape[0], device=x.device, dtype=x.dtype) * 1e3
    return -torch.log(d.min(dim=1).values + eps).mean()


def entropy(p: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Entropy (nats) of each distribution along the last axis."""
    return -(p * p.clamp_min(eps).log()).sum(-1)


def _cosine(step: int, total: int, start: float, end: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))


# --------------------------------------------------------------------------------------------
# run

def _spec(cfg: dict) -> ModelSpec:
    d = dict(cfg["model"])
    d.pop("weights", None)
    spec = ModelSpec.from_dict(d)
    if spec.architecture != "vit_seg":
        raise TrainingError(f"DINO pre-training needs a vit_seg model, not {spec.architecture!r}")
    return spec


def _init_from_checkpoint(path, modules: dict, center: torch.Tensor, dev) -> torch.Tensor:
    """Load another run's student and teacher (and centre); returns the centre to start from.

    When the other run had a different number of prototypes (``out_dim``), the prototype layer
    (``head.last_layer``) keeps this run's fresh initialisation and the centre starts at zero;
    every other weight must match exactly.
    """
    state = torch.load(path, map_location=dev, weights_only=True)
    fresh_prototypes = False
    for k, mod in modules.items():
        own = mod.state_dict()
        loaded = state["modules"][k]
        keep = {n for n, v in loaded.items() if n.startswith("head.last_layer")
                and n in own and tuple(own[n].shape) != tuple(v.shape)}
        fresh_prototypes |= bool(keep)
        new = {n: own[n] for n in own if n not in loaded and n.startswith(_NEW_MODULES)}   # e.g. the iBOT head
        mod.load_state_dict({**new, **{n: (own[n] if n in keep else v) for n, v in loaded.items()}})
    if fresh_prototypes:
        return torch.zeros_like(center)
    return torch.tensor(json.loads(state["extra"])["center"], device=dev).view(1, -1)


_NEW_MODULES = ("patch_head.", "mask_token")


def _init_backbone(path, modules: dict) -> None:
    """Start every module's ViTSeg encoder from a ViTSeg ``.safetensors`` (``train_seg``'s ``init`` loader
    under the ``encoder.`` prefix; every encoder weight must come from the file)."""
    init = {"path": path, "source_prefix": "encoder.", "prefix": "encoder."}
    for mod in modules.values():
        loaded = set(_init_from(mod.network, init))
        missing = sorted(k for k in mod.network.state_dict() if k.startswith("encoder.") and k not in loaded)
        if missing:
            raise TrainingError(f"{path}: no matching weights for {len(missing)} encoder tensors "
                                f"(e.g. {missing[0]}): not this ViTSeg's encoder")


def train_dino(config: dict, out, *, data_dir=None, resume: bool = False, device=None, progress: bool = True,
               max_steps: int | None = None) -> dict:
    cfg = full_config(config)
    out, dev, seed = start_run(cfg, out, resume, device)
    spec = _spec(cfg)
    net = build_network(spec)
    hidden = int(net.hidden_size)
    head = DINOHead(hidden, int(cfg["out_dim"]), int(cfg["head_hidden"]), int(cfg["head_bottleneck"]))
    ibot_w = float(cfg.get("ibot") or 0.0)
    patch_head = (DINOHead(hidden, int(cfg["ibot_out_dim"]), int(cfg["ibot_head_hidden"]),
                           int(cfg["head_bottleneck"])) if ibot_w > 0 else None)
    student = DINOModel(net, head, patch_head).to(dev)
    teacher = copy.deepcopy(student).to(dev)
    for p in teacher.parameters():
        p.requires_grad_(False)
    center = torch.zeros(1, int(cfg["out_dim"]), device=dev)
    img_size = tuple(int(s) for s in net.img_size)
    images, _ = ensure_bank(cfg["bank"], data_dir)
    # only the encoder and the head are trained (the ViTSeg decoder gets no gradient here)
    params = [p for n, p in student.named_parameters() if p.requires_grad and not n.startswith(("network.encoders",
                                                                                                 "network.decoders",
                                                                                                 "network.out"))]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": float(cfg["weight_decay"])},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=float(cfg["lr"]))
    step = 0
    modules = {"student": student, "teacher": teacher}
    if resume and (out / "ckpt.pt").exists():
        step, extra = load_checkpoint(out / "ckpt.pt", modules=modules, optimizer=optimizer, device=dev)
        center = torch.tensor(extra["center"], device=dev).view(1, -1)
    elif cfg.get("init_checkpoint"):
        center = _init_from_checkpoint(cfg["init_checkpoint"], modules, center, dev)
    elif cfg.get("init_backbone"):
        _init_backbone(cfg["init_backbone"], modules)
    total = int(cfg["steps"])
    stop = total if max_steps is None else min(total, int(max_steps))
    n_views = int(cfg["n_global"]) + int(cfg["n_local"])
    logger = Logger(out)
    bar = progress_bar(total, step, "train-dino", progress)
    student.train()
    teacher.train()
    last = {}
    while step < stop:
        set_lr(optimizer, lr_at(step, lr=float(cfg["lr"]), warmup=int(cfg["warmup"]), total=total))
        if cfg.get("weight_decay_end") is not None:
            optimizer.param_groups[0]["weight_decay"] = _cosine(step, total, float(cfg["weight_decay"]),
                                                                float(cfg["weight_decay_end"]))
        tt = float(cfg["teacher_temp"])
        if cfg.get("teacher_temp_start") is not None and step < int(cfg["teacher_temp_warmup"]):
            a = step / max(1, int(cfg["teacher_temp_warmup"]))
            tt = float(cfg["teacher_temp_start"]) + a * (tt - float(cfg["teacher_temp_start"]))
        views = [v.to(dev) for v in make_views(images, seed, step, cfg, img_size, spec.normalization)]
        n_g = int(cfg["n_global"])
        koleo_w = float(cfg.get("koleo") or 0.0)
        patch = None
        if ibot_w > 0:
            g = torch.cat(views[:n_g])
            pmask = block_masks(step_rng(seed, step, stream=2), g.shape[0], student.network.feat_size,
                                cfg["ibot_mask_ratio"], float(cfg["ibot_mask_prob"])).to(dev)
            with torch.no_grad():
                t_out, t_patch, _ = teacher.global_outputs(g)
            s_g, s_patch, s_cls = student.global_outputs(g, pmask)
            s_out = torch.cat([s_g, student(views[n_g:])]) if len(views) > n_g else s_g
            t_ptarget = sinkhorn_targets(t_patch.reshape(-1, t_patch.shape[-1]), tt,
                                         int(cfg["sinkhorn_iters"])).view_as(t_patch)
            patch = ibot_patch_loss(s_patch, t_ptarget, pmask, student_temp=float(cfg["student_temp"]))
        else:
            with torch.no_grad():
                t_out = teacher(views[:n_g])
            s_out, s_cls = student(views, return_cls=True)
        targets = None
        if cfg.get("centering", "ema") == "sinkhorn":
            targets = sinkhorn_targets(t_out, tt, int(cfg["sinkhorn_iters"]))
        loss = dino_loss(s_out, t_out, center, n_views=n_views, n_global=n_g,
                         student_temp=float(cfg["student_temp"]), teacher_temp=tt, targets=targets)
        if patch is not None:
            loss = loss + ibot_w * patch
        kol = None
        if koleo_w > 0:
            kol = sum(koleo_loss(c) for c in s_cls.chunk(n_g)) / n_g
            loss = loss + koleo_w * kol
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step < int(cfg.get("freeze_last_layer") or 0):
            for p in student.head.last_layer.parameters():
                p.grad = None
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        optimizer.step()
        m = 1 - (1 - float(cfg["momentum"])) * (math.cos(math.pi * step / max(1, total)) + 1) / 2
        with torch.no_grad():
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
            cm = float(cfg["center_momentum"])
            center.mul_(cm).add_(t_out.mean(0, keepdim=True), alpha=1 - cm)
            tp = targets if targets is not None else F.softmax((t_out - center) / tt, dim=-1)
            t_entropy = float(entropy(tp).mean())
            t_mean = tp.mean(0)
            batch_entropy = float(entropy(t_mean))
        step += 1
        last = {"step": step, "loss": round(float(loss.detach()), 5), "teacher_entropy": round(t_entropy, 4),
                "teacher_batch_entropy": round(batch_entropy, 4), "momentum": round(m, 6),
                "teacher_temp": round(tt, 5), "teacher_top1_unique": int(tp.argmax(-1).unique().numel())}
        if kol is not None:
            last["koleo"] = round(float(kol.detach()), 4)
        if patch is not None:
            last["ibot_loss"] = round(float(patch.detach()), 5)
            last["ibot_target_entropy"] = round(float(entropy(t_ptarget).mean()), 4)
            last["ibot_masked"] = round(float(pmask.float().mean()), 4)
        bar.update(1)
        bar.set_postfix(loss=f"{last['loss']:.4f}")
        if step % int(cfg["log_every"]) == 0 or step == stop:
            logger.log(**last, lr=optimizer.param_groups[0]["lr"])
        if step % int(cfg["checkpoint_every"]) == 0 or step == stop:
            save_checkpoint(out / "ckpt.pt", step=step, modules=modules, optimizer=optimizer,
                            extra={"center": center.flatten().tolist()})
    bar.close()
    save_safetensors(teacher.network, out / "backbone.safetensors",
                     metadata={"step": str(step),
                               "what": "DINO teacher ViTSeg (encoder pretrained, decoder untrained)"})
    return {"step": step, "finished": step >= total, "last": last, "out": str(out)}


__all__ = ["train_dino", "dino_loss", "sinkhorn_targets", "koleo_loss", "encode_cls", "multi_crop", "DINOModel",
           "DEFAULTS", "block_masks", "ibot_patch_loss", "entropy"]
