"""Review cost on the full Colin27 grid (181 × 217 × 181, 1 mm): metrics, uncertainty, regions, resampling.

Inputs (all built from the bundled samples, deterministic):

* reference: the bundled Colin27 brain mask (label 1);
* prediction: the same mask eroded by one voxel and shifted by 2 voxels along the first axis (an
  imperfect segmentation: Dice about 0.97, surface distances of a few mm);
* probabilities: two classes, p(brain) = the prediction smoothed by a gaussian (σ 2 voxels), float32;
* uniform noise in [0, 1) on the same grid (seed 0): the worst case for ``uncertain_regions``
  (tens of thousands of tiny regions above 0.5).

Rows (median wall time of ``--repeats`` runs, after one untimed warm-up of the same call):

* ``evaluate``: ``review.metrics.evaluate(pred, ref)``, one label (Dice, HD95, MSD, recall, precision, ΔV);
* ``evaluate + AUC-PR``: the same with the 2-class probabilities (adds AUC-PR over every voxel);
* ``softmax_entropy``: normalised entropy of the 2-class probabilities;
* ``uncertain_regions``: on the entropy (threshold 0.5, at least 20 voxels, the GUI's settings, top 50);
  and on the uniform noise (threshold 0.5), every region and the top 50;
* ``resample_to_grid``: the reference onto the same grid shifted by half a voxel, nearest neighbour
  (labels) and linear (probabilities, 2 channels).

Run: ``.venv/bin/python benchmarks/bench_review.py [--repeats 3] [--only evaluate,entropy,...] [--json out.json]``.
The Markdown table it prints is the one in ``docs/performance.md`` (section "Review").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_vit3d.io import read_nifti
from napari_vit3d.io.resample import resample_to_grid
from napari_vit3d.io.samples import sample_path
from napari_vit3d.review.metrics import evaluate
from napari_vit3d.review.uncertainty import softmax_entropy, uncertain_regions

try:  # run as a script (benchmarks/ on sys.path) or as benchmarks.<name>
    from _machine import cpu_name, load_average
except ImportError:  # pragma: no cover
    from ._machine import cpu_name, load_average


def inputs() -> dict:
    ref = read_nifti(sample_path("colin27_brainmask"), as_labels=True)
    mask = ref.data > 0
    pred_mask = np.roll(ndimage.binary_erosion(mask), 2, axis=0)
    pred = ref.with_data(pred_mask.astype(np.uint8), name="prediction")
    p1 = np.clip(ndimage.gaussian_filter(pred_mask.astype(np.float32), 2.0), 0.0, 1.0)
    probs = ref.with_data(np.stack([1.0 - p1, p1], axis=-1).astype(np.float32), name="probabilities",
                          metadata={"kind": "probabilities", "classes": [0, 1]})
    noise = ref.with_data(np.random.default_rng(0).random(ref.spatial_shape, dtype=np.float32), name="noise")
    shifted = ref.affine.copy()
    shifted[:3, 3] += ref.affine[:3, :3] @ np.full(3, 0.5)
    return {"ref": ref, "pred": pred, "probs": probs, "noise": noise, "shifted_affine": shifted}


def cases(d: dict) -> dict:
    entropy = softmax_entropy(d["probs"])
    shape = d["ref"].spatial_shape
    return {
        "evaluate": ("evaluate, 1 label", lambda: evaluate(d["pred"], d["ref"]), None),
        "evaluate_auc": ("evaluate + AUC-PR, 2-class probabilities",
                         lambda: evaluate(d["pred"], d["ref"], probabilities=d["probs"]), None),
        "entropy": ("softmax_entropy, 2 classes", lambda: softmax_entropy(d["probs"]), None),
        "regions_entropy": ("uncertain_regions on the entropy (> 0.5, ≥ 20 voxels, top 50)",
                            lambda: uncertain_regions(entropy, 0.5, min_voxels=20, max_regions=50), len),
        "regions_noise_all": ("uncertain_regions on uniform noise (> 0.5), every region",
                              lambda: uncertain_regions(d["noise"], 0.5), len),
        "regions_noise_top50": ("uncertain_regions on uniform noise (> 0.5), top 50",
                                lambda: uncertain_regions(d["noise"], 0.5, max_regions=50), len),
        "resample_nearest": ("resample_to_grid, labels, nearest (half-voxel shift)",
                             lambda: resample_to_grid(d["ref"], d["shifted_affine"], shape, order=0), None),
        "resample_linear": ("resample_to_grid, 2-class probabilities, linear (half-voxel shift)",
                            lambda: resample_to_grid(d["probs"], d["shifted_affine"], shape, order=1), None),
    }


def run_case(fn, repeats: int) -> tuple[list[float], object]:
    out = fn()  # warm-up (imports, MONAI metric set-up), untimed
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def markdown(rows: list[dict], shape) -> str:
    lines = ["| what | grid | median (s) | runs (s) | result |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['what']} | {'×'.join(map(str, shape))} | {r['median_s']:.2f} "
                     f"| {', '.join(f'{v:.2f}' for v in r['runs_s'])} | {r['result']} |")
    return "\n".join(lines)


def describe(name: str, out, counter) -> str:
    if counter is not None:
        return f"{counter(out)} regions"
    if name.startswith("evaluate"):
        e = out["labels"]["1"]
        txt = f"Dice {e['dice']:.4f}, HD95 {e['hd95']:.2f} mm"
        return txt + (f", AUC-PR {e['auc_pr']:.4f}" if e.get("auc_pr") is not None else "")
    return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per case (after one warm-up)")
    ap.add_argument("--only", help="comma-separated case names (default: all): evaluate, evaluate_auc, entropy, "
                                   "regions_entropy, regions_noise_all, regions_noise_top50, resample_nearest, "
                                   "resample_linear")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    d = inputs()
    todo = cases(d)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(todo)
    unknown = [n for n in names if n not in todo]
    if unknown:
        ap.error(f"unknown case(s): {', '.join(unknown)}")
    rows = []
    for name in names:
        what, fn, counter = todo[name]
        times, out = run_case(fn, args.repeats)
        row = {"case": name, "what": what, "median_s": round(statistics.median(times), 3),
               "runs_s": [round(t, 3) for t in times], "result": describe(name, out, counter)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    load = load_average()
    machine = (f"{cpu_name()}, {os.cpu_count()} cores, numpy {np.__version__}, Python {platform.python_version()}, "
               f"load average at the end {load}")
    shape = d["ref"].spatial_shape
    print(f"\nmachine: {machine}\n")
    print(markdown(rows, shape))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "shape": list(shape), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
