"""What an autosave costs: the GUI thread's copy of the labels and the background write of the recovery file.

The Review widget autosaves a labels layer after each edit (``gui.autosave``): the GUI thread only copies
the labels; compressing and writing the recovery file (``gui.recovery.save_recovery``) run in a worker.
Labels of Colin27's size (181×217×181 uint8, 4 labels in 8-voxel runs, like a segmentation).

Run::

    .venv/bin/python benchmarks/bench_autosave.py [--repeats N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_autosave_"))
    os.environ["NAPARI_VIT3D_RECOVERY_DIR"] = str(tmp)
    from napari_vit3d.gui import recovery

    rng = np.random.default_rng(0)
    labels = np.repeat(rng.integers(0, 4, size=(181, 217, 181 // 8 + 1), dtype=np.uint8), 8, axis=2)[..., :181]
    labels = np.ascontiguousarray(labels)
    copies, writes = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        snap = np.array(labels, copy=True)
        copies.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        path = recovery.save_recovery("cd" * 32, snap, {"scan": "colin27"}, "c" * 32)
        writes.append((time.perf_counter() - t0) * 1000)
    back, _ = recovery.read_recovery_file(path)
    if not np.array_equal(back, labels):
        print("the recovery file does not hold the labels", file=sys.stderr)
        return 1
    row = {"labels": "181x217x181 uint8", "copy_ms_median": round(float(np.median(copies)), 2),
           "write_ms_median": round(float(np.median(writes)), 1), "file_kb": round(path.stat().st_size / 1024, 1),
           "repeats": args.repeats, "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    print("| labels | GUI-thread copy (ms, median) | background write (ms, median) | file (kB) |")
    print("|---|---|---|---|")
    print(f"| {row['labels']} | {row['copy_ms_median']} | {row['write_ms_median']} | {row['file_kb']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
