"""Does the promptable model segment what it is shown, or draw a blob of one size? Measured on fresh draws
of its own training distribution (``training.prompt_data.sample``, first click only, no previous mask).

For each kind of training object (synthetic shapes pasted into real crops, label-map structures, SLIC
supervoxels) this draws ``--n`` samples with a fixed seed (the training's seeds are different), runs the
network once per sample and reports the mean Dice and the Spearman rank correlation between the object's
true size and the predicted mask's size (voxels). A model that follows the image gets a correlation near 1;
a model that draws the same blob whatever the object gets one near 0. Cheap (a minute on 2 cores, after the
objects are built), so it is the first check of a training run, before ``bench_prompt.py``.

    python benchmarks/prompt_fit.py --data-dir ../shared/data [--model SPEC.json] [--n 16] [--out fit.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from napari_vit3d.prompt import load_prompt_model  # noqa: E402
from napari_vit3d.training import prompt_data as P  # noqa: E402

KINDS = {"synthetic": (0, 0, 1), "structure": (1, 0, 0), "supervoxel": (0, 1, 0)}


def fit(network, sources, n: int, seed: int = 123, plain: float = 0.0, click_encoding=None) -> dict:
    """Per kind of object: mean Dice and size rank correlation on ``n`` fresh draws (inputs encoded with the
    model's ``click_encoding``, as its training and its session do)."""
    out = {}
    for kind, pk in KINDS.items():
        cfg = P.PromptSampleConfig(p_kind=pk, p_previous=0.0, p_plain=plain if kind == "synthetic" else 0.0,
                                   click_encoding=click_encoding)
        rng = np.random.default_rng(seed)
        dices, true_n, pred_n = [], [], []
        for _ in range(int(n)):
            x, y = P.sample(rng, sources, cfg)
            with torch.no_grad():
                p = torch.softmax(network(torch.from_numpy(x)[None]).float(), 1)[0, 1].numpy() > 0.5
            t = y > 0
            dices.append(float(2 * (p & t).sum() / max(int(p.sum() + t.sum()), 1)))
            true_n.append(int(t.sum()))
            pred_n.append(int(p.sum()))
        rho = spearmanr(true_n, pred_n).statistic if len(set(pred_n)) > 1 else 0.0
        out[kind] = {"dice_mean": round(float(np.mean(dices)), 3), "size_spearman": round(float(rho), 3),
                     "true_voxels": true_n, "pred_voxels": pred_n}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--model", action="append", default=None,
                    help="a promptable model (bundled name or spec .json); repeat to compare several on the same draws")
    ap.add_argument("--n", type=int, default=16, help="samples per kind")
    ap.add_argument("--plain", type=float, default=0.0, help="share of synthetic shapes planted in plain noise")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    sources = P.build_sources(a.data_dir)
    res = []
    for name in a.model or [None]:
        model = load_prompt_model(name)
        r1 = {"model": model.spec.name, "spec": name, "n": a.n,
              "kinds": fit(model.network.eval(), sources, a.n, plain=a.plain,
                           click_encoding=model.spec.extra.get("click_encoding"))}
        res.append(r1)
        for kind, r in r1["kinds"].items():
            print(f"{model.spec.name:28s} {kind:11s} Dice {r['dice_mean']:.3f}  size rank correlation "
                  f"{r['size_spearman']:+.2f}  true {min(r['true_voxels'])}-{max(r['true_voxels'])} voxels, "
                  f"predicted {min(r['pred_voxels'])}-{max(r['pred_voxels'])}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
