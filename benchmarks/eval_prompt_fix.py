"""Fixing the default model's brain with clicks: the promptable model against a brush, click by click.

The user's case with the default model's real errors (not planted pieces): the reference is Colin27's
intracranial brain (``training.synthesis.head_label_map_1mm`` from ``ch2bet``, the default model's
definition), the start is the default model's brain on the same scan. Each method gets its own simulated
user: each click at the voxel farthest from the border of the largest error component (positive where
brain is missing, negative where it is extra; ``prompt.clicks.next_click``). Methods: the promptable model
(*Correct the selected label*: ``PromptSession.set_previous`` then one click at a time), the same with the
large-mask rule off (``model_whole``: the crop holding the whole mask, no reach), and a brush dab
(a ball of ``--brush-mm`` added or erased at the click). Reported: Dice and the error volume (mL) after
0, 1, … ``--clicks`` clicks, and seconds per click.

Colin27 is a training source of both models: this measures the correction rule on real error shapes,
not generalisation.

    python benchmarks/eval_prompt_fix.py --data-dir ../shared/data --clicks 10 --out /tmp/prompt_fix.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / max(a.sum() + b.sum(), 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--brush-mm", type=float, default=6.0)
    ap.add_argument("--model", default=None, help="promptable model: a bundled name or a spec .json")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from napari_vit3d.inference import segment
    from napari_vit3d.io.geometry import voxel_spacing
    from napari_vit3d.io.volume import Volume
    from napari_vit3d.prompt import PromptSession, load_prompt_model
    from napari_vit3d.prompt.clicks import next_click
    from napari_vit3d.training import synthesis as S

    img = nib.load(str(args.data_dir / S.COLIN_T1))
    t1 = np.asarray(img.dataobj, np.float32)
    bet = np.asarray(nib.load(str(args.data_dir / S.COLIN_BET)).dataobj, np.float32)
    _, truth = S.head_label_map_1mm(t1, bet)
    truth = truth > 0
    vol = Volume(data=t1, affine=img.affine, name="colin27")
    start = np.asarray(segment(vol, "segformer3d-brain", return_probabilities=False).labels.data) > 0
    sp = voxel_spacing(img.affine)
    vox_ml = float(np.prod(sp)) / 1000
    model = load_prompt_model(args.model)
    g = np.indices(truth.shape).astype(np.float32)
    results = {}
    for method in ("model", "model_whole", "brush"):
        mask = start.copy()
        session = None
        if method.startswith("model"):
            session = PromptSession(model, vol)
            session.set_previous(mask)
            if method == "model_whole":
                session.large_edit = lambda: False
        rows = [{"clicks": 0, "dice": _dice(mask, truth), "error_ml": float(np.sum(mask != truth) * vox_ml)}]
        for k in range(1, args.clicks + 1):
            nc = next_click(truth, mask, sp)
            if nc is None:
                break
            vox, positive = nc
            t0 = time.perf_counter()
            if session is not None:
                session.add_point(voxel=vox, positive=positive)
                mask = np.asarray(session.predict().mask.data) > 0
            else:
                r = args.brush_mm / sp
                dab = sum(((g[i] - vox[i]) / r[i]) ** 2 for i in range(3)) <= 1
                mask = (mask | dab) if positive else (mask & ~dab)
            sec = time.perf_counter() - t0
            rows.append({"clicks": k, "positive": positive, "dice": _dice(mask, truth),
                         "error_ml": float(np.sum(mask != truth) * vox_ml), "seconds": round(sec, 3)})
            print(method, json.dumps(rows[-1]), flush=True)
        results[method] = rows
    out = ["| clicks | " + " | ".join(f"{m}: Dice · error mL" for m in results) + " |",
           "|---|" + "---|" * len(results)]
    for k in range(args.clicks + 1):
        cells = []
        for m, rows in results.items():
            r = rows[min(k, len(rows) - 1)]
            cells.append(f"{r['dice']:.4f} · {r['error_ml']:.1f}")
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    md = "\n".join(out)
    print(md)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                        "table": md}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
