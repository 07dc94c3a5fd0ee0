"""Explanation cost with default-size models on the bundled Colin27 sample (CPU).

For each model (random weights: cost does not depend on their values):

* ``first click``: preprocessing + one captured forward pass of the window holding the query;
* ``new click, row``: median time of one layer's attention row for a new query voxel in the captured
  window (the attention math only: ``AttentionCapture.row``), over 20 random voxels;
* ``new click, token map``: the same with ``grid="tokens"`` (no placement, no resampling);
* ``new click, map``: median time of ``point_attention`` for a new voxel in the same window,
  including placement at token centres and mapping onto the scan grid (``to_scan_grid``);
* peak memory of each method: the largest growth of the process's resident set above its size
  just before the method, sampled every 2 ms by a thread (psutil), next to the engine's estimate;
* what the capture holds after the forward (bytes of q/k or window inputs).

Run: ``.venv/bin/python benchmarks/bench_explain.py [--models unetr,vit_seg,segformer3d,swin_unetr]
[--methods attention,rollout,dino-heads,erf] [--threads N] [--json out.json]``. Results are printed
as a Markdown table (the one in ``docs/performance.md``, section "Explanations").
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import torch

from napari_vit3d import explain as ex
from napari_vit3d.io import read_nifti
from napari_vit3d.models import ModelSpec, build_network

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "napari_vit3d" / "resources" / "samples" / "colin27_t1.nii.gz"
LABELS = [{"index": i, "name": n} for i, n in enumerate(("background", "brain"))]

#: default-size configurations (MONAI defaults; SegFormer3D from the paper; ViTSeg with patch 8)
MODELS = {
    "unetr": dict(architecture="unetr", roi_size=(96, 96, 96), arch_kwargs={"feature_size": 16}),
    "vit_seg": dict(architecture="vit_seg", roi_size=(96, 96, 96), arch_kwargs={"patch_size": 8}),
    "segformer3d": dict(architecture="segformer3d", roi_size=(128, 128, 128), arch_kwargs={}),
    "swin_unetr": dict(architecture="swin_unetr", roi_size=(96, 96, 96), arch_kwargs={"feature_size": 48}),
}
METHODS = ("attention", "rollout", "dino-heads", "erf")


class PeakRSS:
    """Largest resident-set growth while the block runs (sampled by a thread)."""

    def __init__(self, period=0.002):
        self.proc, self.period, self.peak = psutil.Process(), period, 0

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.delta = self.peak - self.base
        return False


def _model(name, spacing=1.0):
    cfg = MODELS[name]
    spec = ModelSpec(name=f"{name}-default", architecture=cfg["architecture"], arch_kwargs=dict(cfg["arch_kwargs"]),
                     roi_size=cfg["roi_size"], spacing=(spacing,) * 3, normalization={"kind": "zscore_nonzero"},
                     labels=LABELS)
    torch.manual_seed(0)
    net = build_network(spec).eval()
    return SimpleNamespace(network=net, spec=spec, weights_sha256=None)


def bench_model(name, scan, methods, rng, spacing=1.0):
    model = _model(name, spacing)
    net = model.network
    n_params = sum(p.numel() for p in net.parameters())
    res = {"model": name, "params_M": round(n_params / 1e6, 1), "roi": list(model.spec.roi_size),
           "spacing_mm": spacing}
    centre = tuple(int(s) // 2 for s in scan.spatial_shape)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        sess = ex.ExplainSession(model, scan)
        vol = ex.point_attention(model, scan, voxel=centre, session=sess)
    res["first_click_s"] = round(time.perf_counter() - t0, 2)
    res["peak_attention_MiB"] = round(mem.delta / 2**20)
    res["estimate_attention_MiB"] = round(ex.estimate_bytes(net, sess.roi, "attention") / 2**20)
    cap = next(iter(sess._captures.values()))
    res["capture_MiB"] = round(cap.stored_bytes() / 2**20, 1)
    res["layers"] = len(cap.layers)
    start = np.asarray(vol.metadata["window"]["start_model_voxel"])
    roi = np.asarray(sess.roi)
    # new clicks inside the captured window: the row alone, and the full map on the scan grid
    row_t, map_t, tok_t = [], [], []
    last = len(cap.layers) - 1
    for i in range(20):
        q = start + rng.integers(4, roi - 4)
        token = cap.query_grid(last).nearest_token(q - start)
        t = time.perf_counter()
        cap.row(last, token)
        row_t.append(time.perf_counter() - t)
        if i < 5:
            w = sess.model_input.affine[:3, :3] @ q + sess.model_input.affine[:3, 3]
            vox = np.linalg.solve(scan.affine[:3, :3], w - scan.affine[:3, 3])
            vox = np.clip(np.round(vox), 0, np.asarray(scan.spatial_shape) - 1)
            t = time.perf_counter()
            ex.point_attention(model, scan, voxel=tuple(int(v) for v in vox), session=sess, layer=last)
            map_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            ex.point_attention(model, scan, voxel=tuple(int(v) for v in vox), session=sess, layer=last, grid="tokens")
            tok_t.append(time.perf_counter() - t)
    res["new_click_row_ms"] = round(1000 * statistics.median(row_t), 2)
    res["new_click_map_ms"] = round(1000 * statistics.median(map_t), 1)
    res["new_click_tokens_ms"] = round(1000 * statistics.median(tok_t), 2)
    if "rollout" in methods and ex.supports(net, "rollout"):
        t = time.perf_counter()
        with PeakRSS() as mem:
            ex.attention_rollout(model, scan, voxel=centre, session=sess)
        res["rollout_s"] = round(time.perf_counter() - t, 2)
        res["peak_rollout_MiB"] = round(mem.delta / 2**20)
    if "dino-heads" in methods and ex.supports(net, "dino-heads"):
        t = time.perf_counter()
        with PeakRSS() as mem:
            ex.dino_heads(model, scan, voxel=centre, session=sess)
        res["dino_s"] = round(time.perf_counter() - t, 2)
        res["peak_dino_MiB"] = round(mem.delta / 2**20)
    if "erf" in methods:
        sess._captures.clear()
        t = time.perf_counter()
        with PeakRSS() as mem:
            ex.erf_map(model, scan, voxel=centre, session=sess)
        res["erf_s"] = round(time.perf_counter() - t, 2)
        res["peak_erf_MiB"] = round(mem.delta / 2**20)
        res["estimate_erf_MiB"] = round(ex.estimate_bytes(net, sess.roi, "erf") / 2**20)
    del sess, model, net
    return res


def table(rows) -> str:
    cols = [("model", "model"), ("params_M", "params (M)"), ("roi", "window"), ("spacing_mm", "model spacing (mm)"),
            ("layers", "attn layers"),
            ("first_click_s", "first click (s)"), ("new_click_row_ms", "new click: row (ms)"),
            ("new_click_map_ms", "new click: map on scan (ms)"), ("new_click_tokens_ms", "new click: token map (ms)"),
            ("capture_MiB", "capture held (MiB)"),
            ("peak_attention_MiB", "peak attention (MiB)"), ("estimate_attention_MiB", "estimate (MiB)"),
            ("rollout_s", "rollout (s)"), ("peak_rollout_MiB", "peak rollout (MiB)"), ("dino_s", "DINO (s)"),
            ("peak_dino_MiB", "peak DINO (MiB)"), ("erf_s", "ERF (s)"), ("peak_erf_MiB", "peak ERF (MiB)"),
            ("estimate_erf_MiB", "ERF estimate (MiB)")]
    out = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = []
        for k, _ in cols:
            v = r.get(k, "–")
            vals.append("×".join(map(str, v)) if isinstance(v, list) else str(v))
        out.append("| " + " | ".join(vals) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="unetr,vit_seg,segformer3d,swin_unetr")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--spacing", type=float, default=1.0,
                    help="model spacing in mm (1 = the scan's: the map needs no resampling; 2 = trilinear back)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--guard", action="store_true",
                    help="keep the engine's memory refusal on (off by default so the real peak can be measured)")
    args = ap.parse_args()
    if not args.guard:
        from napari_vit3d.explain import memory
        memory.USABLE_FRACTION = float("inf")
    if args.threads:
        torch.set_num_threads(args.threads)
    scan = read_nifti(SAMPLE)
    rng = np.random.default_rng(0)
    methods = tuple(args.methods.split(","))
    rows = []
    for name in args.models.split(","):
        r = bench_model(name, scan, methods, rng, args.spacing)
        print(json.dumps(r), flush=True)
        rows.append(r)
    print(f"\nscan {scan.name} {scan.spatial_shape}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
