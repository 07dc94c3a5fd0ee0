"""Click-prompted segmentation, measured with the standard simulated user, beside a classical baseline.

Protocol (SAM, nnInteractive, the CVPR 2025 interactive 3D challenge; ``prompt.clicks``): the first
click at the object's voxel farthest from its border (mm); each next click at the voxel farthest
from the border of the largest error component, positive if it was missed, negative if it was
extra. Dice after 1, 3 and 5 clicks and seconds per click (``PromptSession.predict``, the GUI's and
the CLI's code path, on this machine's CPU).

Baseline: scikit-image ``random_walker`` on the same kind of clicks (its own error-driven clicks),
on the scan region of the promptable model's crop at the same step (the same zoom), resampled to at
most 64³; seeds: the click balls (object / not object) and the crop's outer faces (not object).

Objects (references built here, none drawn by hand; ``(trained on)`` where the promptable model saw
that structure during training, which it did for the Colin27 / MNI label-map structures):

* Colin27: intracranial brain, lateral ventricles, white matter, the whole head;
* MNI152: ventricles, white matter;
* held-out synthetic lesions (``training.prompt_data.plant_lesion`` with seeds ≥ 10 000, never drawn
  by training) planted into the real MNI152, pydeface and Colin27 scans at 1 mm, and into a CT-like
  rendering of Colin27 (Hounsfield-like values).

    python benchmarks/bench_prompt.py --data-dir ../shared/data --out benchmarks/results/prompt.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from napari_vit3d.io.volume import Volume  # noqa: E402
from napari_vit3d.prompt import PromptSession, load_prompt_model  # noqa: E402
from napari_vit3d.prompt.clicks import dice, farthest_point, next_click  # noqa: E402
from napari_vit3d.prompt.crop import scan_box  # noqa: E402
from napari_vit3d.training import prompt_data as P  # noqa: E402
from napari_vit3d.training import synthesis as S  # noqa: E402

CLICKS = (1, 3, 5)


def cases(data_dir: Path, n_lesions: int):
    load = lambda rel: nib.load(str(data_dir / rel))  # noqa: E731
    ci = load(S.COLIN_T1)
    t1 = np.asarray(ci.dataobj, np.float32)
    bet = np.asarray(load(S.COLIN_BET).dataobj, np.float32)
    labels, icv = S.head_label_map_1mm(t1, bet)
    tight = S.clean_mask(bet > 0)
    colin = Volume(data=t1, affine=ci.affine, name="colin27")
    vent = P.components("v", (labels == 1) & ndimage.binary_erosion(tight, iterations=6), top=2, min_voxels=300)
    vent_mask = np.zeros(t1.shape, bool)
    for st in vent:
        vent_mask[st.box] |= st.mask
    yield "colin27 brain (intracranial, trained on)", colin, icv
    yield "colin27 lateral ventricles (trained on)", colin, vent_mask
    yield "colin27 white matter (trained on)", colin, S.largest_component(labels == 3)
    yield "colin27 head (trained on)", colin, labels > 0
    mi = load(S.MNI_T1)
    mt1 = np.asarray(mi.dataobj, np.float32)
    gm, wm = (np.asarray(load(r).dataobj, np.float32) / 255 for r in (S.MNI_GM, S.MNI_WM))
    mbrain = S.clean_mask(mt1 > 0.1 * S.otsu_threshold(mt1[mt1 > 0]))
    mni = Volume(data=mt1, affine=mi.affine, name="mni152")
    yield "mni152 white matter (trained on)", mni, S.largest_component((wm > 0.5) & mbrain)
    mv = P.components("v", (np.clip(1 - gm - wm, 0, 1) > 0.6) & ndimage.binary_erosion(mbrain, iterations=8), top=2)
    mvm = np.zeros(mt1.shape, bool)
    for st in mv:
        mvm[st.box] |= st.mask
    yield "mni152 ventricles (trained on)", mni, mvm
    pi = load(P.PYDEFACE)
    pt1 = np.asarray(pi.dataobj, np.float32)
    ct = P.ct_like(np.random.default_rng(999), labels)
    hosts = [("mni152", mt1, mi.affine, mbrain), ("pydeface", pt1, pi.affine, None), ("colin27", t1, ci.affine, icv),
             ("colin27 CT-like", ct, ci.affine, icv)]
    for i in range(n_lesions):
        rng = np.random.default_rng(10_000 + i)
        name, img, aff, region = hosts[i % len(hosts)]
        if region is None:
            region = ndimage.binary_erosion(P._head_mask(img), iterations=15)
        inner = ndimage.binary_erosion(region, iterations=12)
        cand = np.argwhere(inner[::3, ::3, ::3]) * 3
        centre = cand[int(rng.integers(len(cand)))]
        out, m = P.plant_lesion(rng, img, centre, size=int(rng.choice([24, 40, 56])))
        if m.sum() < 30:
            continue
        yield f"held-out lesion {i} in {name} ({m.sum() / 1000:.1f} mL)", Volume(data=out, affine=aff, name=name), m


def simulated_click(k: int, gt: np.ndarray, pred: np.ndarray, spacing):
    """The simulated user's k-th click ``(voxel, positive)``, or None when nothing is left to fix."""
    if k == 0:
        return farthest_point(gt, spacing), True
    return next_click(gt, pred, spacing)


def run_model(session: PromptSession, gt: np.ndarray, spacing, n: int):
    dices, secs, crops = [], [], []
    pred = np.zeros(gt.shape, bool)
    for k in range(n):
        nc = simulated_click(k, gt, pred, spacing)
        if nc is None:
            dices.append(dices[-1])
            secs.append(0.0)
            continue
        vox, positive = nc
        session.add_point(voxel=vox, positive=positive)
        t0 = time.perf_counter()
        res = session.predict()
        secs.append(time.perf_counter() - t0)
        pred = res.mask.data > 0
        dices.append(dice(pred, gt))
        crops.append(res.crop)
    return dices, secs, crops


def run_random_walker(vol: Volume, gt: np.ndarray, spacing, crops, n: int):
    from skimage.segmentation import random_walker

    data = np.asarray(vol.data, np.float32)
    pred = np.zeros(gt.shape, bool)
    clicks = []
    dices, secs = [], []
    for k in range(n):
        nc = simulated_click(k, gt, pred, spacing)
        if nc is None:
            dices.append(dices[-1])
            secs.append(0.0)
            continue
        clicks.append(nc)
        t0 = time.perf_counter()
        box = scan_box(crops[min(k, len(crops) - 1)], vol.affine, vol.spatial_shape)
        sub = data[box]
        step = max(1, int(np.ceil(max(sub.shape) / 64)))
        x = sub[::step, ::step, ::step]
        lo, hi = np.percentile(x, [0.5, 99.5])
        x = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)
        seeds = np.zeros(x.shape, np.int32)
        seeds[0, :, :] = seeds[-1, :, :] = seeds[:, 0, :] = seeds[:, -1, :] = seeds[:, :, 0] = seeds[:, :, -1] = 2
        for v, pos in clicks:
            p = (np.asarray(v) - [s.start for s in box]) // step
            if np.all(p >= 0) and np.all(p < x.shape):
                sl = tuple(slice(max(0, a - 1), a + 2) for a in p)
                seeds[sl] = 1 if pos else 2
        if not np.any(seeds == 1):
            lab = np.zeros(x.shape, bool)
        else:
            lab = random_walker(x, seeds, beta=130, mode="cg_j", tol=1e-3) == 1
        full = np.zeros(sub.shape, bool)
        up = np.repeat(np.repeat(np.repeat(lab, step, 0), step, 1), step, 2)
        up = up[:sub.shape[0], :sub.shape[1], :sub.shape[2]]
        full[:up.shape[0], :up.shape[1], :up.shape[2]] = up
        pred = np.zeros(gt.shape, bool)
        pred[box] = full
        secs.append(time.perf_counter() - t0)
        dices.append(dice(pred, gt))
    return dices, secs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--model", default=None)
    ap.add_argument("--n-lesions", type=int, default=8)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--global-edits", action="store_true",
                    help="let every click redraw the object inside the crop (PromptSession(local_edits=False))")
    ap.add_argument("--out", "--json", dest="out", type=Path, default=None, help="JSON results file")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_prompt_model(args.model)
    rows = []
    for name, vol, gt in cases(args.data_dir, args.n_lesions):
        spacing = vol.spacing
        sess = PromptSession(model, vol, local_edits=not args.global_edits)
        d, s, crops = run_model(sess, gt, spacing, args.clicks)
        row = {"object": name, "ml": round(float(gt.sum() * vol.voxel_volume_ml), 2),
               "model": {"dice": [round(v, 4) for v in d], "seconds": [round(v, 3) for v in s],
                         "crop_mm": [c.spacing for c in crops]}}
        if not args.no_baseline:
            bd, bs = run_random_walker(vol, gt, spacing, crops, args.clicks)
            row["random_walker"] = {"dice": [round(v, 4) for v in bd], "seconds": [round(v, 3) for v in bs]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {}
    for who in ("model", "random_walker"):
        rs = [r for r in rows if who in r]
        if not rs:
            continue
        summary[who] = {}
        for group, sel in (("all", rs), ("lesions", [r for r in rs if "lesion" in r["object"]]),
                           ("structures", [r for r in rs if "lesion" not in r["object"]])):
            if not sel:
                continue
            summary[who][group] = {f"dice@{k}": round(float(np.mean([r[who]["dice"][k - 1] for r in sel])), 3)
                                   for k in CLICKS if k <= args.clicks}
            per_click = [np.mean(r[who]["seconds"]) for r in sel]
            summary[who][group]["seconds_per_click"] = round(float(np.mean(per_click)), 3)
            summary[who][group]["n"] = len(sel)
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
