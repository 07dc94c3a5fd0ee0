"""Cohort throughput: a shell loop of ``napari-vit3d segment`` against ``napari-vit3d batch``.

Scans: ``--n`` copies of the bundled Colin27 sample (1 mm, 181×217×181), each written as its own
file with a different voxel order (so no cache or file-name trick helps). Measured on this machine:

* **shell loop**: one ``napari-vit3d segment`` process per scan (model loaded every time);
* **batch, 1 worker** and **batch, 2 workers** (LocalCluster, 1 thread each): the model is loaded once
  per worker.

Reported: wall seconds, scans per minute, the cost per scan beyond the model forward (batch wall ÷
scans − the mean forward time measured in-process), and peak RSS per worker process (psutil,
sampled every 0.2 s).

    python benchmarks/bench_batch.py --n 6 --out benchmarks/results/batch.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_scans(folder: Path, n: int) -> list[Path]:
    from napari_vit3d.io.samples import sample_path

    img = nib.load(str(sample_path("colin27_t1.nii.gz")))
    orients = [np.array([[0, 1], [1, 1], [2, 1]]), np.array([[0, -1], [1, -1], [2, 1]]),
               np.array([[1, 1], [0, -1], [2, 1]])]
    out = []
    for i in range(n):
        p = folder / f"scan{i:03d}.nii.gz"
        nib.save(img.as_reoriented(orients[i % len(orients)]), str(p))
        out.append(p)
    return out


def peak_rss_of_children(stop: threading.Event, out: dict) -> None:
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        for c in me.children(recursive=True):
            try:
                rss = c.memory_info().rss
            except psutil.Error:
                continue
            out[c.pid] = max(out.get(c.pid, 0), rss)
        time.sleep(0.2)


def timed(fn) -> tuple[float, dict]:
    stop, rss = threading.Event(), {}
    t = threading.Thread(target=peak_rss_of_children, args=(stop, rss), daemon=True)
    t.start()
    t0 = time.time()
    fn()
    wall = time.time() - t0
    stop.set()
    t.join()
    return wall, rss


def forward_seconds(scan: Path) -> float:
    import torch

    from napari_vit3d.inference import segment
    from napari_vit3d.io.nifti import read_nifti
    from napari_vit3d.models import load_model
    from napari_vit3d.models.registry import default_model_name

    torch.set_num_threads(1)
    model = load_model(default_model_name())
    vol = read_nifti(scan)
    segment(vol, model, device="cpu", use_cache=False)
    t0 = time.time()
    segment(vol, model, device="cpu", use_cache=False)
    return time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--out", "--json", dest="out", type=Path, default=None, help="JSON results file")
    args = ap.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        (td / "scans").mkdir()
        scans = make_scans(td / "scans", args.n)
        cli = [sys.executable, "-m", "napari_vit3d.cli"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}

        def loop():
            (td / "loop").mkdir()
            for p in scans:
                subprocess.run(cli + ["segment", str(p), "-o", str(td / "loop" / p.name), "--quiet", "--device", "cpu"],
                               check=True, capture_output=True, env=env)

        wall, rss = timed(loop)
        results["shell loop"] = {"wall_s": round(wall, 1), "scans_per_min": round(60 * args.n / wall, 2),
                                 "peak_rss_mb": round(max(rss.values(), default=0) / 2**20)}
        for w in (1, 2):
            out = td / f"batch{w}"

            def run(w=w, out=out):
                subprocess.run(cli + ["batch", str(td / "scans"), "-o", str(out), "--workers", str(w), "--quiet"],
                               check=True, capture_output=True, env=env)

            wall, rss = timed(run)
            rows = list((out / "summary.csv").read_text().splitlines())[1:]
            peak_rss = sorted(round(v / 2**20) for v in rss.values())[-w - 1:]
            results[f"batch, {w} worker(s)"] = {"wall_s": round(wall, 1), "scans_per_min": round(60 * args.n / wall, 2),
                                                "rows": len(rows), "peak_rss_mb_per_process": peak_rss}
            shutil.rmtree(out)
        fwd = forward_seconds(scans[0])
        results["forward_s_in_process"] = round(fwd, 2)
        for k, v in results.items():
            if isinstance(v, dict) and "wall_s" in v:
                v["beyond_forward_s_per_scan"] = round(v["wall_s"] / args.n - fwd, 2)
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
