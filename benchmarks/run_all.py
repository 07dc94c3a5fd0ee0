"""Run every ``benchmarks/bench_*.py`` one after the other (never in parallel: they time the CPU).

Run: ``.venv/bin/python benchmarks/run_all.py [--only inference,explain] [--out-dir DIR]``. Each benchmark
runs in its own Python process with ``--json DIR/<name>.json`` and its stdout (its Markdown table) is
shown as it comes. The exit code is non-zero if any benchmark failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated names (bench_<name>.py), default: all")
    ap.add_argument("--out-dir", default=str(HERE / "results"), help="where each benchmark's JSON goes")
    args = ap.parse_args(argv)
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        scripts = [s for s in scripts if s.stem[len("bench_"):] in wanted]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for script in scripts:
        name = script.stem[len("bench_"):]
        print(f"=== {script.name}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script), "--json", str(out / f"{name}.json")])
        print(f"=== {script.name}: exit {rc} after {time.perf_counter() - t:.0f} s\n", flush=True)
        if rc:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
