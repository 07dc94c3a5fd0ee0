"""One scan of a batch, as it runs on a Dask worker: read, segment, write, measure — or skip.

The model is loaded once per worker process (``_MODELS``) and reused for every scan the worker gets;
torch's CPU threads are set once per process to the worker's thread share, so workers do not
oversubscribe the cores. Every output is written atomically and the record ``<stem>_labels.json``
last: it is the commit marker that a rerun checks (input content hash, model weights hash,
settings) to skip a scan that is already done.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

_MODELS: dict = {}
_LOCK = threading.Lock()
_THREADS_SET = {"done": False}


def worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "local"


def _model(ref: str, device: str, torch_threads: int | None):
    import torch

    from ..models import load_model

    with _LOCK:
        if torch_threads and not _THREADS_SET["done"]:
            torch.set_num_threads(int(torch_threads))
            _THREADS_SET["done"] = True
        key = (ref, device)
        if key not in _MODELS:
            _MODELS[key] = load_model(ref, device)
        return _MODELS[key]


def output_paths(input_path: Path, out_dir: Path) -> dict[str, Path]:
    from ..io.formats import scan_stem

    stem = scan_stem(input_path)
    return {"labels": out_dir / f"{stem}_labels.nii.gz", "record": out_dir / f"{stem}_labels.json",
            "uncertainty": out_dir / f"{stem}_uncertainty.nii.gz", "stem": stem}


def _record_matches(record: Path, want: dict) -> bool:
    try:
        have = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return all(have.get(k) == v for k, v in want.items())


def process_scan(input_path: str, out_dir: str, *, model_ref: str, model_sha: str | None, settings: dict,
                 overwrite: bool = False) -> dict:
    """Segment one scan (or skip it when its outputs are up to date); returns its summary row.

    Errors that are the input's (a corrupt file, a 2D image, …) become a ``failed`` row with the
    one-line message; the rest of the batch goes on.
    """
    from ..errors import Vit3dError
    from ..io.atomic import write_json_atomic
    from ..io.formats import scan_sha256

    t0 = time.time()
    inp, out = Path(input_path), Path(out_dir)
    paths = output_paths(inp, out)
    row = {"input": str(inp), "status": "failed", "output": "", "seconds": 0.0, "worker": worker_address(),
           "message": ""}
    try:
        digest = scan_sha256(inp)
        want = {"input_sha256": digest, "model": model_ref, "weights_sha256": model_sha, "settings": settings}
        if not overwrite and paths["labels"].exists() and _record_matches(paths["record"], want):
            old = json.loads(paths["record"].read_text(encoding="utf-8"))
            row.update(status="skipped", output=str(paths["labels"]), message="outputs up to date",
                       volumes_ml=old.get("volumes_ml", {}), mean_uncertainty=old.get("mean_uncertainty"))
            return row
        row.update(_segment_one(inp, paths, model_ref, settings))
        write_json_atomic(paths["record"], {**want, "input": str(inp), "volumes_ml": row["volumes_ml"],
                                            "mean_uncertainty": row.get("mean_uncertainty")})
        row.update(status="ok", output=str(paths["labels"]))
    except Vit3dError as exc:
        row["message"] = str(exc)
    except OSError as exc:
        row["message"] = f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
    except (ValueError, RuntimeError, MemoryError) as exc:  # a scan the engine cannot take: its row fails
        row["message"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        row["seconds"] = round(time.time() - t0, 2)
    return row


def _segment_one(inp: Path, paths: dict, model_ref: str, settings: dict) -> dict:
    from ..inference.engine import MULTISCALE
    from ..io.formats import read_scan
    from ..io.nifti import write_image, write_labels
    from ..usecases import label_volumes, segment_scan

    model = _model(model_ref, settings.get("device", "cpu"), settings.get("torch_threads"))
    scan = read_scan(inp, as_labels=False)
    want_unc = bool(settings.get("save_uncertainty"))
    seg = segment_scan(scan, model, device=settings.get("device", "cpu"), overlap=float(settings.get("overlap", 0.25)),
                       uncertainty=True, use_cache=False, scales=MULTISCALE if settings.get("multiscale") else None,
                       postprocess=settings.get("postprocess") != "off")
    labels = seg.labels.data
    write_labels(paths["labels"], labels, scan.affine, header=scan.header, source_path=scan.source_path)
    ent = seg.uncertainty.data
    fg = labels > 0
    mean_unc = float(ent[fg].mean()) if fg.any() else float(ent.mean())
    if want_unc:
        write_image(paths["uncertainty"], ent, scan.affine, header=scan.header, protect=(scan.source_path,))
    names = {int(lab.index): lab.name for lab in model.spec.labels}
    measured = label_volumes(labels, scan.affine)
    vols = {names.get(i, str(i)): round(measured.get(i, {}).get("ml", 0.0), 3) for i in sorted(names) if i != 0}
    out = {"volumes_ml": vols, "mean_uncertainty": round(mean_unc, 4)}
    for method in settings.get("explain") or []:
        out.setdefault("explained", []).append(_explain_one(model, scan, labels, method, paths))
    return out


def _explain_one(model, scan, labels, method: str, paths: dict) -> str:
    """An explanation map at the centroid voxel of the foreground (documented in docs/cohorts.md)."""
    from .. import explain
    from ..io.nifti import write_image

    fg = np.argwhere(labels > 0)
    voxel = tuple(int(v) for v in (fg.mean(0).round() if len(fg) else np.array(labels.shape) // 2))
    vol = explain.run_method(method, model, scan, voxel=voxel)
    target = paths["labels"].parent / f"{paths['stem']}_{method}.nii.gz"
    write_image(target, vol.data, scan.affine, header=scan.header, protect=(scan.source_path,))
    return str(target)
