"""Inference cost per architecture on the bundled Colin27 T1 (181 × 217 × 181, 1 mm), default sizes.

For each model (random weights: the cost does not depend on their values):

* ``window``: median wall time of one forward pass of one ROI window (after the whole-volume runs, or
  one warm-up pass, so the network is warm);
* ``whole volume``: ``inference.segment`` on the scan at the model spacing given in the table
  (preprocessing, every sliding window with gaussian blending, mapping back onto the scan grid,
  labels and probabilities), no cache;
* ``plain MONAI``: ``monai.inferers.sliding_window_inference`` on the same preprocessed tensor, same
  network, ROI, overlap, batch size and blending: the network time alone;
* ``ratio``: whole volume / plain MONAI (what preprocessing, progress/cancel checks, mapping back and
  probabilities add on top of the windows; on a shared machine the noise of the window time dominates);
* ``preprocess`` and ``map back``: the engine's own steps timed alone (orientation, resampling,
  normalisation, padding; logits → scan grid → labels and probabilities);
* ``max abs logit diff``: our model-space logits versus plain MONAI's (fp32, same windows).

Run: ``.venv/bin/python benchmarks/bench_inference.py [--models unetr,swin_unetr,segformer3d,segformer3d_96,vit_seg]
[--repeats 1] [--overlap 0.25] [--threads N] [--json out.json]``. The Markdown table it prints is the one
in ``docs/performance.md`` (section "Inference").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from napari_vit3d.inference import labels_from_logits, logits_to_scan, preprocess, probabilities_from_logits, segment
from napari_vit3d.io import read_nifti
from napari_vit3d.models import ModelSpec, build_network

try:  # run as a script (benchmarks/ on sys.path) or as benchmarks.<name>
    from _machine import cpu_name, load_average
except ImportError:  # pragma: no cover
    from ._machine import cpu_name, load_average

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "napari_vit3d" / "resources" / "samples" / "colin27_t1.nii.gz"
LABELS = [{"index": i, "name": n} for i, n in enumerate(("background", "grey matter", "white matter"))]

#: default-size configurations (MONAI defaults; SegFormer3D from the paper; ViTSeg with patch 8) and the
#: model spacing of the whole-volume run. Coarser spacings for the heavy models keep this benchmark within
#: minutes on 2 CPU cores (UNETR and ViTSeg at 2 mm: 2 windows; Swin-UNETR at 2.3 mm: 1 window); SegFormer3D
#: runs the scan at its own 1 mm (no resampling: the exact path). ``whole=False``: window latency only.
MODELS = {
    "unetr": dict(architecture="unetr", roi_size=(96, 96, 96), arch_kwargs={"feature_size": 16}, spacing=2.0),
    "swin_unetr": dict(architecture="swin_unetr", roi_size=(96, 96, 96), arch_kwargs={"feature_size": 48},
                       spacing=2.3),
    "segformer3d": dict(architecture="segformer3d", roi_size=(128, 128, 128), arch_kwargs={}, spacing=1.0),
    "segformer3d_96": dict(architecture="segformer3d", roi_size=(96, 96, 96), arch_kwargs={}, spacing=1.0,
                           whole=False),
    "vit_seg": dict(architecture="vit_seg", roi_size=(96, 96, 96), arch_kwargs={"patch_size": 8}, spacing=2.0),
}


def make_model(name: str):
    cfg = MODELS[name]
    spec = ModelSpec(name=name, architecture=cfg["architecture"], arch_kwargs=dict(cfg["arch_kwargs"]),
                     roi_size=cfg["roi_size"], spacing=(cfg["spacing"],) * 3, labels=LABELS,
                     normalization={"kind": "zscore_nonzero"})
    torch.manual_seed(0)
    net = build_network(spec).eval()
    return SimpleNamespace(network=net, spec=spec, weights_sha256=None)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench(name: str, scan, *, repeats: int, overlap: float) -> dict:
    from monai.inferers import sliding_window_inference

    model = make_model(name)
    spec, net = model.spec, model.network
    n_params = sum(p.numel() for p in net.parameters())
    x = torch.randn(1, 1, *spec.roi_size)
    row = {"model": name, "architecture": spec.architecture, "params_M": round(n_params / 1e6, 2),
           "roi": list(spec.roi_size), "spacing_mm": spec.spacing[0]}
    if MODELS[name].get("whole", True):
        # the whole-volume runs come first and also warm the network up for the window timing
        windows = []
        t = time.perf_counter()
        res = segment(scan, model, device="cpu", overlap=overlap, use_cache=False,
                      progress=lambda d, n: windows.append((d, n)))
        whole = time.perf_counter() - t
        mi = preprocess(scan, spec)
        t = time.perf_counter()
        with torch.inference_mode():
            ref = sliding_window_inference(mi.tensor, spec.roi_size, 1, net, overlap=overlap, mode="gaussian")
        plain = time.perf_counter() - t
        # the engine's own work outside the windows, timed step by step (robust to a busy machine, unlike
        # the ratio of two whole runs): preprocessing, and logits → scan grid → labels + probabilities
        t = time.perf_counter()
        preprocess(scan, spec)
        t_pre = time.perf_counter() - t
        t = time.perf_counter()
        scan_logits = logits_to_scan(res.logits, res.model_input)
        labels_from_logits(scan_logits, spec)
        probabilities_from_logits(scan_logits)
        t_back = time.perf_counter() - t
        row.update({"preprocess_s": round(t_pre, 2), "map_back_s": round(t_back, 2)})
        row.update({"model_grid": list(mi.valid_shape), "n_windows": windows[-1][1] if windows else None,
                    "whole_volume_s": round(whole, 2), "plain_monai_s": round(plain, 2),
                    "overhead": round(whole / plain, 3),
                    "max_abs_logit_diff_vs_monai": float((ref[0] - res.logits).abs().max())})
    else:
        with torch.inference_mode():
            net(x)  # warm-up
    with torch.inference_mode():
        window = timed(lambda: net(x), repeats)
    row.update({"window_s": round(statistics.median(window), 3), "window_runs": [round(v, 3) for v in window]})
    return row


def markdown(rows: list[dict]) -> str:
    head = ("| model | params (M) | ROI | window (s) | model grid @ spacing | windows | whole volume (s) "
            "| plain MONAI (s) | ratio | preprocess (s) | map back (s) | max abs logit diff |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        if "whole_volume_s" not in r:
            lines.append(f"| {r['model']} | {r['params_M']} | {'×'.join(map(str, r['roi']))} | {r['window_s']} "
                         "| – | – | – | – | – | – | – | – |")
            continue
        lines.append(f"| {r['model']} | {r['params_M']} | {'×'.join(map(str, r['roi']))} | {r['window_s']} "
                     f"| {'×'.join(map(str, r['model_grid']))} @ {r['spacing_mm']:g} mm | {r['n_windows']} "
                     f"| {r['whole_volume_s']} | {r['plain_monai_s']} | {r['overhead']:.2f} "
                     f"| {r['preprocess_s']} | {r['map_back_s']} "
                     f"| {r['max_abs_logit_diff_vs_monai']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeats", type=int, default=1, help="timed window passes per model (network already warm)")
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scan = read_nifti(SAMPLE)
    rows = []
    for name in args.models.split(","):
        row = bench(name.strip(), scan, repeats=args.repeats, overlap=args.overlap)
        rows.append(row)
        print(json.dumps(row), flush=True)
    load = load_average()
    machine = (f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
               f"torch threads, torch {torch.__version__}, Python {platform.python_version()}, load average at the "
               f"end {load}")
    print(f"\nmachine: {machine}\noverlap {args.overlap}, gaussian blending, fp32, CPU, sw_batch_size 1\n")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
