"""Drive a batch on Dask: submit one task per scan, collect rows as they finish, write the summary.

Without a ``client`` or ``scheduler`` address a ``distributed.LocalCluster`` is started on this
machine: worker *processes* (one model each), one thread each, as many as the cores allow (or
``workers``); with ``scheduler="tcp://HOST:PORT"`` the user's running cluster is used as it is
(``dask scheduler`` / ``dask worker``, dask-jobqueue, Kubernetes, …). The summary is written after
every finished scan (atomically), so an interrupted batch keeps the rows it finished.
"""

from __future__ import annotations

import csv
import io
import os
import statistics
from pathlib import Path

from ..errors import Cancelled, ModelError, VolumeError
from .inputs import find_inputs
from .task import output_paths, process_scan

EXIT_SOME_FAILED = 3
BASE_COLUMNS = ["input", "status", "output", "seconds", "worker", "message"]


def _require_distributed():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ModelError("napari-vit3d batch needs dask.distributed: pip install 'napari-vit3d[cluster]' "
                         "(or pip install distributed)") from None


def _model_ref_and_hash(model) -> tuple[str, str | None, list, dict]:
    from ..models.checkpoints import file_sha256
    from ..models.registry import default_model_name, get_spec

    ref = str(model) if model else default_model_name()
    spec = get_spec(ref)
    wp = spec.weights_path
    return (ref, (file_sha256(wp) if wp is not None and Path(wp).is_file() else None), list(spec.labels),
            dict(spec.postprocess))


def qc_flags(rows: list[dict], *, tolerance: float = 0.25, max_uncertainty: float = 0.35) -> None:
    """Add a ``qc`` column: ``volume_outlier`` when the labelled volume is more than ``tolerance`` (25 %)
    from the cohort's median (ok/skipped rows, at least 3), ``uncertain`` when the mean normalised
    entropy inside the labels exceeds ``max_uncertainty``, ``empty`` when nothing was labelled."""
    done = [r for r in rows if r["status"] in ("ok", "skipped")]
    totals = {id(r): sum((r.get("volumes_ml") or {}).values()) for r in done}
    med = statistics.median(totals.values()) if len(done) >= 3 else None
    for r in rows:
        flags = []
        if r["status"] in ("ok", "skipped"):
            t = totals[id(r)]
            if t <= 0:
                flags.append("empty")
            elif med and abs(t - med) > tolerance * med:
                flags.append("volume_outlier")
            if (r.get("mean_uncertainty") or 0) > max_uncertainty:
                flags.append("uncertain")
        r["qc"] = ";".join(flags) if flags else ("ok" if r["status"] in ("ok", "skipped") else "")


def summary_table(rows: list[dict], label_names: list[str]) -> tuple[list[str], list[list]]:
    cols = BASE_COLUMNS + [f"{n} mL" for n in label_names] + ["mean_uncertainty", "qc"]
    table = []
    for r in rows:
        vols = r.get("volumes_ml") or {}
        table.append([r.get(c, "") for c in BASE_COLUMNS] + [vols.get(n, "") for n in label_names]
                     + [r.get("mean_uncertainty", ""), r.get("qc", "")])
    return cols, table


def write_summary(out_dir: Path, rows: list[dict], label_names: list[str]) -> Path:
    from ..io.atomic import write_text_atomic

    qc_flags(rows)
    cols, table = summary_table(rows, label_names)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    w.writerows(table)
    path = write_text_atomic(out_dir / "summary.csv", buf.getvalue())
    try:
        import pandas as pd
        import pyarrow  # noqa: F401
    except ImportError:
        return path
    tmp = out_dir / ".summary.parquet.tmp"
    pd.DataFrame(table, columns=cols).astype({"seconds": float}).to_parquet(tmp)
    os.replace(tmp, out_dir / "summary.parquet")
    return path


def _local_cluster(workers: int | None, threads: int):
    from distributed import LocalCluster

    cores = os.cpu_count() or 1
    n = int(workers) if workers else max(1, cores // max(1, threads))
    return LocalCluster(n_workers=n, threads_per_worker=int(threads), processes=True, dashboard_address=None,
                        silence_logs=40)


def run_batch(inputs, out_dir, *, model=None, list_file=None, client=None, scheduler: str | None = None,
              workers: int | None = None, threads_per_worker: int = 1, explain=(), save_uncertainty: bool = False,
              overwrite: bool = False, device: str = "cpu", progress=None, cancel=None,
              multiscale: bool = False, postprocess: bool = True) -> list[dict]:
    """Run the default (or ``model``) segmentation over ``inputs`` on Dask; returns the summary rows.

    ``multiscale``: each scan with multi-scale test-time augmentation (``inference.segment(scales=MULTISCALE)``,
    about 2-3x the time); it is part of the settings an up-to-date check compares, so plain outputs are redone.
    ``postprocess=False``: the network's labels without the label post-processing the model's spec asks for
    (``inference.segment(postprocess=False)``); outputs made with it are redone, and the other way round.

    ``progress(done, total, failed)`` is called after each scan; ``cancel()`` returning True stops
    waiting (unfinished scans are cancelled) and raises :class:`Cancelled` after writing the summary
    of the finished rows. See the module docstring for the cluster.
    """
    _require_distributed()
    from distributed import Client, as_completed

    out_dir = Path(out_dir)
    paths = find_inputs(inputs, list_file)
    if not paths:
        raise VolumeError("no input scans: give files, folders or --list FILE")
    from ..explain.methods import method_names

    for m in explain or ():
        if m not in method_names(cli=True):
            raise ModelError(f"unknown explanation {m!r}; known: {', '.join(method_names(cli=True))}")
    stems = {}
    for p in paths:
        s = output_paths(p, out_dir)["stem"]
        if s in stems:
            raise VolumeError(f"{p} and {stems[s]} would write the same outputs ({s}_labels.nii.gz); rename one")
        stems[s] = p
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise VolumeError(f"{out_dir}: the output folder is not writable")
    ref, sha, labels, post = _model_ref_and_hash(model)
    names = [lab.name for lab in labels if int(lab.index) != 0]
    settings = {"device": device, "overlap": 0.25, "save_uncertainty": bool(save_uncertainty),
                "explain": list(explain or ()), "torch_threads": int(threads_per_worker)}
    if multiscale:   # only when on: the settings of plain runs (and so their up-to-date checks) stay as they were
        settings["multiscale"] = True
    if post:         # the model's label post-processing changes the labels: outputs made without it are redone
        settings["postprocess"] = post if postprocess else "off"
    own_cluster = None
    if client is None:
        if scheduler:
            client = Client(scheduler, timeout="30s")
        else:
            own_cluster = _local_cluster(workers, threads_per_worker)
            client = Client(own_cluster)
    rows: list[dict] = []
    failed = 0
    try:
        futures = {client.submit(process_scan, str(p), str(out_dir), model_ref=ref, model_sha=sha,
                                 settings=settings, overwrite=overwrite, pure=False): p for p in paths}
        pending = set(futures)
        for fut in as_completed(list(futures)):
            pending.discard(fut)
            try:
                row = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker died or the task could not run: that scan's row fails
                row = {"input": str(futures[fut]), "status": "failed", "output": "", "seconds": 0.0,
                       "worker": "", "message": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            rows.append(row)
            failed += row["status"] == "failed"
            write_summary(out_dir, sorted(rows, key=lambda r: r["input"]), names)
            if progress is not None:
                progress(len(rows), len(paths), failed)
            if cancel is not None and cancel():
                for f in pending:
                    f.cancel()
                raise Cancelled(f"batch cancelled after {len(rows)} of {len(paths)} scans; summary.csv has them")
    finally:
        if own_cluster is not None:
            client.close()
            own_cluster.close()
        elif scheduler and client is not None:
            client.close()
    rows.sort(key=lambda r: r["input"])
    write_summary(out_dir, rows, names)
    return rows


__all__ = ["EXIT_SOME_FAILED", "qc_flags", "run_batch", "summary_table", "write_summary"]
