"""Segmentation training on the synthetic bank (``napari-vit3d train-seg``).

Config (JSON), every key written back to ``RUN/config.json``::

    {
      "seed": 0,
      "model": { ...ModelSpec fields without "weights"... },
      "bank": {"path": "runs/bank/bank_s0_n200.npz", "n": 200, "seed": 0,   # built if missing
               "synth": {...SynthConfig fields...}},                          # or a list of banks
      "crop": [96, 96, 96], "batch_size": 2, "steps": 1500,
      "lr": 1e-3, "weight_decay": 1e-4, "warmup": 50,
      "dice_weight": 1.0, "ce_weight": 1.0,
      "checkpoint_every": 50, "log_every": 10,
      "augment": {"gamma": 0.3, "contrast": 0.2, "noise": 0.03, "flip_lr": 0.5,
                  "foreground_crop": 0.8},  # share of crops centred near a random brain voxel
      "init": null,                      # or {"path": "...safetensors", "prefix": "encoder."}
      "freeze_init_steps": 0,            # keep the initialised part frozen for this many steps
      "freeze_prefixes": null            # or: freeze only parameters starting with these (e.g. ["encoder."])
    }

A bank path that is relative is taken relative to the current folder; ``--data-dir`` gives the
folder of the real scans the bank is built from when it does not exist yet. Every step's batch is
drawn from a generator seeded with ``(seed, step)`` and the checkpoint carries the model, the
optimiser, the torch RNG state and the step, so a resumed run continues exactly.

Outputs in the run folder: ``config.json``, ``ckpt.pt``, ``log.jsonl``, ``model.safetensors``
(fp32) and ``model.json`` (the ModelSpec pointing at it: loadable with ``napari_vit3d.models.load_model``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.preprocess import normalize
from ..models.checkpoints import apply_state_dict, load_state_dict, save_safetensors
from ..models.registry import build_network
from ..models.spec import ModelSpec
from .common import (
    Logger,
    TrainingError,
    lr_at,
    merge_config,
    optimise_step,
    optimiser_and_resume,
    progress_bar,
    set_lr,
    start_run,
    step_rng,
)
from .synthesis import N_CLASSES, build_bank, load_bank

DEFAULTS = {
    "seed": 0,
    "crop": [96, 96, 96],
    "batch_size": 2,
    "steps": 1000,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "warmup": 50,
    "dice_weight": 1.0,
    "ce_weight": 1.0,
    "checkpoint_every": 50,
    "log_every": 10,
    "augment": {"gamma": 0.3, "contrast": 0.2, "noise": 0.03, "flip_lr": 0.5, "foreground_crop": 0.0},
    "init": None,
    "freeze_init_steps": 0,
    "freeze_prefixes": None,
}


def full_config(cfg: dict) -> dict:
    out = merge_config(DEFAULTS, cfg)
    if "model" not in out:
        raise TrainingError("training config needs a 'model' (a ModelSpec without weights)")
    if "bank" not in out:
        raise TrainingError("training config needs a 'bank' ({'path': ..., 'n': ..., 'seed': ...})")
    return out


# --------------------------------------------------------------------------------------------
# data

def ensure_bank(bank_cfg, data_dir) -> tuple[np.ndarray, np.ndarray]:
    """The bank's (images, labels), built first if missing; a list of banks is concatenated."""
    if isinstance(bank_cfg, list):
        parts = [ensure_bank(b, data_dir) for b in bank_cfg]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    path = Path(bank_cfg["path"])
    if not path.exists():
        if data_dir is None:
            raise TrainingError(f"{path}: the synthetic bank does not exist; "
                                "pass --data-dir with the real scans to build it")
        from .synthesis import SynthConfig

        syn = SynthConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in bank_cfg.get("synth", {}).items()})
        print(f"building the synthetic bank {path} ({bank_cfg['n']} volumes) …", flush=True)
        build_bank(data_dir, path, n=int(bank_cfg["n"]), seed=int(bank_cfg.get("seed", 0)), cfg=syn)
    images, labels, meta = load_bank(path)
    if images.shape[0] < 1:
        raise TrainingError(f"{path}: empty bank")
    return images, labels


def augment_and_crop(image_u8: np.ndarray, labels: np.ndarray, rng: np.random.Generator, crop, aug: dict,
                     normalization: dict) -> tuple[np.ndarray, np.ndarray]:
    """One training pair from a bank entry: intensity augmentation, LR flip, normalisation, random crop.

    With probability ``foreground_crop`` the crop is centred (± a quarter crop) on a random voxel of
    class > 0, so small crops of a large field of view still see brain. The normalisation is the
    model's own (``inference.preprocess.normalize``) applied to the whole volume, as inference does;
    the crop is taken afterwards (zero padded when the crop is larger).
    """
    x = image_u8.astype(np.float32) / 255.0
    y = labels
    if aug.get("gamma"):
        x = x ** float(np.exp(rng.normal(0, aug["gamma"])))
    if aug.get("contrast"):
        x = x * float(1 + rng.uniform(-aug["contrast"], aug["contrast"])) + float(rng.normal(0, aug["contrast"] / 4))
    if aug.get("noise"):
        x = x + rng.normal(0, rng.uniform(0, aug["noise"]), x.shape).astype(np.float32)
    if rng.random() < aug.get("flip_lr", 0.0):
        x, y = x[::-1], y[::-1]
    x = normalize(np.ascontiguousarray(x, np.float32)[..., None], normalization)[..., 0]
    crop = [int(c) for c in crop]
    pads = [(max(0, c - s) // 2, max(0, c - s) - max(0, c - s) // 2) for c, s in zip(crop, x.shape)]
    if any(p != (0, 0) for p in pads):
        x, y = np.pad(x, pads), np.pad(y, pads)
    fg = np.argwhere(y[::4, ::4, ::4] > 0) * 4 if rng.random() < aug.get("foreground_crop", 0.0) else None
    if fg is not None and len(fg):
        centre = fg[int(rng.integers(len(fg)))]
        starts = [int(np.clip(m - c // 2 + rng.integers(-c // 4, c // 4 + 1), 0, s - c))
                  for m, s, c in zip(centre, x.shape, crop)]
    else:
        starts = [int(rng.integers(0, s - c + 1)) for s, c in zip(x.shape, crop)]
    sl = tuple(slice(a, a + c) for a, c in zip(starts, crop))
    return np.ascontiguousarray(x[sl]), np.ascontiguousarray(y[sl])


def make_batch(images, labels, seed: int, step: int, cfg: dict, normalization: dict):
    rng = step_rng(seed, step)
    xs, ys = [], []
    for _ in range(int(cfg["batch_size"])):
        i = int(rng.integers(images.shape[0]))
        x, y = augment_and_crop(images[i], labels[i], rng, cfg["crop"], cfg["augment"], normalization)
        xs.append(x)
        ys.append(y)
    return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys).astype(np.int64))


# --------------------------------------------------------------------------------------------
# loss

def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, *, dice_weight=1.0, ce_weight=1.0,
                 eps: float = 1e-5) -> tuple[torch.Tensor, dict]:
    """Cross-entropy + soft Dice (mean over classes, batch pooled). Returns (loss, parts)."""
    ce = F.cross_entropy(logits, target)
    prob = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(prob.dtype)
    dims = (0, 2, 3, 4)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    dl = 1 - dice.mean()
    loss = ce_weight * ce + dice_weight * dl
    return loss, {"ce": float(ce.detach()), "dice_loss": float(dl.detach()),
                  "dice": [round(float(d), 4) for d in dice.detach()]}


# --------------------------------------------------------------------------------------------
# run

def _spec_from_config(cfg: dict) -> ModelSpec:
    d = dict(cfg["model"])
    d.pop("weights", None)
    spec = ModelSpec.from_dict(d)
    if spec.n_classes != N_CLASSES:
        raise TrainingError(f"model spec has {spec.n_classes} labels; the synthetic data has {N_CLASSES} classes")
    return spec


def _init_from(network: torch.nn.Module, init: dict) -> list[str]:
    """Load ``init['path']`` (safetensors) under ``init['prefix']``; returns the initialised keys."""
    state = load_state_dict(init["path"])
    src_prefix = init.get("source_prefix", "")
    prefix = init.get("prefix", "")
    own = network.state_dict()
    picked = {}
    for k, v in state.items():
        if not k.startswith(src_prefix):
            continue
        key = prefix + k[len(src_prefix):]
        if key in own and tuple(own[key].shape) == tuple(v.shape):
            picked[key] = v
    if not picked:
        raise TrainingError(f"{init['path']}: no weights match the network under prefix {prefix!r}")
    merged = dict(own)
    merged.update(picked)
    apply_state_dict(network, merged, source=str(init["path"]))
    return sorted(picked)


def write_outputs(network, spec: ModelSpec, out: Path, *, cfg: dict, step: int, extra_meta: dict | None = None) -> Path:
    save_safetensors(network, out / "model.safetensors", metadata={"step": str(step), "config": json.dumps(cfg)})
    d = spec.to_dict()
    d["weights"] = "model.safetensors"
    d["extra"] = {**d.get("extra", {}), "trained_steps": int(step), **(extra_meta or {})}
    (out / "model.json").write_text(json.dumps(d, indent=2))
    return out / "model.json"


def train_seg(config: dict, out, *, data_dir=None, resume: bool = False, device=None, progress: bool = True,
              max_steps: int | None = None) -> dict:
    """Train per ``config`` into the run folder ``out``; returns a summary dict.

    ``max_steps`` stops early (after that step, with a checkpoint) without changing the schedule,
    so a later ``resume`` continues the same run: this is what the resume test uses.
    """
    cfg = full_config(config)
    out, dev, seed = start_run(cfg, out, resume, device)
    spec = _spec_from_config(cfg)
    network = build_network(spec).to(dev)
    init_keys: list[str] = []
    if cfg.get("init"):
        init_keys = _init_from(network, cfg["init"])
    images, labels = ensure_bank(cfg["bank"], data_dir)
    params, optimizer, step = optimiser_and_resume(network, cfg, out, resume, dev)
    total = int(cfg["steps"])
    stop = total if max_steps is None else min(total, int(max_steps))
    frozen = set(init_keys)
    if cfg.get("freeze_prefixes"):
        frozen = {k for k, _ in network.named_parameters() if k.startswith(tuple(cfg["freeze_prefixes"]))}
    named = dict(network.named_parameters())
    logger = Logger(out)
    bar = progress_bar(total, step, "train-seg", progress)
    network.train()
    last = {}
    while step < stop:
        freeze = step < int(cfg["freeze_init_steps"])
        for k, p in named.items():
            p.requires_grad_(not (freeze and k in frozen))
        set_lr(optimizer, lr_at(step, lr=float(cfg["lr"]), warmup=int(cfg["warmup"]), total=total))
        x, y = make_batch(images, labels, seed, step, cfg, spec.normalization)
        x, y = x.to(dev), y.to(dev)
        logits = network(x)
        loss, parts = dice_ce_loss(logits, y, dice_weight=float(cfg["dice_weight"]), ce_weight=float(cfg["ce_weight"]))
        last = optimise_step(loss, parts, step=step, stop=stop, params=params, optimizer=optimizer, network=network,
                             bar=bar, logger=logger, cfg=cfg, out=out)
        step += 1
    bar.close()
    network.eval()
    write_outputs(network, spec, out, cfg=cfg, step=step)
    return {"step": step, "finished": step >= total, "last": last, "out": str(out)}


def snapshot(run_dir, dest=None) -> Path:
    """Write ``model.safetensors`` + ``model.json`` from the run's latest checkpoint (training may go on).

    ``dest`` defaults to ``RUN/snapshot-<step>``; returns the folder (usable by :func:`export_bundled`).
    """
    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    spec = ModelSpec.from_dict({k: v for k, v in cfg["model"].items() if k != "weights"})  # any run: seg or prompt
    network = build_network(spec)
    state = torch.load(run_dir / "ckpt.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(state["modules"]["network"])
    dest = Path(dest) if dest else run_dir / f"snapshot-{int(state['step'])}"
    dest.mkdir(parents=True, exist_ok=True)
    write_outputs(network, spec, dest, cfg=cfg, step=int(state["step"]))
    return dest


def export_bundled(run_dir, dest_dir, name: str, *, description: str = "", card: str | None = None,
                   extra: dict | None = None, half: bool = True) -> Path:
    """Copy a run's final weights into ``dest_dir/<name>.safetensors`` (fp16 floats when ``half``) + spec JSON."""
    run_dir, dest_dir = Path(run_dir), Path(dest_dir)
    spec = ModelSpec.from_json(run_dir / "model.json")
    state = load_state_dict(run_dir / "model.safetensors")
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    save_safetensors(state, dest_dir / f"{name}.safetensors", metadata={"dtype": "float16" if half else "float32",
                                                                       "source_run": run_dir.name})
    d = spec.to_dict()
    d.update(name=name, weights=f"{name}.safetensors", description=description or d.get("description", ""))
    if card is not None:
        d["card"] = card
    d["extra"] = {**d.get("extra", {}), **(extra or {})}
    (dest_dir / f"{name}.json").write_text(json.dumps(d, indent=2))
    return dest_dir / f"{name}.json"


__all__ = ["train_seg", "snapshot", "dice_ce_loss", "augment_and_crop", "make_batch", "export_bundled", "full_config",
           "DEFAULTS"]
