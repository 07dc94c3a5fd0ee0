"""DINO diagnostics: train-dino run folders (teacher collapsed?) or a bundled DINO ViT (heads show anatomy?).

**Run mode** — one or more ``train-dino`` run folders. For each run's final teacher (``RUN/ckpt.pt``)
on fresh multi-crop batches (step seeds never used in training; global crops only):

* ``sinkhorn_entropy``: mean per-crop entropy of the Sinkhorn-Knopp targets at the run's τ_t;
* ``centred_entropy`` / ``centred_batch_entropy``: the DINO paper's targets, softmax((t − c)/0.04)
  with the centre c = the batch mean of the teacher's outputs, per crop and of the batch mean
  (a collapsed teacher has both at log K; a healthy one keeps the first clearly below the second);
* ``top1_unique``: distinct argmax prototypes among the crops;
* ``cls_cosine``: mean (and min) cosine similarity of the teacher backbone's CLS embeddings between
  12 different bank volumes (central 64³ crop), beside the same for a random initialisation
  (near 1 when every scan maps to the same point).

    python benchmarks/dino_diagnostics.py runs/dino5 runs/dino7 --bank runs/bank/bank_s0_n200.npz

**Model mode** — a registered/bundled ViT with a CLS token (``vit_seg``; default ``dino-vit-brain``),
for the issue "a DINO-pretrained 3D ViT whose heads really show anatomy". About 7 minutes (10 with
``--end-to-end``) on one CPU thread:

    python benchmarks/dino_diagnostics.py --model dino-vit-brain --data-dir ../shared/data \
        --out benchmarks/results/dino_model.json --markdown benchmarks/results/dino_model.md \
        --figures docs/models/dino-vit-brain-heads

Scans: ``colin27`` (the real Colin27 head, in the model's training data); ``colin27-copy`` (a
re-oriented, rotated, re-sampled copy, ``eval_bundled.random_real_copy`` with
``default_rng(--seed)``); ``pydeface`` (the population-mean head of ``shared/data/pydeface``, never
seen in training, no labels); ``mni152`` (the MNI152 2009a T1, **skull-stripped**, in MNI space; used
in 3 and 4 only). ``random_real_copy`` draws a rotation (±20° per axis), a voxel-axis permutation
and flips, a spacing (0.9–1.5 mm, half of the copies with one 2.5–4 mm axis) and a sub-voxel shift,
builds a new voxel→world affine from them, and samples Colin27 (and its labels, nearest) at every
new voxel centre *through the two affines*: the head stays where it was in world mm, only the voxel
grid changes, so a world point names the same anatomy in Colin27 and in the copy. (The model grid
of the copy follows the copy's axes re-oriented to the closest RAS, so it is tilted by up to 20°
against Colin27's.)

Three ways of running the fixed-window ViT (64³ voxels at 2 mm, an 8³ patch grid) on a scan larger
than its window; every section says which it uses:

* **one pass** (``coverage="scan"``, the default of ``explain.dino_heads`` / ``feature_similarity``;
  ``explain.whole_scan.whole_scan_session``): the whole padded model grid, its far faces zero-padded
  to a multiple of the patch, is *one* window; the positional embedding is resized trilinearly to
  its token grid (``models.vit_seg.vit_tokens``), so every token attends to every other over the
  whole head in one softmax. A window size the network never saw in training. Above
  ``whole_scan.MAX_WHOLE_SCAN_TOKENS`` (6,000; 4,096 when this ran) tokens the library falls back to tiles; the rotated
  Colin27 copies have a larger model grid (the bounding box of a tilted head: 3,700–5,200 tokens),
  so for this benchmark the cap is raised to ``--max-tokens`` (default 6,000) while it runs, and
  each scan records its token count and ``library_default_coverage`` (what ``coverage="scan"``
  gives a user with the library's cap: "tiles" above the cap). The coverage actually used is
  recorded (``coverage_used``) and the run stops if it is not "scan".
* **tiles** (``coverage="tiles"``, the earlier default): native windows every half window
  (``explain.tile_starts``), each window's token map stitched in with centre-weighted averaging
  (``whole_scan.stitch``): side by side, not the output of one pass.
* **window** (``coverage="window"``): one native window only (here: centred on the head centre).

Structures (voxel masks on each scan's own grid): Colin-derived scans, from
``synthesis.colin_label_map_1mm`` (k-means silver labels): ``air`` (sub-label 0, outside the head),
``skull/scalp`` (head minus the intracranial brain mask: sub-labels 4–6, bone, scalp, muscle, fat,
neck), ``CSF``, ``GM``, ``WM`` (``SUB_TO_CLASS`` 1, 2, 3 inside the intracranial mask; "CSF" includes
the sulcal/peripheral CSF the intracranial mask adds). pydeface: ``air`` (outside an Otsu head mask,
built as ``head_label_map_1mm`` builds its head) and ``head`` (inside) — nothing finer can be defined
there without a model, so no brain/tissue structure is reported for it.

What is reported (JSON ``--out``; markdown ``--markdown``; PNGs ``--figures PREFIX``); every DINO
number beside the same for a randomly initialised network of the same spec (``build_network``,
torch seed 0):

1. ``heads``: ``heads[coverage][net][scan]`` for coverage ``scan`` (one pass), ``tiles`` and
   ``window``, net ``dino`` / ``random_init``, on colin27, colin27-copy and pydeface. Per head, the
   DINO head map (``explain.dino_heads``: last block's CLS attention over the patch tokens; one pass
   and tiles × the tokens of the pass / window, so 1 = uniform) on the scan's own grid, normalised
   to a distribution over the scan's voxels; per structure its mass share, volume share and
   enrichment = mass share / volume share. A head *concentrates on a structure* when one structure
   holds ≥ 50 % of its mass and its enrichment is ≥ 1.5; counted per scan and coverage.
   ``tiles`` gives every window the same total mass, so air-only windows bring air mass; one pass
   spreads one softmax over the whole grid, so a head may also put mass on the zero padding around
   the resampled scan (``padding_share``: the share of each head's one-pass mass on padded-model-grid
   voxels outside ``model_input.valid``, which the scan-grid shares leave out).
   ``window``: the shares inside the one window centred on the head centre (volume shares of that
   window), no stitching and no resizing.
   **Figures** ``PREFIX-<scan>.png`` (one per scan: colin27, colin27-copy, pydeface) show the
   **one-pass** maps (the default a user sees): one panel per head, an axial (left) and a coronal
   (right) slice through the scan's head centre (centroid of the head mask), the scan's voxel axes
   re-ordered/flipped to the closest RAS (the copy's slices are therefore tilted by its rotation),
   drawn in mm (anisotropic voxels shown to scale), patient right on the image right
   (neurological), superior/anterior up. Gray = the T1, colour (inferno, opacity ∝ value) = that
   head's map from 0 to its 99.5th percentile over the scan (1 = a uniform share of the pass's
   tokens). The panel title gives the structure holding most of the head's one-pass mass, its mass
   share and enrichment, and "✓" when the head concentrates on it.
2. ``faces`` (tiles only: a property of the native window): for every tiling window of a scan, each
   head's CLS→patch attention of the last block (``ExplainSession.capture(start).row(L,
   "cls").spatial``, (heads, 8, 8, 8)) renormalised over the 512 patches; the share on the outer
   shell of tokens (any index 0 or 7; uniform 1 − (6/8)³ = 0.578) and on each face alone (uniform
   1/8; the model grid is RAS, so the last axis' index 0 is the *inferior* face), averaged over the
   windows.
3. ``cls_cosine``: cosine of the CLS embeddings (``forward_features(x)[0][:, 0]``, after the final
   norm) between the four scans, ``window``: of the native window centred on each scan's head
   centre; ``one_pass``: of the one pass over the whole scan.
4. ``knn``: 64 landmark voxels drawn inside Colin27's intracranial brain mask (``--seed``); the
   landmark's query feature on Colin27, its nearest patch (cosine) in a gallery of patch features
   of the other scan, and the distance (mm) from that patch's centre to the landmark's world point,
   median and 90th percentile. Two feature kinds:
   ``tiles``: query = the final-norm patch token holding the landmark in the native window centred
   on it; gallery = all patch tokens of all tiling windows of the other scan (centres: window voxel
   3.5 + 8·i, to world by ``window_affine(start)``).
   ``one_pass``: query = the token holding the landmark in the one pass over Colin27; gallery = all
   tokens of the one pass over the other scan (``similarity.patch_features(whole, (0, 0, 0))``;
   centres: padded-model-grid voxel 3.5 + 8·i, to world by ``whole.window_affine((0, 0, 0))``).
   For colin27 → colin27 the one-pass query token *is* a gallery token (same pass), so that pair
   is not reported for one pass.
   Pairs: Colin27 → Colin27 itself (tiles: same scan and grid, only the window placement differs),
   Colin27 → its copy (same world by construction) and Colin27 → MNI152 (both in MNI space, only
   approximately aligned: Colin27 is one registered brain, MNI152 an average, so a few mm of true
   mismatch remain; MNI152 has no skull). Beside each: the random initialisation, *chance* (200
   random gallery patches inside the other scan's head mask per landmark) and the *floor* (the
   gallery patch centre nearest the landmark: patch centres lie on a 16 mm lattice, so even a
   perfect retrieval is several mm off); chance and floor per gallery, since the two galleries have
   different patch centres.
5. ``probe``: a linear probe on frozen patch features (final norm, D = 144) → per-patch class
   fractions (0 bg, 1 CSF, 2 GM, 3 WM of the patch's 8³ voxels; softmax + cross-entropy on the soft
   targets, features standardised, full-batch L-BFGS), trained on 4 copies (seeds 100–103) and
   evaluated on 3 others (seeds 200–202); argmax per voxel, Dice per class against the labels
   resampled (nearest) onto the padded model grid, inside the scan's field of view (``valid``).
   ``probe.tiles``: features of every tiling window, patch logits placed trilinearly and the
   windows stitched (``whole_scan.stitch``). ``probe.one_pass``: the tokens of one pass over each
   copy (labels zero-padded as background like the input), logits placed trilinearly on the padded
   grid. Feature sets, for each: the DINO encoder, the random initialisation, the raw 8³ patch
   intensities (512 numbers, a pixel baseline) and an *oracle* (the true patch fractions as
   logits, placed the same way): the ceiling of any probe that predicts one fraction vector per
   16 mm patch on that lattice. With ``--end-to-end SPEC`` (the same architecture and arguments trained end
   to end from a random initialisation, encoder included: ``training/configs/dino-vit-brain-e2e.json``)
   its frozen features get the same probe (``end_to_end``): the supervised reference the issue's goal
   compares the DINO encoder with.
   ``probe.voxel``: a finer read-out, per 2 mm voxel instead of per 16 mm patch: the one-pass tokens
   placed trilinearly at each voxel (``ExplainSession.place_tokens``) plus the voxel's input intensity
   and its 3³ and 5³ box means → the voxel's class (one-hot targets, same L-BFGS fit; 20,000 training
   voxels per copy, every field-of-view voxel of the test copies scored); ``image`` is the three
   intensity numbers alone, so what the tokens add is the gap above it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from napari_vit3d.inference.preprocess import normalize  # noqa: E402
from napari_vit3d.models.registry import build_network  # noqa: E402
from napari_vit3d.models.vit_seg import DINOHead  # noqa: E402
from napari_vit3d.training.synthesis import load_bank  # noqa: E402
from napari_vit3d.training.train_dino import (  # noqa: E402
    DINOModel,
    _spec,
    encode_cls,
    entropy,
    full_config,
    make_views,
    sinkhorn_targets,
)

# =========================================================================================== run mode

def _entropy(p: torch.Tensor) -> torch.Tensor:
    return entropy(p, eps=1e-30)


def teacher_of(run: Path) -> tuple[DINOModel, dict]:
    cfg = full_config(json.loads((run / "config.json").read_text()))
    net = build_network(_spec(cfg))
    head = DINOHead(int(net.hidden_size), int(cfg["out_dim"]), int(cfg["head_hidden"]), int(cfg["head_bottleneck"]))
    teacher = DINOModel(net, head)
    state = torch.load(run / "ckpt.pt", map_location="cpu", weights_only=True)
    teacher.load_state_dict(state["modules"]["teacher"])
    return teacher.eval(), {**cfg, "_step": int(state["step"])}


@torch.no_grad()
def diagnose(run: Path, images: np.ndarray, *, batches: int = 2, batch_size: int = 16) -> dict:
    teacher, cfg = teacher_of(run)
    spec = _spec(cfg)
    img_size = tuple(int(s) for s in teacher.network.img_size)
    k = int(cfg["out_dim"])
    rows = {"sinkhorn_entropy": [], "centred_entropy": [], "centred_batch_entropy": [], "top1_unique": []}
    for b in range(batches):
        views = make_views(images, 12345, 10**6 + b, {**cfg, "batch_size": batch_size}, img_size, spec.normalization)
        t = teacher(views[:int(cfg["n_global"])])
        rows["sinkhorn_entropy"].append(float(_entropy(sinkhorn_targets(t, float(cfg["teacher_temp"]),
                                                                         int(cfg["sinkhorn_iters"]))).mean()))
        p = F.softmax((t - t.mean(0, keepdim=True)) / 0.04, dim=-1)
        rows["centred_entropy"].append(float(_entropy(p).mean()))
        rows["centred_batch_entropy"].append(float(_entropy(p.mean(0))))
        rows["top1_unique"].append(int(t.argmax(-1).unique().numel()))
    out = {k_: float(np.mean(v)) for k_, v in rows.items()}
    out.update(run=str(run), step=cfg["_step"], log_k=math.log(k), k=k, crops=int(cfg["n_global"]) * batch_size)
    xs = []
    for i in range(12):
        x = normalize(images[i].astype(np.float32)[..., None] / 255.0, spec.normalization)[..., 0]
        c = [(s - w) // 2 for s, w in zip(x.shape, img_size)]
        xs.append(torch.from_numpy(np.ascontiguousarray(x[c[0]:c[0] + img_size[0], c[1]:c[1] + img_size[1],
                                                           c[2]:c[2] + img_size[2]]))[None, None])
    x = torch.cat(xs)
    torch.manual_seed(0)
    fresh = build_network(spec).eval()
    for name, net in (("cls_cosine", teacher.network), ("cls_cosine_random_init", fresh)):
        f = F.normalize(encode_cls(net.encoder, x), dim=1)
        s = (f @ f.T)[~torch.eye(12, dtype=torch.bool)]
        out[name] = {"mean": float(s.mean()), "min": float(s.min())}
    return out


# =========================================================================================== model mode

UNIFORM_SHELL = 1.0 - (6 / 8) ** 3
FACES = ("left", "right", "posterior", "anterior", "inferior", "superior")  # (axis, index 0 / last) in RAS
CONCENTRATE_SHARE, CONCENTRATE_ENRICHMENT = 0.5, 1.5
COLIN_STRUCTURES = ("air", "skull/scalp", "CSF", "GM", "WM")
#: sub-label (0 air, 1 CSF, 2 GM, 3 WM, 4..6 outside the brain) -> index into COLIN_STRUCTURES
SUB_TO_STRUCTURE = np.array([0, 2, 3, 4, 1, 1, 1], dtype=np.int64)


def _log(msg: str) -> None:
    print(msg, flush=True)


def otsu_head(t1: np.ndarray) -> np.ndarray:
    """Head mask without a model: T1 > Otsu/2, closed, largest component, holes filled (also per slice),
    as ``synthesis.head_label_map_1mm`` builds its head."""
    from scipy import ndimage

    from napari_vit3d.training import synthesis as S

    head = t1 > 0.5 * S.otsu_threshold(t1)
    head = S.clean_mask(ndimage.binary_closing(head, iterations=2))
    for k in range(head.shape[2]):
        head[:, :, k] = ndimage.binary_fill_holes(head[:, :, k])
    return head


def _centroid_world(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    c = np.argwhere(mask).mean(0)
    return affine[:3, :3] @ c + affine[:3, 3]


def _end_to_end_like(spec, name_or_path):
    """The end-to-end-trained reference: same architecture and arguments as ``spec`` (else the comparison says
    nothing about pre-training), its own weights."""
    from napari_vit3d.models import load_model

    m = load_model(name_or_path)
    if (m.spec.architecture, m.spec.arch_kwargs) != (spec.architecture, spec.arch_kwargs):
        raise SystemExit(f"--end-to-end {name_or_path}: {m.spec.architecture} {m.spec.arch_kwargs} is not the "
                         f"network of the DINO model ({spec.architecture} {spec.arch_kwargs})")
    return m


def _random_like(spec):
    """A randomly initialised network of ``spec`` (torch seed 0), shaped like a loaded model."""
    from napari_vit3d.models.registry import build_network as _build

    torch.manual_seed(0)
    return types.SimpleNamespace(network=_build(spec).eval(), spec=spec, weights_sha256=None)


def build_model_scans(data_dir: Path, seed: int) -> tuple[list[dict], dict]:
    """The scans of model mode (see the module docstring) and Colin27's 1 mm arrays."""
    import nibabel as nib

    from benchmarks.eval_bundled import random_real_copy
    from napari_vit3d.io.volume import Volume
    from napari_vit3d.training import synthesis as S

    sub, t1, icv, aff = S.colin_label_map_1mm(data_dir)
    colin = {"sub": sub, "t1": t1, "icv": icv, "affine": aff}
    scans = [{"name": "colin27", "volume": Volume(data=t1.astype(np.float32), affine=aff, name="colin27"),
              "structure": SUB_TO_STRUCTURE[sub], "structures": COLIN_STRUCTURES, "head": sub > 0,
              "note": "real Colin27 head (in the training data)"}]
    vol, _, sub_c, desc = random_real_copy(t1, icv, sub, aff, np.random.default_rng(seed))
    vol.name = "colin27-copy"
    scans.append({"name": "colin27-copy", "volume": vol, "structure": SUB_TO_STRUCTURE[sub_c],
                  "structures": COLIN_STRUCTURES, "head": sub_c > 0, "copy": desc,
                  "note": f"re-oriented/rotated/re-sampled Colin27 copy (rng seed {seed}), "
                          f"spacing {desc['spacing_mm']}"})
    for name, rel, note in (("pydeface", "pydeface/mean_reg2mean.nii.gz", "population-mean head, unseen, no labels"),
                            ("mni152", S.MNI_T1, "MNI152 2009a template T1, skull-stripped")):
        img = nib.load(str(Path(data_dir) / rel))
        data = np.asarray(img.dataobj, np.float32)
        head = otsu_head(data)
        scans.append({"name": name, "volume": Volume(data=data, affine=np.asarray(img.affine, float), name=name),
                      "structure": head.astype(np.int64), "structures": ("air", "head"), "head": head, "note": note})
    for s in scans:
        s["centre_world"] = _centroid_world(s["head"], s["volume"].affine)
    return scans, colin


# ------------------------------------------------------------------------------------ 1. head mass

def head_structure_mass(maps: np.ndarray, structure: np.ndarray, names) -> dict:
    """Per head (last axis of ``maps``): mass share, volume share and enrichment of each structure."""
    n_heads = maps.shape[-1]
    lab = structure.reshape(-1)
    vol_share = np.bincount(lab, minlength=len(names)).astype(np.float64) / lab.size
    heads = []
    for h in range(n_heads):
        m = np.clip(maps[..., h].reshape(-1).astype(np.float64), 0, None)
        mass = np.bincount(lab, weights=m, minlength=len(names))
        share = mass / max(mass.sum(), 1e-30)
        enr = np.where(vol_share > 0, share / np.where(vol_share > 0, vol_share, 1), 0.0)
        top = int(np.argmax(share))
        heads.append({"head": h, "mass_share": dict(zip(names, share.round(4).tolist())),
                      "enrichment": dict(zip(names, enr.round(3).tolist())), "top": names[top],
                      "concentrates_on": names[top] if share[top] >= CONCENTRATE_SHARE
                      and enr[top] >= CONCENTRATE_ENRICHMENT else None})
    return {"volume_share": dict(zip(names, vol_share.round(4).tolist())), "heads": heads,
            "n_concentrating": sum(h["concentrates_on"] is not None for h in heads)}


def centred_window_mass(model, scan: dict, sess) -> dict:
    """Head mass on structures inside one native window only (``coverage="window"``, centred on the head
    centre): no stitching, no resized positional embedding, and no air-only windows each bringing a full
    window's mass (``coverage="tiles"`` gives every window the same total mass)."""
    from napari_vit3d.explain import dino_heads

    maps = dino_heads(model, scan["volume"], world=scan["centre_world"], coverage="window", session=sess,
                      reuse_window=False)
    start = tuple(maps.metadata["window"]["start_model_voxel"])
    inside = sess.to_scan(sess.place_window(np.ones((1, *sess.roi), np.float32), start), order=0)[..., 0] > 0.5
    out = head_structure_mass(maps.data[inside], scan["structure"][inside], scan["structures"])
    out["window"] = maps.metadata["window"]
    return out


def one_pass_heads(model, scan: dict, sess) -> tuple[np.ndarray, dict]:
    """``dino_heads(coverage="scan")`` on the scan grid, checked to be one pass, and per head the share of
    the pass's CLS→patch mass on the padded model grid's padding (voxels outside ``model_input.valid``:
    the zeros around the resampled scan), which the scan-grid maps leave out."""
    from napari_vit3d.explain import dino_heads
    from napari_vit3d.explain.whole_scan import whole_scan_session

    v = dino_heads(model, scan["volume"], session=sess, coverage="scan")
    if v.metadata["coverage"] != "scan":
        raise SystemExit(f"{scan['name']}: dino_heads fell back to {v.metadata['coverage']!r} (scan too large "
                         "for one pass)")
    whole = whole_scan_session(sess)
    row = whole.capture((0, 0, 0)).row(None, "cls")
    placed = whole.place_tokens(np.moveaxis(row.spatial.numpy(), 0, -1), row.key_grid, (0, 0, 0))
    inside = np.zeros(placed.shape[1:], bool)
    inside[sess.model_input.valid] = True
    tot = placed.reshape(len(placed), -1).sum(1)
    outside = placed[:, ~inside].sum(1) / np.maximum(tot, 1e-30)
    info = {"coverage_used": v.metadata["coverage"], "token_grid": v.metadata["token_grid"],
            "window_size_voxels": v.metadata["window_size"], "tokens": int(np.prod(v.metadata["token_grid"])),
            "padding_share": outside.round(4).tolist(),
            "attention_cls_to_cls": np.round(v.metadata["attention_cls_to_cls"], 4).tolist()}
    return v.data, info


def _ras_view(arr: np.ndarray, affine: np.ndarray):
    """``arr`` (x, y, z[, C]) re-ordered/flipped to the closest RAS, its affine and spacing."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    ornt = io_orientation(affine)
    out = apply_orientation(arr, ornt)
    aff = affine @ inv_ornt_aff(ornt, arr.shape[:3])
    return out, aff, nib.affines.voxel_sizes(aff)


def head_figure(scan: dict, maps: np.ndarray, mass: dict, png: Path, model_name: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    t1, aff, sp = _ras_view(scan["volume"].data, scan["volume"].affine)
    hm, _, _ = _ras_view(maps, scan["volume"].affine)
    c = np.linalg.solve(aff[:3, :3], scan["centre_world"] - aff[:3, 3])
    _, j, k = (int(np.clip(round(c[a]), 0, t1.shape[a] - 1)) for a in range(3))
    lo, hi = np.percentile(t1[t1 > 0] if np.any(t1 > 0) else t1, [1, 99.5])
    g = np.clip((t1 - lo) / max(hi - lo, 1e-6), 0, 1)
    # (x, y[, heads]) slices → image rows = second axis, columns = first; the heads axis stays last
    views = [("axial", g[:, :, k].T, hm[:, :, k].transpose(1, 0, 2), (sp[0], sp[1])),
             ("coronal", g[:, j, :].T, hm[:, j, :].transpose(1, 0, 2), (sp[0], sp[2]))]
    n_heads = maps.shape[-1]
    cols = 3
    rows = int(math.ceil(n_heads / cols))
    fig = plt.figure(figsize=(5.0 * cols, 3.0 * rows + 0.5), layout="constrained")
    subs = fig.subfigures(rows, cols, squeeze=False)
    cmap = plt.get_cmap("inferno")
    for h in range(n_heads):
        vmax = float(np.percentile(maps[..., h], 99.5)) or 1.0
        info = mass["heads"][h]
        top = info["top"]
        mark = " ✓" if info["concentrates_on"] else ""
        sf = subs[h // cols, h % cols]
        sf.suptitle(f"head {h}: most mass on {top} {100 * info['mass_share'][top]:.0f}% "
                    f"(×{info['enrichment'][top]:.2f}){mark}", fontsize=11)
        for ax, (vname, gray, m, (sx, sy)) in zip(sf.subplots(1, 2), views):
            ext = [0, gray.shape[1] * sx, 0, gray.shape[0] * sy]
            ax.imshow(gray, cmap="gray", origin="lower", extent=ext, interpolation="bilinear")
            val = np.clip(m[..., h] / vmax, 0, 1)
            rgba = cmap(val)
            rgba[..., 3] = 0.85 * val
            ax.imshow(rgba, origin="lower", extent=ext, interpolation="bilinear")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{vname} (0 … {vmax:.2f})", fontsize=9)
    for h in range(n_heads, rows * cols):
        subs[h // cols, h % cols].set_visible(False)
    note = (f"\n({mass['tokens']} tokens, above the library's one-pass cap: there coverage='scan' falls back to the "
            "stitched tiles; one pass forced here)" if scan.get("library_default") == "tiles" else "")
    fig.suptitle(f"{model_name} DINO heads on {scan['name']}: last block CLS attention, one pass over the whole scan "
                 f"(positional embedding resized)\n{mass['n_concentrating']} of {n_heads} heads concentrate "
                 f"(≥ 50 % of the mass on one structure, ≥ 1.5× enrichment){note}", fontsize=11)
    png.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    Image.open(buf).convert("RGB").quantize(256).save(png, optimize=True)  # palette PNG: a third of the bytes
    plt.close(fig)


# ------------------------------------------------------------------------------------ 2. faces

def face_shares(sess, starts) -> dict:
    """Mean over windows of each head's share of CLS→patch attention on the token shell and on each face."""
    shell = np.zeros((8, 8, 8), bool)
    shell[[0, -1], :, :] = shell[:, [0, -1], :] = shell[:, :, [0, -1]] = True
    rows = []
    for start in starts:
        row = sess.capture(start).row(None, "cls")
        sp = row.spatial.numpy().astype(np.float64)
        if row.key_grid.shape != (8, 8, 8):
            raise SystemExit(f"face shares assume an 8³ patch grid, got {row.key_grid.shape}")
        p = sp / sp.sum((1, 2, 3), keepdims=True)
        faces = []
        for ax in range(3):
            for idx in (0, -1):
                faces.append(np.take(p, idx, axis=ax + 1).sum((1, 2)))
        rows.append(np.stack([p[:, shell].sum(1), *faces]))  # (7, heads)
    r = np.mean(rows, 0)
    out = {"windows": len(starts), "uniform_shell": round(UNIFORM_SHELL, 4), "uniform_face": 0.125,
           "shell": r[0].round(4).tolist(), "shell_min_over_windows": np.min(rows, 0)[0].round(4).tolist(),
           "shell_max_over_windows": np.max(rows, 0)[0].round(4).tolist()}
    for f, name in enumerate(FACES):
        out[name] = r[1 + f].round(4).tolist()
    return out


# ------------------------------------------------------------------------------------ 3. CLS

@torch.no_grad()
def cls_embedding(sess, world) -> np.ndarray:
    tokens, _ = sess.network.forward_features(sess.window_tensor(sess.centred_window(world)))
    return tokens[0, 0].float().numpy()


def cosine_matrix(vecs: list[np.ndarray]) -> np.ndarray:
    f = np.stack(vecs).astype(np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    return f @ f.T


# ------------------------------------------------------------------------------------ 4. k-NN

def gallery(sess) -> tuple[np.ndarray, np.ndarray]:
    """All patch tokens of all tiling windows (unit-normalised, (M, D)) and their world-mm centres (M, 3)."""
    from napari_vit3d.explain.similarity import patch_features
    from napari_vit3d.explain.whole_scan import tile_starts

    feats, centres = [], []
    for start in tile_starts(sess.grid_shape, sess.roi):
        f, grid = patch_features(sess, start)
        idx = np.stack(np.unravel_index(np.arange(grid.n_tokens), grid.shape), 1)
        vox = grid.centre(idx)  # window voxel = 3.5 + 8·i
        a = sess.window_affine(start)
        feats.append(f.reshape(-1, f.shape[-1]))
        centres.append(vox @ a[:3, :3].T + a[:3, 3])
    f = np.concatenate(feats).astype(np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12), np.concatenate(centres)


def one_pass_features(sess) -> dict:
    """The tokens of one pass over the whole padded scan (``similarity.patch_features(whole, (0, 0, 0))``):
    unit-normalised features (M, D), their world-mm centres (M, 3), the token grid and the whole session."""
    from napari_vit3d.explain.similarity import patch_features
    from napari_vit3d.explain.whole_scan import whole_scan_session

    whole = whole_scan_session(sess)
    if whole is None:
        raise SystemExit(f"{sess.volume.name}: too large for one pass")
    f, grid = patch_features(whole, (0, 0, 0))
    idx = np.stack(np.unravel_index(np.arange(grid.n_tokens), grid.shape), 1)
    a = whole.window_affine((0, 0, 0))
    f = f.reshape(-1, f.shape[-1]).astype(np.float64)
    return {"features": f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12),
            "centres": grid.centre(idx) @ a[:3, :3].T + a[:3, 3], "grid": grid, "whole": whole}


def one_pass_query(op: dict, points: np.ndarray) -> np.ndarray:
    """The one-pass token holding each world point (rows of ``op["features"]``, unit-normalised)."""
    whole, grid = op["whole"], op["grid"]
    return np.stack([op["features"][grid.flat(grid.nearest_token(whole.model_voxel(w)))] for w in points])


def query_features(sess, points: np.ndarray) -> np.ndarray:
    """The patch token holding each world point, from the window centred on it (unit-normalised)."""
    from napari_vit3d.explain.similarity import patch_features

    cache, out = {}, []
    for w in points:
        start = sess.centred_window(w)
        if start not in cache:
            cache[start] = patch_features(sess, start)
        f, grid = cache[start]
        out.append(f[grid.nearest_token(sess.model_voxel(w) - np.asarray(start, float))])
    f = np.stack(out).astype(np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _inside(scan: dict, world: np.ndarray) -> np.ndarray:
    a = scan["volume"].affine
    v = np.floor(np.linalg.solve(a[:3, :3], (world - a[:3, 3]).T).T + 0.5).astype(int)
    shape = np.asarray(scan["head"].shape)
    ok = np.all((v >= 0) & (v < shape), 1)
    res = np.zeros(len(world), bool)
    res[ok] = scan["head"][tuple(v[ok].T)]
    return res


def _dist_stats(d: np.ndarray) -> dict:
    return {"median_mm": round(float(np.median(d)), 2), "p90_mm": round(float(np.percentile(d, 90)), 2),
            "mean_mm": round(float(np.mean(d)), 2)}


def knn_retrieval(points, q_by_net: dict, gal_by_net: dict, other: dict, rng) -> dict:
    out = {}
    centres = None
    for net, q in q_by_net.items():
        g, centres = gal_by_net[net]
        hit = np.argmax(q @ g.T, axis=1)
        out[net] = _dist_stats(np.linalg.norm(centres[hit] - points, axis=1))
    inside = np.flatnonzero(_inside(other, centres))
    draws = rng.choice(inside, size=(len(points), 200))
    out["chance"] = _dist_stats(np.linalg.norm(centres[draws] - points[:, None], axis=2).ravel())
    out["floor"] = _dist_stats(np.min(np.linalg.norm(centres[None] - points[:, None], axis=2), axis=1))
    out["gallery_patches"] = int(len(centres))
    out["gallery_patches_in_head"] = int(len(inside))
    return out


# ------------------------------------------------------------------------------------ 5. probe

def _patches(a: np.ndarray) -> np.ndarray:
    """(8a, 8b, 8c) array → (a·b·c patches, 512 voxels), patches in row-major token order."""
    x, y, z = (s // 8 for s in a.shape[:3])
    return a.reshape(x, 8, y, 8, z, 8).transpose(0, 2, 4, 1, 3, 5).reshape(x * y * z, 512)


def probe_scan(seed: int, colin: dict, model, rand, e2e=None) -> dict:
    """One Colin27 copy prepared for the probe: per tiling window (``windows``) and for the one pass over the
    whole padded grid (``one_pass``), the features of each set and the patches' class fractions. ``e2e``: a
    network of the same spec trained end to end; its features are added as ``"end_to_end"``."""
    from benchmarks.eval_bundled import random_real_copy
    from napari_vit3d.explain import ExplainSession
    from napari_vit3d.explain.similarity import patch_features
    from napari_vit3d.explain.whole_scan import tile_starts, whole_scan_session
    from napari_vit3d.io.resample import resample_array
    from napari_vit3d.training.synthesis import SUB_TO_CLASS

    vol, _, sub, _ = random_real_copy(colin["t1"], colin["icv"], colin["sub"], colin["affine"],
                                      np.random.default_rng(seed))
    sess = ExplainSession(model, vol)
    rsess = ExplainSession(rand, vol, model_input=sess.model_input, roi_size=sess.roi)
    others = {"random": rsess}
    if e2e is not None:
        others["end_to_end"] = ExplainSession(e2e, vol, model_input=sess.model_input, roi_size=sess.roi)
    labels = resample_array(SUB_TO_CLASS[sub], vol.affine, sess.model_input.affine, sess.grid_shape, order=0)
    win = {}
    for start in tile_starts(sess.grid_shape, sess.roi):
        sl = tuple(slice(s, s + r) for s, r in zip(start, sess.roi))
        onehot = np.eye(4, dtype=np.float32)[_patches(labels[sl])]  # (512, 512, 4)
        f_d, grid = patch_features(sess, start)
        win[start] = {"dino": f_d.reshape(-1, f_d.shape[-1]),
                      "intensity": _patches(sess.window_tensor(start)[0, 0].numpy()),
                      "target": onehot.mean(1), "grid": grid}
        for key, ss in others.items():
            f = patch_features(ss, start)[0]
            win[start][key] = f.reshape(-1, f.shape[-1])
    one = {}
    for key, ss in (("dino", sess), *others.items()):
        whole = whole_scan_session(ss)
        f, grid = patch_features(whole, (0, 0, 0))
        one[key] = f.reshape(-1, f.shape[-1])
    pad = np.zeros(whole.grid_shape, labels.dtype)                  # the padding is background, like the input's
    pad[tuple(slice(0, g) for g in labels.shape)] = labels
    one.update(intensity=_patches(whole.window_tensor((0, 0, 0))[0, 0].numpy()),
               target=np.eye(4, dtype=np.float32)[_patches(pad)].mean(1), grid=grid, whole=whole)
    return {"seed": seed, "session": sess, "labels": labels, "windows": win, "one_pass": one}


def fit_probe(x: np.ndarray, y: np.ndarray, *, steps: int = 300, l2: float = 1e-4):
    """Linear softmax map from features to class fractions (soft-target cross-entropy, L-BFGS)."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy(((x - mu) / sd).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.float32))
    lin = torch.nn.Linear(x.shape[1], y.shape[1])
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -(yt * F.log_softmax(lin(xt), dim=1)).sum(1).mean() + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = float(-(yt * F.log_softmax(lin(xt), dim=1)).sum(1).mean())
    w, b = lin.weight.detach().numpy().T, lin.bias.detach().numpy()
    return (lambda f: ((f - mu) / sd) @ w + b), loss


def probe_dice(scan: dict, predict, key: str, kind: str = "tiles") -> list[float]:
    """Dice per class of the probe's argmax on one copy; ``kind`` "tiles" (windows stitched) or "one_pass"."""
    from napari_vit3d.explain.whole_scan import stitch

    sess = scan["session"]
    if kind == "one_pass":
        o = scan["one_pass"]
        tok = predict(o[key]).reshape(*o["grid"].shape, -1).astype(np.float32)
        logits = o["whole"].place_tokens(tok, o["grid"], (0, 0, 0))
        logits = logits[(slice(None),) + tuple(slice(0, g) for g in sess.grid_shape)]
    else:
        def window_maps(start):
            w = scan["windows"][tuple(start)]
            return predict(w[key]).reshape(*w["grid"].shape, -1).astype(np.float32), w["grid"]

        logits, _ = stitch(sess, window_maps)
    valid = sess.model_input.valid
    return _class_dice(np.argmax(logits, axis=0)[valid], scan["labels"][valid])


def _class_dice(pred: np.ndarray, ref: np.ndarray) -> list[float]:
    out = []
    for c in range(4):
        a, b = pred == c, ref == c
        s = int(a.sum()) + int(b.sum())
        out.append(2.0 * int((a & b).sum()) / s if s else 1.0)
    return out


VOXEL_PROBE_SAMPLES = 20_000   # training voxels drawn per copy (inside its field of view)


def _voxel_intensity(scan: dict) -> np.ndarray:
    """(X·Y·Z, 3) on the model grid: the network's input intensity and its 3³ and 5³ box means (computed
    once per copy, kept in ``scan``)."""
    from scipy import ndimage

    if "voxel_intensity" not in scan:
        sess = scan["session"]
        img = scan["one_pass"]["whole"].window_tensor((0, 0, 0))[0, 0].numpy()
        img = img[tuple(slice(0, g) for g in sess.grid_shape)].astype(np.float32)
        scan["voxel_intensity"] = np.stack([img, ndimage.uniform_filter(img, 3), ndimage.uniform_filter(img, 5)],
                                           -1).reshape(-1, 3)
    return scan["voxel_intensity"]


def _voxel_tokens(scan: dict, key: str) -> np.ndarray:
    """(D, X, Y, Z): the one-pass tokens of ``key`` placed trilinearly at every model-grid voxel."""
    o, sess = scan["one_pass"], scan["session"]
    f = o["whole"].place_tokens(o[key].reshape(*o["grid"].shape, -1), o["grid"], (0, 0, 0))
    return f[(slice(None),) + tuple(slice(0, g) for g in sess.grid_shape)]


def _voxel_features(scan: dict, key: str, pick: np.ndarray | None = None) -> np.ndarray:
    inten = _voxel_intensity(scan)
    if key == "image":
        return inten if pick is None else inten[pick]
    f = _voxel_tokens(scan, key)
    f = f.reshape(f.shape[0], -1)
    if pick is not None:
        return np.concatenate([f[:, pick].T, inten[pick]], 1)
    return np.concatenate([f.T, inten], 1)


def _valid_mask(scan: dict) -> np.ndarray:
    """Flat bool mask of the model-grid voxels that hold the scan (``model_input.valid``: slices)."""
    sess = scan["session"]
    m = np.zeros(sess.grid_shape, bool)
    m[sess.model_input.valid] = True
    return m.ravel()


def voxel_probe(train: list[dict], test: list[dict], key: str, seed: int = 0) -> dict:
    """Per-voxel linear probe: the one-pass tokens placed at each voxel (trilinear) plus the voxel's
    intensity and its 3³/5³ means (``key`` "image": the intensities alone) → the voxel's class; Dice per
    class on the held-out copies (all voxels in the field of view)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for t in train:
        idx = np.flatnonzero(_valid_mask(t))
        pick = np.sort(rng.choice(idx, min(VOXEL_PROBE_SAMPLES, len(idx)), replace=False))
        xs.append(_voxel_features(t, key, pick))
        ys.append(np.eye(4)[t["labels"].ravel()[pick]])
    x = np.concatenate(xs).astype(np.float64)
    predict, loss = fit_probe(x, np.concatenate(ys))
    dice = []
    for t in test:
        valid = _valid_mask(t)
        f = _voxel_features(t, key)[valid]
        logits = np.concatenate([predict(f[i:i + 200_000]) for i in range(0, len(f), 200_000)])
        dice.append(_class_dice(np.argmax(logits, 1), t["labels"].ravel()[valid]))
        del f
    dice = np.array(dice)
    return {"features": int(x.shape[1]), "train_voxels": int(len(x)), "train_loss": round(loss, 4),
            "dice_mean": dict(zip(CLASSES, dice.mean(0).round(4).tolist())), "dice_per_scan": dice.round(4).tolist(),
            "dice_brain_classes_mean": round(float(dice[:, 1:].mean()), 4)}


# ------------------------------------------------------------------------------------ orchestration

FIGURE_SCANS = ("colin27", "colin27-copy", "pydeface")
COVERAGE_LABEL = {"scan": "one pass (coverage='scan', default)", "tiles": "tiles (coverage='tiles', stitched)",
                  "window": "centred window (coverage='window')"}
CLASSES = ("background", "CSF", "GM", "WM")


def _probe_result(predict, loss, dim, test, key, kind) -> dict:
    dice = np.array([probe_dice(t, predict, key, kind) for t in test])
    out = {"dice_mean": dict(zip(CLASSES, dice.mean(0).round(4).tolist())), "dice_per_scan": dice.round(4).tolist(),
           "dice_brain_classes_mean": round(float(dice[:, 1:].mean()), 4)}
    if dim is not None:
        out = {"features": dim, "train_loss": round(loss, 4), **out}
    return out


def model_diagnostics(model_name: str, data_dir: Path, *, seed: int = 0, n_landmarks: int = 64,
                      figures: str | None = None, max_tokens: int = 6000, end_to_end: str | None = None) -> dict:
    """Model mode (module docstring); one pass is allowed up to ``max_tokens`` tokens while it runs;
    ``end_to_end``: name / spec path of the same network trained end to end (probe comparison)."""
    from napari_vit3d.explain import whole_scan

    library_cap = whole_scan.MAX_WHOLE_SCAN_TOKENS
    whole_scan.MAX_WHOLE_SCAN_TOKENS = int(max_tokens)
    try:
        res = _model_diagnostics(model_name, data_dir, seed=seed, n_landmarks=n_landmarks, figures=figures,
                                 library_cap=library_cap, end_to_end=end_to_end)
    finally:
        whole_scan.MAX_WHOLE_SCAN_TOKENS = library_cap
    res["one_pass_max_tokens"] = {"library": library_cap, "this_run": int(max_tokens)}
    return res


def _one_pass_tokens(sess) -> int:
    return int(np.prod([-(-g // 8) for g in sess.grid_shape]))


def _model_diagnostics(model_name: str, data_dir: Path, *, seed: int, n_landmarks: int, figures: str | None,
                       library_cap: int, end_to_end: str | None = None) -> dict:
    from napari_vit3d.explain import ExplainSession, dino_heads
    from napari_vit3d.explain.whole_scan import tile_starts
    from napari_vit3d.models import load_model

    t0 = time.time()
    model = load_model(model_name)
    if not hasattr(model.network, "forward_features"):
        raise SystemExit(f"{model_name} is {model.spec.architecture}: model mode needs a ViT with a CLS token "
                         "(vit_seg)")
    rand = _random_like(model.spec)
    e2e = _end_to_end_like(model.spec, end_to_end) if end_to_end else None
    scans, colin = build_model_scans(data_dir, seed)
    _log(f"scans ready ({time.time() - t0:.0f} s)")
    res = {"model": model_name, "architecture": model.spec.architecture, "weights_sha256": model.weights_sha256,
           "seed": seed, "random_init": "models.registry.build_network(spec) after torch.manual_seed(0)",
           "scans": {s["name"]: {"note": s["note"], "shape": list(s["volume"].spatial_shape),
                                 "centre_world_mm": np.round(s["centre_world"], 1).tolist(),
                                 **({"copy": s["copy"]} if "copy" in s else {})} for s in scans},
           "heads": {c: {"dino": {}, "random_init": {}} for c in ("scan", "tiles", "window")},
           "faces": {}, "faces_random_init": {}}
    by_name = {s["name"]: s for s in scans}
    nets = (("dino", model, "sess"), ("random_init", rand, "rsess"))
    for s in scans:
        sess = ExplainSession(model, s["volume"], max_cached_windows=10_000)
        rsess = ExplainSession(rand, s["volume"], model_input=sess.model_input, roi_size=sess.roi,
                               max_cached_windows=10_000)
        s["sess"], s["rsess"] = sess, rsess
        starts = tile_starts(sess.grid_shape, sess.roi)
        tok = _one_pass_tokens(sess)
        res["scans"][s["name"]].update(windows=len(starts), model_grid=list(sess.grid_shape), one_pass_tokens=tok,
                                       library_default_coverage="scan" if tok <= library_cap else "tiles")
        s["library_default"] = res["scans"][s["name"]]["library_default_coverage"]
        if s["name"] in FIGURE_SCANS:
            for key, m, attr in nets:
                ss = s[attr]
                maps, info = one_pass_heads(m, s, ss)
                r = res["heads"]["scan"][key][s["name"]] = {**head_structure_mass(maps, s["structure"],
                                                                                  s["structures"]), **info}
                if key == "dino" and figures:
                    png = Path(f"{figures}-{s['name']}.png")
                    head_figure(s, maps, r, png, model_name)
                    r["figure"] = str(png)
                del maps
                v = dino_heads(m, s["volume"], session=ss, coverage="tiles")
                res["heads"]["tiles"][key][s["name"]] = {**head_structure_mass(v.data, s["structure"],
                                                                               s["structures"]),
                                                         "coverage_used": v.metadata["coverage"],
                                                         "windows": len(v.metadata["windows"])}
                del v
                res["heads"]["window"][key][s["name"]] = centred_window_mass(m, s, ss)
            res["faces"][s["name"]] = face_shares(sess, starts)
            res["faces_random_init"][s["name"]] = face_shares(rsess, starts)
        _log(f"{s['name']}: heads/faces done ({time.time() - t0:.0f} s)")

    names = [s["name"] for s in scans]
    for s in scans:                                   # one pass over each scan: features for CLS and k-NN
        for key, _, attr in nets:
            s[f"one_pass_{key}"] = one_pass_features(s[attr])
    res["cls_cosine"] = {"scans": names}
    for kind in ("window", "one_pass"):
        res["cls_cosine"][kind] = {}
        for key, _, attr in nets:
            if kind == "window":
                vecs = [cls_embedding(s[attr], s["centre_world"]) for s in scans]
            else:
                vecs = [cls_embedding(s[f"one_pass_{key}"]["whole"], s["centre_world"]) for s in scans]
            m = cosine_matrix(vecs)
            res["cls_cosine"][kind][key] = m.round(4).tolist()
            res["cls_cosine"][kind][f"{key}_mean_offdiag"] = round(float(m[~np.eye(len(m), dtype=bool)].mean()), 4)

    rng = np.random.default_rng(seed)
    vox = np.argwhere(colin["icv"])
    pick = vox[rng.choice(len(vox), n_landmarks, replace=False)]
    points = pick @ colin["affine"][:3, :3].T + colin["affine"][:3, 3]
    src = by_name["colin27"]
    q = {"dino": query_features(src["sess"], points), "random_init": query_features(src["rsess"], points)}
    q1 = {key: one_pass_query(src[f"one_pass_{key}"], points) for key, _, _ in nets}
    res["knn"] = {"landmarks": n_landmarks, "landmarks_world_mm": np.round(points, 1).tolist(), "pairs": {}}
    for other in ("colin27", "colin27-copy", "mni152"):
        o = by_name[other]
        gal = {"dino": gallery(o["sess"]), "random_init": gallery(o["rsess"])}
        pair = res["knn"]["pairs"][f"colin27->{other}"] = {"tiles": knn_retrieval(points, q, gal, o, rng)}
        if other == "colin27":
            pair["one_pass"] = None                   # the query token is itself in the gallery (same pass)
            continue
        gal1 = {key: (o[f"one_pass_{key}"]["features"], o[f"one_pass_{key}"]["centres"]) for key, _, _ in nets}
        pair["one_pass"] = knn_retrieval(points, q1, gal1, o, rng)
    _log(f"CLS + k-NN done ({time.time() - t0:.0f} s)")
    for s in scans:
        for k in ("sess", "rsess", "one_pass_dino", "one_pass_random_init"):
            s.pop(k)

    train = [probe_scan(sd, colin, model, rand, e2e) for sd in (100, 101, 102, 103)]
    test = [probe_scan(sd, colin, model, rand, e2e) for sd in (200, 201, 202)]
    _log(f"probe features done ({time.time() - t0:.0f} s)")
    res["probe"] = {"train_seeds": [t["seed"] for t in train], "test_seeds": [t["seed"] for t in test],
                    "train_patches": {"tiles": int(sum(len(w["target"]) for t in train
                                                       for w in t["windows"].values())),
                                      "one_pass": int(sum(len(t["one_pass"]["target"]) for t in train))},
                    "one_pass_tokens": {t["seed"]: _one_pass_tokens(t["session"]) for t in train + test},
                    "library_default_coverage": {t["seed"]: "scan" if _one_pass_tokens(t["session"]) <= library_cap
                                                 else "tiles" for t in train + test},
                    "end_to_end": ({"model": e2e.spec.name, "weights_sha256": e2e.weights_sha256,
                                    "spec": str(end_to_end)} if e2e is not None else
                                   "not measured (no end-to-end-trained network given: --end-to-end)")}
    e2e_keys = ("end_to_end",) if e2e is not None else ()
    for t in train + test:
        for w in (*t["windows"].values(), t["one_pass"]):
            w["oracle"] = np.log(w["target"] + 1e-4)
    for kind in ("tiles", "one_pass"):
        def rows(t, key):
            return [t["one_pass"][key]] if kind == "one_pass" else [w[key] for w in t["windows"].values()]

        out = res["probe"][kind] = {"oracle": {
            "features": "the patch's true class fractions (log), placed like the probes' logits: the ceiling "
                        "of any patch-level probe on this lattice",
            **_probe_result(lambda f: f, None, None, test, "oracle", kind)}}
        for key in ("dino", "random", "intensity", *e2e_keys):
            x = np.concatenate([r for t in train for r in rows(t, key)]).astype(np.float64)
            y = np.concatenate([r for t in train for r in rows(t, "target")]).astype(np.float64)
            predict, loss = fit_probe(x, y)
            out[key] = _probe_result(predict, loss, int(x.shape[1]), test, key, kind)
        _log(f"probe {kind} done ({time.time() - t0:.0f} s)")
    res["probe"]["voxel"] = {key: voxel_probe(train, test, key) for key in ("dino", "random", "image", *e2e_keys)}
    _log(f"voxel probe done ({time.time() - t0:.0f} s)")
    res["seconds"] = round(time.time() - t0, 1)
    _log(f"done ({res['seconds']} s)")
    return res


def _head_rows(m: dict, names) -> list[str]:
    L = ["| head | " + " | ".join(f"{n} mass % (enrich.)" for n in names) + " | concentrates on |",
         "|---|" + "---|" * len(names) + "---|"]
    for h in m["heads"]:
        L.append(f"| {h['head']} | " + " | ".join(f"{100 * h['mass_share'][n]:.1f} (×{h['enrichment'][n]:.2f})"
                                                 for n in names) + f" | {h['concentrates_on'] or '—'} |")
    return L


def model_markdown(res: dict) -> str:
    L = [f"# DINO model diagnostics: `{res['model']}`", "",
         "Coverage: *one pass* = `coverage='scan'` (the default: the whole padded scan as one window, positional "
         "embedding resized trilinearly); *tiles* = `coverage='tiles'` (native 64³ windows every half window, "
         "stitched with centre-weighted averaging); *window* = `coverage='window'` (the one native window centred "
         "on the head centre). Random init: same spec, torch seed 0.", ""]
    H = res["heads"]
    for scan in H["scan"]["dino"]:
        one = H["scan"]["dino"][scan]
        names = list(one["volume_share"])
        L += [f"## Head mass on structures — {scan} (DINO)", "",
              "volume share: " + ", ".join(f"{n} {100 * v:.1f}%" for n, v in one["volume_share"].items()), ""]
        sc = res["scans"][scan]
        cap = res["one_pass_max_tokens"]["library"]
        over = (f"; **above the library's {cap}-token cap: a user's coverage='scan' gets tiles on this scan**"
                if sc["library_default_coverage"] == "tiles" else "")
        L += [f"**One pass** (token grid {'×'.join(map(str, one['token_grid']))} = {one['tokens']} tokens{over}; share "
              "of each head's mass on the model grid's zero padding, not in the table: "
              + " ".join(f"{v:.2f}" for v in one["padding_share"]) + ")", ""]
        L += _head_rows(one, names) + [""]
        tl = H["tiles"]["dino"][scan]
        L += [f"**Tiles** ({tl['windows']} windows, stitched)", ""] + _head_rows(tl, names) + [""]
    L += ["## Heads concentrating (≥ 50 % of mass on one structure, enrichment ≥ 1.5)", "",
          "| scan | one pass DINO | one pass random | tiles DINO | tiles random | window DINO | window random |",
          "|---|---|---|---|---|---|---|"]
    for scan in H["scan"]["dino"]:
        cells = []
        for cov in ("scan", "tiles", "window"):
            for key in ("dino", "random_init"):
                d = H[cov][key][scan]
                which = ", ".join(f"{h['head']}:{h['concentrates_on']}" for h in d["heads"] if h["concentrates_on"])
                cells.append(f"{d['n_concentrating']} of {len(d['heads'])}" + (f" ({which})" if which else ""))
        L.append(f"| {scan} | " + " | ".join(cells) + " |")
    L += ["", "## Head mass inside the centred window only (coverage='window', no stitching, no resizing)", "",
          "| scan | net | window volume shares | per head: top structure mass % (×enrichment) | concentrating |",
          "|---|---|---|---|---|"]
    for scan in H["window"]["dino"]:
        for key, net in (("dino", "DINO"), ("random_init", "random")):
            m = H["window"][key][scan]
            vs = ", ".join(f"{n} {100 * v:.0f}%" for n, v in m["volume_share"].items())
            hs = "; ".join(f"{h['head']}: {h['top']} {100 * h['mass_share'][h['top']]:.0f}% "
                           f"(×{h['enrichment'][h['top']]:.2f})" for h in m["heads"])
            L.append(f"| {scan} | {net} | {vs} | {hs} | {m['n_concentrating']} |")
    L += ["", "## CLS attention on window faces (native windows, mean over tiling windows)", "",
          f"uniform: shell {UNIFORM_SHELL:.3f}, one face 0.125", "",
          "| scan | net | windows | shell share per head | inferior face per head | superior face per head |",
          "|---|---|---|---|---|---|"]
    for scan in res["faces"]:
        for key, net in (("faces", "DINO"), ("faces_random_init", "random")):
            f = res[key][scan]
            L.append(f"| {scan} | {net} | {f['windows']} | " + " ".join(f"{v:.2f}" for v in f["shell"]) + " | "
                     + " ".join(f"{v:.2f}" for v in f["inferior"]) + " | "
                     + " ".join(f"{v:.2f}" for v in f["superior"]) + " |")
    c = res["cls_cosine"]
    for kind, title in (("window", "native window centred on the head centre"),
                        ("one_pass", "one pass over the whole scan")):
        cc = c[kind]
        L += ["", f"## CLS cosine similarity ({title})", "",
              "| | " + " | ".join(c["scans"]) + " |", "|---|" + "---|" * len(c["scans"])]
        for i, a in enumerate(c["scans"]):
            L.append(f"| {a} | " + " | ".join(f"{cc['dino'][i][j]:.3f} / {cc['random_init'][i][j]:.3f}"
                                              for j in range(len(c["scans"]))) + " |")
        L += ["", f"(DINO / random init; mean off-diagonal: DINO {cc['dino_mean_offdiag']:.3f}, random init "
                  f"{cc['random_init_mean_offdiag']:.3f})"]
    L += ["", f"## k-NN retrieval of {res['knn']['landmarks']} Colin27 brain landmarks (distance to the landmark, "
              "mm, median / p90)", "",
          "| pair | features | DINO | random init | chance | floor | gallery patches (in head) |",
          "|---|---|---|---|---|---|---|"]
    for pair, k in res["knn"]["pairs"].items():
        for kind, label in (("tiles", "tiles (centred window → tiling windows)"), ("one_pass", "one pass")):
            r = k[kind]
            if r is None:
                L.append(f"| {pair} | {label} | — (query token is in the gallery) | | | | |")
                continue
            L.append(f"| {pair} | {label} | " + " | ".join(f"{r[n]['median_mm']:.1f} / {r[n]['p90_mm']:.1f}"
                                                          for n in ("dino", "random_init", "chance", "floor"))
                     + f" | {r['gallery_patches']} ({r['gallery_patches_in_head']}) |")
    p = res["probe"]
    L += ["", "## Linear probe on frozen patch features → tissue (Dice, mean of 3 held-out copies)", "",
          f"train patches: tiles {p['train_patches']['tiles']}, one pass {p['train_patches']['one_pass']}; one-pass "
          "tokens per copy: " + ", ".join(f"{k} {v}" for k, v in p["one_pass_tokens"].items())
          + f" (library cap {res['one_pass_max_tokens']['library']}, raised to "
            f"{res['one_pass_max_tokens']['this_run']} here)", "",
          "| features | kind | dim | bg | CSF | GM | WM | mean CSF/GM/WM |", "|---|---|---|---|---|---|---|---|"]
    for key, label in (("dino", "DINO encoder"), ("end_to_end", "same network trained end to end"),
                       ("random", "random init"), ("intensity", "raw 8³ intensities"),
                       ("oracle", "oracle: true patch fractions")):
        for kind in ("tiles", "one_pass"):
            if key not in p[kind]:
                continue
            r = p[kind][key]
            d = r["dice_mean"]
            dim = r["features"] if isinstance(r["features"], int) else "—"
            L.append(f"| {label} | {kind.replace('_', ' ')} | {dim} | {d['background']:.3f} | {d['CSF']:.3f} | "
                     f"{d['GM']:.3f} | {d['WM']:.3f} | {r['dice_brain_classes_mean']:.3f} |")
    L += ["", "**Per-voxel probe** (one-pass tokens placed trilinearly at each 2 mm voxel, plus the voxel's "
          "intensity and its 3³ / 5³ means; *image only*: those 3 numbers alone)", "",
          "| features | dim | bg | CSF | GM | WM | mean CSF/GM/WM |", "|---|---|---|---|---|---|---|"]
    for key, label in (("dino", "DINO encoder + image"), ("end_to_end", "trained end to end + image"),
                       ("random", "random init + image"), ("image", "image only")):
        if key not in p.get("voxel", {}):
            continue
        r = p["voxel"][key]
        d = r["dice_mean"]
        L.append(f"| {label} | {r['features']} | {d['background']:.3f} | {d['CSF']:.3f} | {d['GM']:.3f} | "
                 f"{d['WM']:.3f} | {r['dice_brain_classes_mean']:.3f} |")
    e2e = p["end_to_end"]
    e2e = (f"`{e2e['model']}` ({e2e['spec']}, weights sha256 {e2e['weights_sha256'][:12]}…)" if isinstance(e2e, dict)
           else e2e)
    L += ["", f"End-to-end-trained encoder: {e2e}.", "", f"Run time: {res['seconds']} s.", ""]
    return "\n".join(L)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="run mode: train-dino run folders (with config.json and ckpt.pt)")
    p.add_argument("--bank", default=None, help="run mode: a synthetic bank (.npz) to draw scans from")
    p.add_argument("--model", nargs="?", const="dino-vit-brain", default=None,
                   help="model mode: a registered/bundled vit_seg model (bare --model: dino-vit-brain)")
    p.add_argument("--data-dir", default="../shared/data", help="model mode: the shared real scans")
    p.add_argument("--figures", default=None, help="model mode: PNG prefix (PREFIX-<scan>.png)")
    p.add_argument("--markdown", default=None, help="model mode: markdown summary file")
    p.add_argument("--seed", type=int, default=0, help="model mode: seed of the copy and the landmarks")
    p.add_argument("--landmarks", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=6000,
                   help="model mode: one pass allowed up to this many tokens (library cap: MAX_WHOLE_SCAN_TOKENS)")
    p.add_argument("--end-to-end", default=None, metavar="SPEC",
                   help="model mode: the same network trained end to end (a spec JSON / name): its frozen features "
                        "get the same linear probe")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON results file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model:
        if args.runs:
            p.error("give either run folders or --model, not both")
        res = model_diagnostics(args.model, Path(args.data_dir), seed=args.seed, n_landmarks=args.landmarks,
                                figures=args.figures, max_tokens=args.max_tokens, end_to_end=args.end_to_end)
        md = model_markdown(res)
        print(md)
        if args.markdown:
            Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
            Path(args.markdown).write_text(md)
    else:
        if not args.runs or not args.bank:
            p.error("run mode needs run folders and --bank (or use --model)")
        images, _, _ = load_bank(args.bank)
        res = [diagnose(Path(r), images) for r in args.runs]
        for r in res:
            print(json.dumps(r))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
