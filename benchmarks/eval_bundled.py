"""Measure the bundled segmentation models the way a user runs them (``inference.segment``).

Two test sets, each beside an Otsu + morphology baseline on the same scans:

* **held-out synthetic scans**: label-to-image synthesis (``training.synthesis``) with seeds the
  training bank never used (10 000 + i), pure synthetic intensities (no real image), 2 mm grid;
* **re-sampled real Colin27 copies**: the real Colin27 head (with skull) rotated by up to ±20° about
  each axis, stored in a random axis order with random flips (a random file orientation),
  resampled to random anisotropic voxels (0.9–1.5 mm, and in half of the copies one axis with
  2.5–4 mm slices), on a grid covering the head. References are resampled the same way (nearest):
  the brain mask (``ch2bet`` > 0, largest component, holes filled) and, for tissue, the k-means
  tissue classes of Colin's own T1 inside it (a silver standard). Colin27 was in the training data,
  so these figures measure robustness to pose/voxel geometry, not generalisation to new people.
  The brain reference is the **intracranial** mask (``--reference intracranial``, the default since
  2026-12-01: ``ch2bet`` + the sulcal and surrounding CSF, ``synthesis.intracranial_mask``, the
  convention of the brain-extraction tools); ``--reference tight`` gives ``ch2bet``'s own mask.

Metrics: brain Dice (labels > 0 against the brain mask) and per-tissue Dice (CSF, GM, WM); mean and
worst over the scans. The baseline: Otsu threshold, erosion (6 mm), largest component, dilation,
hole filling (brain); 3-class multi-Otsu inside that mask (tissue). The 6 mm radius was picked
as the best of 4/6/8/10 mm on the unrotated Colin27 at 2 mm (brain Dice 0.943), giving the baseline its
best shot.

    python benchmarks/eval_bundled.py --model segformer3d-brain --data-dir ../shared/data \
        --n-synthetic 8 --n-real 10 --out benchmarks/results/segformer3d-brain.json
    python benchmarks/eval_bundled.py --model dino-vit-brain --data-dir ../shared/data \
        --heads-png docs/models/dino-vit-brain-heads.png

``--sample-png`` draws the model's labels on the bundled sample beside the reference (three axial
slices and one coronal, brain outlines of model and reference on the T1). ``--heads-png`` also draws
the DINO per-head CLS attention of the last block on the bundled Colin27 sample
(``explain.dino_heads``, the same code the GUI uses; each head contrast-stretched between its 1st
and 99.5th percentile inside the window) and reports how each head's attention mass splits over
air / scalp+skull / CSF / GM / WM, beside the voxel share of each region in the window (a head that
picks nothing out has mass share = voxel share), and the coefficient of variation of each head's map.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu, threshold_otsu

from napari_vit3d.inference.engine import segment
from napari_vit3d.io.resample import resample_array
from napari_vit3d.io.volume import Volume
from napari_vit3d.models import load_model
from napari_vit3d.training import synthesis as S

CLASSES = ("CSF", "GM", "WM")


#: "intracranial" (the default: brain + sulcal and surrounding CSF, the brain-extraction convention;
#: ``synthesis.intracranial_mask``) or "tight" (``ch2bet``'s mask, the reference before 2026-12-01)
REFERENCE = {"brain": "intracranial"}


@functools.lru_cache(maxsize=4)
def colin_1mm(data_dir: Path, reference: str | None = None):
    """Colin27 at 1 mm (sub-labels, T1, brain mask, affine), built once per run: the evaluation and
    both figures need it, and building it (k-means, morphology) takes seconds. Callers must not
    modify the arrays."""
    ref = reference or REFERENCE["brain"]
    return S.colin_label_map_1mm(data_dir, intracranial=(ref == "intracranial"))


def _pad_tile(rgb: np.ndarray, size: int = 217) -> np.ndarray:
    """An RGB slice padded (bottom, right) to ``size`` × ``size``, so tiles of one figure line up."""
    return np.pad(rgb, ((0, size - rgb.shape[0]), (0, size - rgb.shape[1]), (0, 0)))


def labelmap_figure(data_dir: Path, png: Path, log=print) -> dict:
    """The training label map's brain definition on Colin27: ``ch2bet``'s tight mask (red) and the
    intracranial mask (green) on the T1 (axial at 30/50/70 % of the head, coronal and sagittal through
    its centre), beside the label map (CSF dark grey, GM grey, WM white, the added CSF blue)."""
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    labels1, t1, icv, _ = colin_1mm(data_dir, "intracranial")
    _, _, tight, _ = colin_1mm(data_dir, "tight")
    t = np.clip(t1 / np.percentile(t1, 99.5), 0, 1)
    head = np.argwhere(t > 0.2)
    lo, hi = head.min(0), head.max(0)
    centre = (lo + hi) // 2
    grey = np.array([0.0, 0.35, 0.65, 1.0])
    rows = []
    for kind, frac in (("axial", 0.3), ("axial", 0.5), ("axial", 0.7), ("coronal", 0.5), ("sagittal", 0.45)):
        c = centre.copy()
        if kind == "axial":
            c[2] = int(lo[2] + frac * (hi[2] - lo[2]))
        if kind == "sagittal":
            c[0] = int(lo[0] + frac * (hi[0] - lo[0]))
        pick = {"axial": 0, "coronal": 1, "sagittal": 2}[kind]
        st, sl = _display_slices(t, c)[pick], _display_slices(np.where(icv, labels1, 0), c)[pick].astype(int)
        sa, sb = _display_slices(tight, c)[pick], _display_slices(icv, c)[pick]
        rgb = np.repeat(st[..., None], 3, -1)
        ba, bb = find_boundaries(sa, mode="inner"), find_boundaries(sb, mode="inner")
        rgb[ba] = [1.0, 0.15, 0.15]
        rgb[bb] = [0.2, 1.0, 0.2]
        lab = np.repeat(grey[np.clip(sl, 0, 3)][..., None], 3, -1)
        lab[sb & ~sa] = [0.2, 0.5, 1.0]
        tiles = [rgb, lab]
        rows.append(np.concatenate([_pad_tile(x) for x in tiles], 1))
    png.parent.mkdir(parents=True, exist_ok=True)
    imsave(str(png), (np.concatenate(rows, 0) * 255).astype(np.uint8), check_contrast=False)
    out = {"png": str(png), "tight_ml": float(tight.sum() / 1000), "intracranial_ml": float(icv.sum() / 1000),
           "added_csf_ml": float((icv & ~tight).sum() / 1000)}
    log(f"wrote {png}: {out}")
    return out


# ------------------------------------------------------------------------------------------ metrics

def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / s) if s else 1.0


def scores(pred: np.ndarray, brain_ref: np.ndarray, tissue_ref: np.ndarray | None) -> dict:
    out = {"brain": dice(pred > 0, brain_ref)}
    if tissue_ref is not None:
        for c, name in enumerate(CLASSES, start=1):
            out[name] = dice(pred == c, tissue_ref == c)
    return out


# ------------------------------------------------------------------------------------------ baseline

def _ellipsoid(radius_mm: float, spacing) -> np.ndarray:
    r = [max(1, int(round(radius_mm / s))) for s in spacing]
    g = np.mgrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1].astype(float)
    return ((g[0] * spacing[0]) ** 2 + (g[1] * spacing[1]) ** 2 + (g[2] * spacing[2]) ** 2) <= radius_mm ** 2


def otsu_baseline(img: np.ndarray, spacing) -> np.ndarray:
    """Otsu + morphology brain mask with a 3-class multi-Otsu tissue split inside: labels 0..3."""
    x = np.asarray(img, np.float32)
    m = x > threshold_otsu(x)
    se = _ellipsoid(6.0, spacing)
    m = ndimage.binary_erosion(m, se)
    m = S.largest_component(m)
    m = ndimage.binary_dilation(m, se)
    m = ndimage.binary_fill_holes(m)
    out = np.zeros(x.shape, np.uint8)
    if m.sum() > 100:
        th = threshold_multiotsu(x[m], classes=3)
        out[m] = 1 + np.digitize(x[m], th).astype(np.uint8)
    return out


# ------------------------------------------------------------------------------------------ test sets

def _rotation(rng, max_deg: float) -> np.ndarray:
    a = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    cx, sx, cy, sy, cz, sz = np.cos(a[0]), np.sin(a[0]), np.cos(a[1]), np.sin(a[1]), np.cos(a[2]), np.sin(a[2])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_real_copy(t1, brain, tissue, affine, rng, *, max_deg: float = 20.0):
    """A randomly posed, re-oriented and re-sampled copy: (Volume, brain ref, tissue ref, description)."""
    rot = _rotation(rng, max_deg)
    spacing = rng.uniform(0.9, 1.5, 3)
    thick = rng.random() < 0.5
    if thick:
        spacing[int(rng.integers(3))] = rng.uniform(2.5, 4.0)
    perm = rng.permutation(3)
    flips = np.where(rng.random(3) < 0.5, -1.0, 1.0)
    cols = rot[:, perm] * flips  # voxel axis i runs along world direction cols[:, i]
    lin = cols * spacing
    # the grid covers the head (voxels of the source that are not air)
    idx = np.argwhere(t1 > 0.25 * threshold_otsu(t1[::2, ::2, ::2]))
    lo, hi = idx.min(0), idx.max(0)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], float)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    inv = np.linalg.inv(lin)
    vox = world @ inv.T
    vmin, vmax = vox.min(0) - 2, vox.max(0) + 2
    shape = tuple(int(np.ceil(v)) for v in (vmax - vmin + 1))
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = lin @ vmin + rng.uniform(-3, 3, 3)
    img = resample_array(t1, affine, aff, shape, order=1)
    b = resample_array(brain.astype(np.uint8), affine, aff, shape, order=0) > 0
    t = resample_array(tissue.astype(np.uint8), affine, aff, shape, order=0)
    desc = {"spacing_mm": np.round(spacing, 2).tolist(), "axis_order": perm.tolist(), "flips": flips.tolist(),
            "shape": list(shape), "thick_slices": bool(thick)}
    return Volume(data=img.astype(np.float32), affine=aff, name="colin27-copy"), b, t, desc


def heldout_synthetic(maps, n: int, seed0: int = 10_000):
    cfg = S.SynthConfig(p_real=0.0)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    for i in range(n):
        rng = np.random.default_rng(seed0 + i)
        lm = maps[int(rng.integers(len(maps)))]
        img, cls = S.synthesize(lm, rng, cfg)
        meta = {"map": lm.name, "seed": seed0 + i}
        yield Volume(data=img, affine=aff, name=f"synthetic-{seed0 + i}"), cls > 0, cls, meta


# ------------------------------------------------------------------------------------------ report

def summarise(rows: list[dict], keys) -> dict:
    out = {}
    for who in ("model", "baseline"):
        out[who] = {k: {"mean": float(np.mean([r[who][k] for r in rows])),
                        "worst": float(np.min([r[who][k] for r in rows]))} for k in keys}
    return out


def table(title: str, summary: dict, keys) -> str:
    lines = [f"**{title}**", "", "| | " + " | ".join(f"{k} mean | {k} worst" for k in keys) + " |",
             "|---|" + "---|---|" * len(keys)]
    for who in ("model", "baseline"):
        label = "model" if who == "model" else "Otsu + morphology"
        lines.append(f"| {label} | " + " | ".join(f"{summary[who][k]['mean']:.3f} | {summary[who][k]['worst']:.3f}"
                                                    for k in keys) + " |")
    return "\n".join(lines)


def evaluate(model_name: str, data_dir: Path, n_synthetic: int, n_real: int, seed: int, log=print) -> dict:
    model = load_model(model_name, device="cpu")
    keys = ("brain",) + CLASSES
    maps = S.build_label_maps(data_dir, 2)
    labels1, t1, brain, affine = colin_1mm(data_dir)
    tissue = np.where(brain, labels1, 0).astype(np.uint8)
    result = {"model": model.spec.name, "synthetic": [], "real": []}
    t0 = time.time()
    for vol, bref, tref, desc in heldout_synthetic(maps, n_synthetic):
        pred = segment(vol, model, device="cpu", use_cache=False, return_probabilities=False).labels.data
        base = otsu_baseline(vol.data, vol.spacing)
        row = {**desc, "model": scores(pred, bref, tref), "baseline": scores(base, bref, tref)}
        result["synthetic"].append(row)
        log(f"synthetic {desc['seed']}: model {row['model']}  baseline {row['baseline']}")
    rng = np.random.default_rng(seed)
    for i in range(n_real):
        vol, bref, tref, desc = random_real_copy(t1, brain, tissue, affine, rng)
        pred = segment(vol, model, device="cpu", use_cache=False, return_probabilities=False).labels.data
        base = otsu_baseline(vol.data, vol.spacing)
        row = {**desc, "model": scores(pred, bref, tref), "baseline": scores(base, bref, tref)}
        result["real"].append(row)
        log(f"colin copy {i} {desc}: model {row['model']}  baseline {row['baseline']}")
    titles = {"synthetic": f"Held-out synthetic scans (n = {n_synthetic})",
              "real": f"Re-oriented, rotated, re-sampled real Colin27 copies (n = {n_real})"}
    sets = [k for k in titles if result[k]]  # a set asked for with n = 0 has no summary
    result["summary"] = {k: summarise(result[k], keys) for k in sets}
    result["seconds"] = round(time.time() - t0, 1)
    result["markdown"] = "\n\n".join(table(titles[k], result["summary"][k], keys) for k in sets)
    return result


# ------------------------------------------------------------------------------------------ DINO heads

def _hot(v: np.ndarray) -> np.ndarray:
    """A black-red-yellow-white colour map for values in [0, 1] → (…, 3) floats."""
    v = np.clip(v, 0, 1)
    return np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1)


def _display_slices(vol: np.ndarray, centre) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices of a RAS array (anterior / superior up, patient's right on the left)."""
    x, y, z = (int(c) for c in centre)
    axial = vol[:, :, z].T[::-1, ::-1]
    coronal = vol[:, y, :].T[::-1, ::-1]
    sagittal = vol[x, :, :].T[::-1, :]
    return [axial, coronal, sagittal]


def sample_figure(model_name: str, data_dir: Path, png: Path, log=print) -> dict:
    """The model's labels on the bundled sample beside the reference, as a PNG; returns the sample's Dice.

    Rows: axial slices at 30, 50 and 70 % of the head's height and the coronal slice through the
    head's centre. Columns: T1 | model labels | reference (brain mask with Colin's k-means tissue
    classes), labels drawn CSF dark grey, GM grey, WM white; the model's brain outline (labels > 0)
    is drawn in red on the T1 and the reference's in green (yellow where they coincide).
    """
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    from napari_vit3d.io.nifti import read_nifti
    from napari_vit3d.io.samples import sample_path

    model = load_model(model_name, device="cpu")
    vol = read_nifti(sample_path("colin27_t1.nii.gz"))
    pred = segment(vol, model, device="cpu", use_cache=False, return_probabilities=False).labels.data
    labels1, _, brain, _ = colin_1mm(data_dir)
    ref = np.where(brain, labels1, 0).astype(np.uint8)
    grey = np.array([0.0, 0.35, 0.65, 1.0])
    t1 = np.clip(vol.data.astype(np.float32) / np.percentile(vol.data, 99.5), 0, 1)
    head = np.argwhere(t1 > 0.2)
    lo, hi = head.min(0), head.max(0)
    centre = (lo + hi) // 2
    rows = []
    for kind, frac in (("axial", 0.3), ("axial", 0.5), ("axial", 0.7), ("coronal", 0.5)):
        c = centre.copy()
        if kind == "axial":
            c[2] = int(lo[2] + frac * (hi[2] - lo[2]))
        pick = 0 if kind == "axial" else 1
        s_t1 = _display_slices(t1, c)[pick]
        s_p = _display_slices(pred, c)[pick].astype(int)
        s_r = _display_slices(ref, c)[pick].astype(int)
        rgb = np.repeat(s_t1[..., None], 3, -1)
        bp, br = find_boundaries(s_p > 0, mode="inner"), find_boundaries(s_r > 0, mode="inner")
        rgb[bp] = [1.0, 0.15, 0.15]
        rgb[br] = [0.2, 1.0, 0.2]
        rgb[bp & br] = [1.0, 1.0, 0.2]
        tiles = [rgb, np.repeat(grey[s_p][..., None], 3, -1), np.repeat(grey[s_r][..., None], 3, -1)]
        rows.append(np.concatenate([_pad_tile(t) for t in tiles], 1))
    png.parent.mkdir(parents=True, exist_ok=True)
    imsave(str(png), (np.concatenate(rows, 0) * 255).astype(np.uint8), check_contrast=False)
    out = {"png": str(png), "brain_dice_vs_ref": dice(pred > 0, brain)}
    out.update({f"{n}_dice": dice(pred == i + 1, ref == i + 1) for i, n in enumerate(CLASSES)})
    log(f"wrote {png}: {out}")
    return out


def dino_heads_figure(model_name: str, data_dir: Path, png: Path, log=print) -> dict:
    from skimage.io import imsave

    from napari_vit3d.explain.attention import dino_heads
    from napari_vit3d.io.nifti import read_nifti
    from napari_vit3d.io.samples import sample_path

    model = load_model(model_name, device="cpu")
    vol = read_nifti(sample_path("colin27_t1.nii.gz"))
    heads = dino_heads(model, vol)
    att = np.asarray(heads.data, np.float32)  # (x, y, z, heads)
    labels1, _, brain, _ = colin_1mm(data_dir)
    region = np.zeros(labels1.shape, np.uint8)  # 0 air, 1 scalp/skull, 2 CSF, 3 GM, 4 WM
    region[labels1 >= 4] = 1
    region[brain] = 1 + labels1[brain]
    names = ("air", "scalp/skull", "CSF", "GM", "WM")
    share = []
    inside = att.sum(-1) > 0
    uniformity = []
    for h in range(att.shape[-1]):
        a = att[..., h] * inside
        tot = a.sum()
        share.append({n: float(a[region == i].sum() / tot) for i, n in enumerate(names)})
        v = att[..., h][inside]
        uniformity.append({"cv": float(v.std() / v.mean()), "max_over_mean": float(v.max() / v.mean())})
    voxel_share = {n: float((region[inside] == i).mean()) for i, n in enumerate(names)}
    t1 = vol.data.astype(np.float32)
    t1 = np.clip(t1 / np.percentile(t1, 99.5), 0, 1)
    com = np.array(np.nonzero(inside)).mean(1)
    rows = []
    for h in range(att.shape[-1]):
        a = att[..., h]
        lo, hi = np.percentile(a[inside], [1, 99.5])
        a = np.where(inside, (a - lo) / (hi - lo + 1e-12), 0.0)  # per-head contrast stretch inside the window
        tiles = []
        for s_t1, s_a in zip(_display_slices(t1, com), _display_slices(a, com)):
            rgb = np.where(s_a[..., None] > 0, 0.4 * s_t1[..., None] + 0.6 * _hot(s_a), s_t1[..., None])
            tile = np.zeros((217, 217, 3))
            tile[:rgb.shape[0], :rgb.shape[1]] = np.clip(rgb, 0, 1)
            tiles.append(tile)
        rows.append(np.concatenate(tiles, 1))
    img = (np.concatenate(rows, 0) * 255).astype(np.uint8)
    png.parent.mkdir(parents=True, exist_ok=True)
    imsave(str(png), img, check_contrast=False)
    log(f"wrote {png}: {att.shape[-1]} heads × (axial, coronal, sagittal)")
    return {"png": str(png), "layer": heads.metadata.get("layer"), "head_mass_share": share,
            "head_uniformity": uniformity,
            "voxel_share_in_window": voxel_share}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="segformer3d-brain", help="model name (bundled) or spec path")
    p.add_argument("--data-dir", required=True, help="folder with colin27/ and mni152_2009a/")
    p.add_argument("--n-synthetic", type=int, default=8)
    p.add_argument("--n-real", type=int, default=10)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--out", default=None, help="JSON results file")
    p.add_argument("--heads-png", default=None, help="also draw DINO per-head CLS attention (vit_seg models)")
    p.add_argument("--sample-png", default=None, help="also draw the model's labels on the bundled sample")
    p.add_argument("--labelmap-png", default=None, help="also draw the training label map's brain definition")
    p.add_argument("--reference", default="intracranial", choices=("intracranial", "tight"),
                   help="Colin27 brain reference: intracranial (default) or ch2bet's tight mask")
    args = p.parse_args(argv)
    REFERENCE["brain"] = args.reference
    data_dir = Path(args.data_dir)
    res = {}
    if args.n_synthetic or args.n_real:
        res = evaluate(args.model, data_dir, args.n_synthetic, args.n_real, args.seed)
        print(res["markdown"])
    if args.labelmap_png:
        res["labelmap"] = labelmap_figure(data_dir, Path(args.labelmap_png))
    if args.sample_png:
        res["sample"] = sample_figure(args.model, data_dir, Path(args.sample_png))
    if args.heads_png:
        res["dino_heads"] = dino_heads_figure(args.model, data_dir, Path(args.heads_png))
        print(json.dumps(res["dino_heads"], indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
