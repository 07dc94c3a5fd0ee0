"""What segmentation training and DINO pre-training share: seeding, device, schedule, checkpoints.

A run folder holds ``config.json`` (the full configuration, written at the start), ``ckpt.pt``
(model + optimiser + RNG states + step, written every ``checkpoint_every`` steps and at the end,
atomically), ``log.jsonl`` (one line per logged step) and the final weights. Resuming loads
``ckpt.pt`` and continues exactly: data for step ``s`` is drawn from a generator seeded with
``(seed, s)``, and the torch RNG state is restored, so N steps straight equal N/2 + resume + N/2.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import Vit3dError


class TrainingError(Vit3dError):
    """A training run cannot start or continue (bad config, missing data, mismatched checkpoint)."""


def pick_device(name: str | None = None) -> torch.device:
    """The training device: ``name`` when given, else CUDA when present, else CPU (never MPS by default).

    The name is checked by :func:`napari_vit3d.models.devices.resolve_device` (one home for device choice).
    """
    from ..models.devices import resolve_device

    return resolve_device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def merge_config(defaults: dict, cfg: dict) -> dict:
    """A deep copy of ``defaults`` with ``cfg`` laid over it; ``augment`` is merged key by key."""
    out = json.loads(json.dumps(defaults))
    for k, v in cfg.items():
        if k == "augment":
            out["augment"].update(v)
        else:
            out[k] = v
    return out


def start_run(cfg: dict, out, resume: bool, device) -> tuple[Path, torch.device, int]:
    """Prepare the run folder, pick the device and seed everything: ``(out, device, seed)``."""
    out = Path(out)
    prepare_run_dir(out, cfg, resume)
    dev = pick_device(device)
    seed = int(cfg["seed"])
    seed_everything(seed)
    return out, dev, seed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The numpy generator for one step's data: depends only on (seed, step, stream)."""
    return np.random.default_rng([int(seed), int(step), int(stream)])


def lr_at(step: int, *, lr: float, warmup: int, total: int, min_ratio: float = 0.02) -> float:
    """Linear warm-up then cosine decay to ``min_ratio * lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / max(1, warmup)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def set_lr(optimizer, value: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = value * g.get("lr_scale", 1.0)


def load_config(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{path}: cannot read training config ({exc})") from None


def prepare_run_dir(out: Path, config: dict, resume: bool) -> None:
    """Create the run folder and write ``config.json``; a resumed run must have the same config."""
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    if resume and cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if old != config:
            raise TrainingError(f"{out}: config differs from the run being resumed; use a new --out folder")
    elif not resume and (out / "ckpt.pt").exists():
        raise TrainingError(f"{out} already holds a checkpoint: pass --resume to continue it, or pick a new --out")
    cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def save_checkpoint(path: Path, *, step: int, modules: dict, optimizer, extra: dict | None = None) -> None:
    state = {
        "step": int(step),
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": json.dumps(np.random.get_state()[1].tolist()),
        "extra": json.dumps(extra or {}),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, *, modules: dict, optimizer, device) -> tuple[int, dict]:
    if not Path(path).exists():
        raise TrainingError(f"{path}: no checkpoint to resume from")
    state = torch.load(path, map_location=device, weights_only=True)
    for k, m in modules.items():
        m.load_state_dict(state["modules"][k])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"].cpu())
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"]), json.loads(state["extra"])


def optimiser_and_resume(network, cfg: dict, out: Path, resume: bool, device) -> tuple[list, object, int]:
    """AdamW over all of ``network``'s parameters (``lr``, ``weight_decay`` of ``cfg``) and the step to start
    from: the checkpoint's when ``resume`` and ``out/ckpt.pt`` exists (network and optimiser restored),
    else 0. Returns ``(params, optimizer, step)``."""
    params = list(network.parameters())
    optimizer = torch.optim.AdamW(params, lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    step = 0
    if resume and (Path(out) / "ckpt.pt").exists():
        step, _ = load_checkpoint(Path(out) / "ckpt.pt", modules={"network": network}, optimizer=optimizer,
                                  device=device)
    return params, optimizer, step


def optimise_step(loss, parts: dict, *, step: int, stop: int, params, optimizer, network, bar, logger, cfg: dict,
                  out: Path, clip: float = 5.0) -> dict:
    """One optimiser step of a segmentation-style loop (``train-seg``, ``train-prompt``): backward, gradient
    clipping, step, then the progress bar, the log line every ``log_every`` and the checkpoint every
    ``checkpoint_every`` steps (and at ``stop``). ``step`` is the number of steps done *before* this one;
    returns the logged row (its ``step`` is ``step + 1``)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    done = step + 1
    row = {"step": done, "loss": round(float(loss.detach()), 5), **parts}
    bar.update(1)
    bar.set_postfix(loss=f"{row['loss']:.4f}")
    if done % int(cfg["log_every"]) == 0 or done == stop:
        logger.log(**row, lr=optimizer.param_groups[0]["lr"])
    if done % int(cfg["checkpoint_every"]) == 0 or done == stop:
        save_checkpoint(out / "ckpt.pt", step=done, modules={"network": network}, optimizer=optimizer)
    return row


class Logger:
    """Appends one JSON line per logged step to ``log.jsonl`` and tracks wall time."""

    def __init__(self, out: Path):
        self.path = out / "log.jsonl"
        self.t0 = time.time()

    def log(self, **row) -> None:
        row["wall_s"] = round(time.time() - self.t0, 2)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def progress_bar(total: int, initial: int, desc: str, enabled: bool = True):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True)
