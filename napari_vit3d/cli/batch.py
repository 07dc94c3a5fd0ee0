"""``napari-vit3d batch``: segment and measure a cohort on a Dask cluster (a LocalCluster by default).

::

    napari-vit3d batch INPUT… -o OUTDIR [--list FILE] [--model NAME] [--scheduler tcp://HOST:PORT]
                       [--workers N] [--threads-per-worker T] [--explain METHOD …] [--save-uncertainty]
                       [--overwrite]

Writes ``OUTDIR/<stem>_labels.nii.gz`` per scan (on the scan's own grid) and ``OUTDIR/summary.csv``
(one row per input). Exit codes: 0 every scan ok or skipped, 3 some failed (their rows say why),
2 a user error before any work, 130 cancelled (the finished rows are kept).
"""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("batch", help="segment a cohort of scans on a Dask cluster; one summary table",
                              description="Segment every INPUT (scans, or folders searched for .nii/.nii.gz) on a "
                                          "Dask cluster and write labels + summary.csv to OUTDIR. Exit codes: 0 all ok "
                                          "or skipped, 3 some failed, 2 user error, 130 cancelled.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="scans or folders")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    p.add_argument("--list", metavar="FILE", help="a text file (one path per line) or CSV (an 'input' column)")
    p.add_argument("--model", metavar="MODEL", help="model name, spec .json or checkpoint (default: bundled default)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 "
                                                          "(default: a LocalCluster on this machine)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="LocalCluster worker processes (default: cores / threads-per-worker)")
    p.add_argument("--threads-per-worker", type=int, default=1, metavar="T",
                   help="threads per LocalCluster worker, and torch CPU threads per worker (default 1)")
    p.add_argument("--explain", nargs="+", default=[], metavar="METHOD",
                   choices=("attention", "erf", "rollout", "dino-heads"),
                   help="also write explanation maps at the centroid of each scan's labels")
    p.add_argument("--save-uncertainty", action="store_true", help="also write <stem>_uncertainty.nii.gz")
    p.add_argument("--multiscale", action="store_true",
                   help="multi-scale test-time augmentation for every scan (about 2-3x the time; see segment)")
    p.add_argument("--no-postprocess", action="store_true",
                   help="the network's labels without the post-processing the model's spec asks for (see segment)")
    p.add_argument("--overwrite", action="store_true", help="redo every scan, even those whose outputs are up to date")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _check_bundle_trust(model) -> None:
    """Batch workers load the model in their own processes: a MONAI bundle must be trusted on record first."""
    from ..models.registry import default_model_name, get_spec
    from ..models.trust import require_trust

    spec = get_spec(model or default_model_name())
    if spec.architecture == "monai_bundle" and spec.root:
        require_trust(spec.root, how=f"record trust with napari-vit3d models --add {spec.root} --trust-bundle (batch "
                                     "workers load the model in their own processes)")


def run(args) -> int:
    from ..batch import EXIT_SOME_FAILED, run_batch

    _check_bundle_trust(args.model)  # before a cluster starts: nothing of an untrusted bundle runs anywhere

    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=None, unit="scan", file=sys.stderr, desc="batch", dynamic_ncols=True)

    def progress(done, total, failed):
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.set_postfix(failed=failed)
            bar.refresh()

    try:
        rows = run_batch(args.inputs, args.out, model=args.model, list_file=args.list, scheduler=args.scheduler,
                         workers=args.workers, threads_per_worker=args.threads_per_worker, explain=args.explain,
                         save_uncertainty=args.save_uncertainty, overwrite=args.overwrite, progress=progress,
                         multiscale=args.multiscale, postprocess=not args.no_postprocess)
    finally:
        if bar is not None:
            bar.close()
    n_ok = sum(r["status"] == "ok" for r in rows)
    n_skip = sum(r["status"] == "skipped" for r in rows)
    bad = [r for r in rows if r["status"] == "failed"]
    print(f"{n_ok} ok, {n_skip} skipped, {len(bad)} failed; summary: {args.out}/summary.csv", file=sys.stderr)
    for r in bad:
        print(f"failed: {r['input']}: {r['message']}", file=sys.stderr)
    return EXIT_SOME_FAILED if bad else 0
