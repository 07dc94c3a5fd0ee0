"""Promptable-model training (``napari-vit3d train-prompt``): objects, clicks and previous masks on the fly.

Config (JSON), written back to ``RUN/config.json``::

    {
      "seed": 0,
      "model": { ...ModelSpec without "weights": segformer3d, in_channels 4, labels background/object... },
      "sample": { ...PromptSampleConfig fields: size, spacing_range, extent_ratio, p_kind, p_ct, ... },
      "batch_size": 2, "steps": 3000, "lr": 6e-4, "weight_decay": 1e-4, "warmup": 50,
      "checkpoint_every": 50, "log_every": 10,
      "init": null,                       # or {"path": "...safetensors"}
      "n_segments": [150, 600, 2500],     # SLIC supervoxel counts per real image
      "loss": "dice_ce"                   # or "object_dice_ce" (object Dice per sample + CE)
    }

``--data-dir`` is the folder with the real scans (``colin27/``, ``mni152_2009a/``, ``pydeface/``); the
objects are cut from them at the start of every run (about a minute). Every step's batch is drawn
from a generator seeded with ``(seed, step)``, so a resumed run continues exactly (the same
checkpoint format as ``train-seg``). Outputs: ``config.json``, ``ckpt.pt``, ``log.jsonl``,
``model.safetensors`` + ``model.json``.
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import torch

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
from .prompt_data import PromptSampleConfig, build_sources, sample
from .train_seg import _init_from, dice_ce_loss, write_outputs

DEFAULTS = {
    "seed": 0,
    "sample": {},
    "batch_size": 2,
    "steps": 3000,
    "lr": 6e-4,
    "weight_decay": 1e-4,
    "warmup": 50,
    "dice_weight": 1.0,
    "ce_weight": 1.0,
    "checkpoint_every": 50,
    "log_every": 10,
    "init": None,
    "n_segments": [150, 600, 2500],
    "augment": {},
    "loss": "dice_ce",                   # or "object_dice_ce": CE + soft Dice of the object per sample
}


def object_dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, *, dice_weight=1.0, ce_weight=1.0,
                        eps: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Cross-entropy + (1 − soft Dice of the object class), Dice per sample then averaged.

    The object is often a few hundred voxels of a 64³ crop: a Dice pooled over classes and the batch
    (``train_seg.dice_ce_loss``) gives the object half a vote and lets large objects drown small ones.
    """
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target)
    p = logits.softmax(1)[:, 1]
    t = (target == 1).to(p.dtype)
    dims = (1, 2, 3)
    dice = (2 * (p * t).sum(dims) + eps) / (p.sum(dims) + t.sum(dims) + eps)
    dl = 1 - dice.mean()
    loss = ce_weight * ce + dice_weight * dl
    return loss, {"ce": float(ce.detach()), "dice_loss": float(dl.detach()),
                  "dice": [1.0, round(float(dice.detach().mean()), 4)]}


def sample_config(d: dict) -> PromptSampleConfig:
    known = {f.name for f in fields(PromptSampleConfig)}
    unknown = set(d) - known
    if unknown:
        raise TrainingError(f"unknown sample settings: {', '.join(sorted(unknown))}")
    return PromptSampleConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def _spec(cfg: dict) -> ModelSpec:
    if "model" not in cfg:
        raise TrainingError("training config needs a 'model' (a ModelSpec without weights)")
    d = dict(cfg["model"])
    d.pop("weights", None)
    spec = ModelSpec.from_dict(d)
    if spec.in_channels != 4 or spec.n_classes != 2:
        raise TrainingError("a promptable model has 4 input channels (image, positive, negative, previous) "
                            f"and 2 labels (background, object); got {spec.in_channels} and {spec.n_classes}")
    return spec


def make_batch(sources, seed: int, step: int, batch_size: int, scfg: PromptSampleConfig):
    rng = step_rng(seed, step)
    xs, ys = zip(*(sample(rng, sources, scfg) for _ in range(int(batch_size))))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))


def train_prompt(config: dict, out, *, data_dir=None, sources=None, resume: bool = False, device=None,
                 progress: bool = True, max_steps: int | None = None) -> dict:
    """Train per ``config`` into the run folder ``out``; ``sources`` replaces the objects cut from
    ``data_dir`` (tests pass small ones). Returns a summary dict."""
    cfg = merge_config(DEFAULTS, config)
    spec = _spec(cfg)
    if "click_encoding" in cfg["sample"]:
        raise TrainingError("the click encoding is the model's: set model.extra.click_encoding, not sample")
    # one home for the encoding: the spec, so training draws what the session will feed the network
    scfg = replace(sample_config(cfg["sample"]), click_encoding=spec.extra.get("click_encoding"))
    if any(int(r) != scfg.size for r in spec.roi_size):
        raise TrainingError(f"the model's roi_size {spec.roi_size} must be the crop size {scfg.size}")
    if sources is None:
        if data_dir is None:
            raise TrainingError("train-prompt needs --data-dir (the folder of the real scans)")
        sources = build_sources(data_dir, n_segments=tuple(cfg["n_segments"]))
    out, dev, seed = start_run(cfg, out, resume, device)
    network = build_network(spec).to(dev)
    if cfg.get("init"):
        _init_from(network, cfg["init"])
    params, optimizer, step = optimiser_and_resume(network, cfg, out, resume, dev)
    total = int(cfg["steps"])
    stop = total if max_steps is None else min(total, int(max_steps))
    logger = Logger(out)
    bar = progress_bar(total, step, "train-prompt", progress)
    network.train()
    loss_fn = object_dice_ce_loss if cfg["loss"] == "object_dice_ce" else dice_ce_loss
    last = {}
    while step < stop:
        set_lr(optimizer, lr_at(step, lr=float(cfg["lr"]), warmup=int(cfg["warmup"]), total=total))
        x, y = make_batch(sources, seed, step, cfg["batch_size"], scfg)
        logits = network(x.to(dev))
        loss, parts = loss_fn(logits, y.to(dev), dice_weight=float(cfg["dice_weight"]),
                              ce_weight=float(cfg["ce_weight"]))
        last = optimise_step(loss, parts, step=step, stop=stop, params=params, optimizer=optimizer, network=network,
                             bar=bar, logger=logger, cfg=cfg, out=out)
        step += 1
    bar.close()
    network.eval()
    write_outputs(network, spec, out, cfg=cfg, step=step)
    return {"step": step, "finished": step >= total, "last": last, "out": str(out)}


__all__ = ["DEFAULTS", "make_batch", "object_dice_ce_loss", "sample_config", "train_prompt"]
