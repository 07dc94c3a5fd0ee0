"""One corrective click on a whole-brain mask: the promptable model against a brush dab.

The user's case: the default model's brain is wrong in one place (a piece of cortex missing, or a piece of
the tissue around the brain included) and they click there once. Protocol, on a scan (default: the bundled
Colin27 sample): ``truth`` = the default model's brain mask on it; for each trial a ball (radius ``--radius``
voxels) centred on a random voxel of the mask's border is either cut out of the truth (a *missing* piece:
one positive click at its deepest voxel) or added to it (an *extra* piece, the part of the ball outside the
brain: one negative click at its deepest voxel). The corrected mask is scored against the truth:

* ``fixed``: the piece's voxels the click put right (share of the piece);
* ``collateral``: voxels outside the piece that the click changed (all of them are errors);
* Dice before / after.

Pieces (``--shape``): ``ball`` cuts or adds a ball of ``--radius`` voxels centred on a border voxel (a lump
of cortex missing, a lump of tissue glued on); ``rim`` a layer 3 voxels deep along the border within
``--radius`` × 1.7 voxels of a border voxel (a border drawn too tight or too loose over a patch).

Methods on the same clicks: the promptable model with the rule in use (a given mask wider than the second
level's crop is corrected on the crop holding it, within the click's reach: ``PromptSession.reach_mm``),
the same without the reach (``large_edit`` off), and a brush: a ball of ``--brush-mm`` around the click
added (positive) or erased (negative).

    python benchmarks/eval_prompt_correct.py --trials 8 --out /tmp/prompt_correct.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage


def _ball(shape, centre, radius_vox: float) -> np.ndarray:
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((a - c) ** 2 for a, c in zip(g, centre)) <= radius_vox ** 2


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / max(a.sum() + b.sum(), 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", default=None, help="scan (default: the bundled Colin27 T1)")
    ap.add_argument("--trials", type=int, default=8, help="trials per kind (missing, extra)")
    ap.add_argument("--radius", type=float, default=12.0, help="piece ball radius, voxels")
    ap.add_argument("--shape", choices=("ball", "rim"), default="ball", help="the pieces' shape")
    ap.add_argument("--brush-mm", type=float, default=6.0, help="brush ball radius, mm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="promptable model: a bundled name or a spec .json (default: bundled)")
    ap.add_argument("--out", default=None, help="JSON results file")
    args = ap.parse_args(argv)

    from napari_vit3d.inference import segment
    from napari_vit3d.io import read_scan
    from napari_vit3d.io.samples import sample_path
    from napari_vit3d.prompt import PromptSession, load_prompt_model

    vol = read_scan(args.scan or sample_path("colin27_t1.nii.gz"))
    truth = np.asarray(segment(vol, "segformer3d-brain", return_probabilities=False).labels.data) > 0
    model = load_prompt_model(args.model)
    aff = np.asarray(vol.affine, float)
    vox_mm = float(np.cbrt(abs(np.linalg.det(aff[:3, :3]))))
    border = np.argwhere(truth & ~ndimage.binary_erosion(truth, iterations=2))
    rng = np.random.default_rng(args.seed)
    rows = []
    for kind in ("missing", "extra"):
        for t in range(args.trials):
            centre = border[rng.integers(len(border))]
            if args.shape == "ball":
                ball = _ball(truth.shape, centre, args.radius)
                piece = (truth & ball) if kind == "missing" else (ball & ~truth)
            else:
                patch = _ball(truth.shape, centre, 1.7 * args.radius)
                piece = patch & ((truth & ~ndimage.binary_erosion(truth, iterations=3)) if kind == "missing"
                                 else (ndimage.binary_dilation(truth, iterations=3) & ~truth))
            previous = (truth & ~piece) if kind == "missing" else (truth | piece)
            depth = ndimage.distance_transform_edt(piece)
            click = np.array(np.unravel_index(int(np.argmax(depth)), depth.shape))
            world = aff[:3, :3] @ click + aff[:3, 3]
            positive = kind == "missing"
            row = {"kind": kind, "trial": t, "piece_voxels": int(piece.sum()), "dice_before": _dice(previous, truth)}
            for method in ("model", "model_no_reach", "brush"):
                t0 = time.perf_counter()
                if method == "brush":
                    dab = _ball(truth.shape, click, args.brush_mm / vox_mm)
                    new = (previous | dab) if positive else (previous & ~dab)
                else:
                    s = PromptSession(model, vol)
                    if method == "model_no_reach":
                        s.large_edit = lambda: False
                    s.set_previous(previous)
                    s.add_point(world=world, positive=positive)
                    new = np.asarray(s.predict().mask.data) > 0
                sec = time.perf_counter() - t0
                changed = new != previous
                row[method] = {"fixed": float(np.sum(changed & piece) / max(piece.sum(), 1)),
                               "collateral": int(np.sum(changed & ~piece)), "dice_after": _dice(new, truth),
                               "seconds": round(sec, 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    def table():
        out = ["| piece | method | fixed (mean) | collateral voxels (median / max) | Dice before → after (mean) "
               "| better than before |", "|---|---|---|---|---|---|"]
        for kind in ("missing", "extra"):
            sub = [r for r in rows if r["kind"] == kind]
            for method in ("model", "model_no_reach", "brush"):
                fixed = np.mean([r[method]["fixed"] for r in sub])
                col = [r[method]["collateral"] for r in sub]
                before = np.mean([r["dice_before"] for r in sub])
                after = np.mean([r[method]["dice_after"] for r in sub])
                better = sum(r[method]["dice_after"] > r["dice_before"] for r in sub)
                out.append(f"| {kind} | {method} | {fixed:.2f} | {int(np.median(col))} / {max(col)} "
                           f"| {before:.4f} → {after:.4f} | {better} of {len(sub)} |")
        return "\n".join(out)

    md = table()
    print(md)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "table": md}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
