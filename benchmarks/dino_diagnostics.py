"""DINO pre-training diagnostics for one or more `train-dino` run folders (is the teacher collapsed?).

For each run's final teacher (``RUN/ckpt.pt``) on fresh multi-crop batches (step seeds never used in
training; global crops only):

* ``sinkhorn_entropy``: mean per-crop entropy of the Sinkhorn-Knopp targets at the run's τ_t;
* ``centred_entropy`` / ``centred_batch_entropy``: the DINO paper's targets, softmax((t − c)/0.04)
  with the centre c = the batch mean of the teacher's outputs, per crop and of the batch mean
  (a collapsed teacher has both at log K; a healthy one keeps the first clearly below the second);
* ``top1_unique``: distinct argmax prototypes among the crops;
* ``cls_cosine``: mean (and min) cosine similarity of the teacher backbone's CLS embeddings between
  12 different bank volumes (central 64³ crop), beside the same for a random initialisation
  (near 1 when every scan maps to the same point).

    python benchmarks/dino_diagnostics.py runs/dino5 runs/dino7 --bank runs/bank/bank_s0_n200.npz
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_vit3d.inference.preprocess import normalize
from napari_vit3d.models.registry import build_network
from napari_vit3d.models.vit_seg import DINOHead
from napari_vit3d.training.synthesis import load_bank
from napari_vit3d.training.train_dino import DINOModel, _spec, encode_cls, full_config, make_views, sinkhorn_targets


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


def teacher_of(run: Path) -> tuple[DINOModel, dict]:
    cfg = full_config(json.loads((run / "config.json").read_text()))
    net = build_network(_spec(cfg))
    head = DINOHead(int(net.hidden_size), int(cfg["out_dim"]), int(cfg["head_hidden"]), int(cfg["head_bottleneck"]))
    teacher = DINOModel(net, head)
    state = torch.load(run / "ckpt.pt", map_location="cpu", weights_only=True)
    teacher.load_state_dict(state["modules"]["teacher"])
    return teacher.eval(), {**cfg, "_step": int(state["step"])}


@torch.no_grad()
def diagnose(run: Path, images: np.ndarray, *, batches: int = 2, batch_size: int = 16) -> dict:
    teacher, cfg = teacher_of(run)
    spec = _spec(cfg)
    img_size = tuple(int(s) for s in teacher.network.img_size)
    k = int(cfg["out_dim"])
    rows = {"sinkhorn_entropy": [], "centred_entropy": [], "centred_batch_entropy": [], "top1_unique": []}
    for b in range(batches):
        views = make_views(images, 12345, 10**6 + b, {**cfg, "batch_size": batch_size}, img_size, spec.normalization)
        t = teacher(views[:int(cfg["n_global"])])
        rows["sinkhorn_entropy"].append(float(_entropy(sinkhorn_targets(t, float(cfg["teacher_temp"]),
                                                                         int(cfg["sinkhorn_iters"]))).mean()))
        p = F.softmax((t - t.mean(0, keepdim=True)) / 0.04, dim=-1)
        rows["centred_entropy"].append(float(_entropy(p).mean()))
        rows["centred_batch_entropy"].append(float(_entropy(p.mean(0))))
        rows["top1_unique"].append(int(t.argmax(-1).unique().numel()))
    out = {k_: float(np.mean(v)) for k_, v in rows.items()}
    out.update(run=str(run), step=cfg["_step"], log_k=math.log(k), k=k, crops=int(cfg["n_global"]) * batch_size)
    xs = []
    for i in range(12):
        x = normalize(images[i].astype(np.float32)[..., None] / 255.0, spec.normalization)[..., 0]
        c = [(s - w) // 2 for s, w in zip(x.shape, img_size)]
        xs.append(torch.from_numpy(np.ascontiguousarray(x[c[0]:c[0] + img_size[0], c[1]:c[1] + img_size[1],
                                                           c[2]:c[2] + img_size[2]]))[None, None])
    x = torch.cat(xs)
    torch.manual_seed(0)
    fresh = build_network(spec).eval()
    for name, net in (("cls_cosine", teacher.network), ("cls_cosine_random_init", fresh)):
        f = F.normalize(encode_cls(net.encoder, x), dim=1)
        s = (f @ f.T)[~torch.eye(12, dtype=torch.bool)]
        out[name] = {"mean": float(s.mean()), "min": float(s.min())}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="train-dino run folders (with config.json and ckpt.pt)")
    p.add_argument("--bank", required=True, help="a synthetic bank (.npz) to draw scans from")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON results file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    images, _, _ = load_bank(args.bank)
    res = [diagnose(Path(r), images) for r in args.runs]
    for r in res:
        print(json.dumps(r))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
