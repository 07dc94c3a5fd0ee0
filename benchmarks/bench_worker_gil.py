"""How long does ``inference.segment`` keep Python's GIL in one stretch? A thread heartbeat.

A plain Python thread sleeps 5 ms in a loop and records when it wakes; ``segment`` runs in the main
thread (as it runs in the GUI's worker thread). A long gap between two wake-ups is a stretch during
which the segmenting thread held the GIL (one long numpy/SciPy call): in the GUI the event loop could
not run then either. After each gap of ``--report`` ms or more the heartbeat records the segmenting
thread's current line (the call that just returned), so the stalls can be located.

Columns printed: ``max gap`` and ``p95 gap`` (ms), gaps ≥ 100 ms, the run's wall time, and the
largest gaps with the engine line they happened at.

Run::

    .venv/bin/python benchmarks/bench_worker_gil.py [--model NAME] [--repeats 2] [--uncertainty] \
        [--via-layer] [--cold [--preload]]

The first run warms up (model load, weights hash); with ``--repeats N`` N further runs are measured
(no forward-pass cache: every run preprocesses, runs the windows and maps back).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import traceback

import numpy as np


class GilHeartbeat:
    def __init__(self, target_thread: int, period_s: float = 0.005, report_ms: float = 50.0):
        self.target, self.period, self.report = target_thread, period_s, report_ms / 1000
        self.times: list[float] = []
        self.where: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        last = time.perf_counter()
        self.times.append(last)
        while not self._stop.is_set():
            time.sleep(self.period)
            now = time.perf_counter()
            self.times.append(now)
            if now - last - self.period >= self.report:
                frame = sys._current_frames().get(self.target)
                line = "?"
                if frame is not None:
                    stack = [f for f in traceback.extract_stack(frame) if "napari_vit3d" in f.filename]
                    if stack:
                        f = stack[-1]
                        line = f"{f.filename.split('napari_vit3d/')[-1]}:{f.lineno} {f.name}: {f.line}"
                self.where.append((now - last, line))
            last = now

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        gaps = np.diff(np.asarray(self.times)) * 1000
        return {"max_ms": float(gaps.max()), "p95_ms": float(np.percentile(gaps, 95)),
                "n_100": int((gaps >= 100).sum()), "where": sorted(self.where, reverse=True)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="segformer3d-brain")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--uncertainty", action="store_true", help="also softmax_entropy + uncertain_regions (GUI option)")
    ap.add_argument("--via-layer", action="store_true",
                    help="segment the scan as the GUI gets it back from its napari layer data (display order undone)")
    ap.add_argument("--cold", action="store_true", help="measure the first run too (model load, weights hash)")
    ap.add_argument("--preload", action="store_true",
                    help="with --cold: inference.preload() first, unmeasured (what the Segment widget does at docking)")
    ap.add_argument("--json", help="write the results here as JSON")
    ap.add_argument("--report", type=float, default=40.0, help="locate gaps of at least this many ms")
    args = ap.parse_args(argv)

    from napari_vit3d.inference import segment
    from napari_vit3d.io import read_nifti
    from napari_vit3d.io.samples import sample_path
    from napari_vit3d.models import load_model

    if args.preload:
        from napari_vit3d.inference import preload

        preload()
    hb0 = GilHeartbeat(threading.get_ident(), report_ms=args.report).start() if args.cold else None
    scan = read_nifti(sample_path("colin27_t1"))
    if args.via_layer:
        from napari_vit3d.io.layers import volume_from_layer_data, volume_to_layer_data

        data, kwargs, _ = volume_to_layer_data(scan)[0]
        scan = volume_from_layer_data(data, kwargs["metadata"])
    model = load_model(args.model, "cpu")

    def run():
        res = segment(scan, model, device="cpu", use_cache=False)
        if args.uncertainty:
            from napari_vit3d.review.uncertainty import softmax_entropy, uncertain_regions

            unc = softmax_entropy(res.probabilities)
            uncertain_regions(unc, threshold=0.5, min_voxels=20, max_regions=50)
        return res

    rows = []
    t = time.perf_counter()
    run()  # warm-up
    if hb0 is not None:
        out = hb0.stop()
        rows.append({"run": "cold (read, load, first run)", "seconds": round(time.perf_counter() - t, 2), **_row(out)})
        print(f"cold (read, load, first run): {time.perf_counter() - t:.2f} s, max gap {out['max_ms']:.1f} ms, "
              f"p95 gap {out['p95_ms']:.1f} ms, gaps >= 100 ms: {out['n_100']}")
        for gap, line in out["where"][:8]:
            print(f"   {gap * 1000:7.1f} ms  {line}")
    for r in range(args.repeats):
        hb = GilHeartbeat(threading.get_ident(), report_ms=args.report).start()
        t = time.perf_counter()
        run()
        wall = time.perf_counter() - t
        out = hb.stop()
        print(f"run {r + 1}: {wall:.2f} s, max gap {out['max_ms']:.1f} ms, p95 gap {out['p95_ms']:.1f} ms, "
              f"gaps >= 100 ms: {out['n_100']}")
        for gap, line in out["where"][:8]:
            print(f"   {gap * 1000:7.1f} ms  {line}")
        rows.append({"run": f"run {r + 1}", "seconds": round(wall, 2), **_row(out)})
    print("\n| run | seconds | max gap (ms) | p95 gap (ms) | gaps ≥ 100 ms | largest gap at |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['run']} | {row['seconds']} | {row['max_gap_ms']} | {row['p95_gap_ms']} | "
              f"{row['gaps_over_100ms']} | {row['largest_at']} |")
    if args.json:
        import json
        import os
        import platform

        meta = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "model": args.model,
                "cpus": os.cpu_count(), "load_average": os.getloadavg(), "options": vars(args)}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


def _row(out: dict) -> dict:
    return {"max_gap_ms": round(out["max_ms"], 1), "p95_gap_ms": round(out["p95_ms"], 1),
            "gaps_over_100ms": out["n_100"], "largest_at": out["where"][0][1] if out["where"] else "–"}


if __name__ == "__main__":
    main()
