"""Training data: label maps from the real scans and label-to-image synthesis (SynthSeg-like).

Two real heads / one template are too few to learn from, so training scans are *generated* from
label maps: every (sub)label gets a random intensity, then partial-volume blur, a bias field, noise,
a random smooth deformation, rotation, scaling, anisotropic resampling (thick slices), random
orientation and cropping are applied. The label maps come from the data folder described in
``shared/data/README.md``:

* **Colin27** (``colin27/ch2.nii.gz`` + ``ch2bet.nii.gz``): head = Otsu threshold on ch2, largest
  component, holes filled; brain = ``ch2bet > 0``, largest component, holes filled; outside the brain
  three k-means classes of ch2 (dark skull/CSF-like, muscle, bright fat/scalp) as *sub-labels* of
  class 0; inside the brain three k-means classes of Colin's own T1 (CSF < GM < WM, a silver
  standard: an intensity clustering, not a manual segmentation).
* **MNI152 2009a** tissue maps (``*_gm_*``, ``*_wm_*``) resampled onto the Colin grid through the two
  affines (world coordinates are shared): template anatomy placed inside Colin's head; CSF = the
  template brain where neither GM nor WM dominates, plus the gap between the template brain and
  Colin's brain mask.
* The two real T1s with those labels, used with intensity augmentation only (Colin with skull,
  MNI skull-stripped).

Classes: 0 background (incl. skull and scalp), 1 CSF, 2 GM, 3 WM. Everything here is numpy/scipy;
torch is not needed. Generation is CPU-heavy, so :func:`build_bank` pre-generates a bank once
(``.npz``), and training only crops/flips/intensity-augments bank entries on the fly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..io.resample import resample_array

CLASS_NAMES = ("background", "CSF", "GM", "WM")
N_CLASSES = 4
#: sub-labels of a label map: 0 air, 1 CSF, 2 GM, 3 WM, 4..6 k-means classes of the tissue outside the brain
N_SUBLABELS = 7
SUB_TO_CLASS = np.array([0, 1, 2, 3, 0, 0, 0], dtype=np.uint8)

COLIN_T1 = "colin27/ch2.nii.gz"
COLIN_BET = "colin27/ch2bet.nii.gz"
MNI_T1 = "mni152_2009a/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI_GM = "mni152_2009a/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
MNI_WM = "mni152_2009a/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def kmeans_1d(values: np.ndarray, k: int, *, iters: int = 50, seed: int = 0) -> np.ndarray:
    """Cluster centres (sorted ascending) of 1D ``values`` by Lloyd's k-means, quantile initialised."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("k-means needs at least one value")
    rng = np.random.default_rng(seed)
    if v.size > 200_000:
        v = rng.choice(v, 200_000, replace=False)
    centres = np.quantile(v, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        assign = np.argmin(np.abs(v[:, None] - centres[None, :]), axis=1)
        new = np.array([v[assign == j].mean() if np.any(assign == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def assign_clusters(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.argmin(np.abs(np.asarray(values, np.float64)[..., None] - centres), axis=-1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Largest connected component with holes filled (slice-wise too, for open sulci at the border)."""
    m = largest_component(mask)
    m = ndimage.binary_fill_holes(m)
    return m


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` over ``bins`` histogram bins (scikit-image's ``threshold_otsu``)."""
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(np.asarray(values, np.float64).ravel(), nbins=bins))


def downsample_grid(affine: np.ndarray, shape, factor: int):
    """The grid with ``factor``× larger voxels covering the same field of view (voxel blocks)."""
    aff = np.array(affine, float)
    new = aff.copy()
    new[:3, :3] = aff[:3, :3] * factor
    new[:3, 3] = aff[:3, 3] + aff[:3, :3] @ np.full(3, (factor - 1) / 2.0)
    new_shape = tuple(int(np.ceil(s / factor)) for s in shape)
    return new, new_shape


def block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``³ blocks (zero padded at the far edges): exact partial volume
    (scikit-image's ``block_reduce``)."""
    from skimage.measure import block_reduce

    return block_reduce(data.astype(np.float32), (factor,) * 3, np.mean, cval=0.0).astype(np.float32)


def block_majority(labels: np.ndarray, factor: int, n_labels: int) -> np.ndarray:
    """Majority label over ``factor``³ blocks."""
    fr = np.stack([block_mean(labels == j, factor) for j in range(n_labels)], axis=0)
    return np.argmax(fr, axis=0).astype(np.uint8)


def percentile_normalise(img: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> np.ndarray:
    """(img − p_lower) / (p_upper − p_lower) over the non-zero voxels, clipped to [0, 1].

    The same rule as the bundled specs' ``normalization`` ({"kind": "percentile", "lower": 1,
    "upper": 99, "nonzero": true, "clip": true}); inference applies it to user scans.
    """
    x = np.asarray(img, np.float32)
    nz = x[x != 0]
    if nz.size < 10:
        nz = x.ravel()
    lo, hi = np.percentile(nz, [lower, upper])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# label maps from the real scans
# --------------------------------------------------------------------------------------------

@dataclass
class LabelMap:
    """A sub-label map (``SUB_TO_CLASS`` gives its class) with the real T1 on the same grid."""
    name: str
    labels: np.ndarray          # uint8 sub-labels on the grid
    image: np.ndarray | None    # float32 real T1 on the grid (0..1), or None
    affine: np.ndarray

    @property
    def classes(self) -> np.ndarray:
        return SUB_TO_CLASS[self.labels]


def _load(data_dir: Path, rel: str):
    img = nib.load(str(Path(data_dir) / rel))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def _ball(radius: int) -> np.ndarray:
    r = int(radius)
    g = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return np.sum(g * g, axis=0) <= r * r


def _closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing with a ball, padded so that the volume's edge does not erode the result."""
    r = int(radius)
    if r <= 0:
        return mask.astype(bool)
    p = np.pad(mask.astype(bool), r + 1)
    c = ndimage.binary_closing(p, _ball(r))
    return c[r + 1:-r - 1, r + 1:-r - 1, r + 1:-r - 1]


#: how the intracranial mask is built from a tight brain mask (1 mm grid; voxels = mm)
ICV_DEFAULTS = {"close_mm": 5, "grow_mm": 4, "smooth_mm": 3, "open_mm": 2, "bone_factor": 0.6}


def intracranial_mask(t1: np.ndarray, brain: np.ndarray, *, close_mm: int = 5, grow_mm: int = 4,
                      smooth_mm: int = 3, open_mm: int = 2, bone_factor: float = 0.6) -> np.ndarray:
    """The brain mask of the brain-extraction convention (HD-BET, deepbet, ROBEX, SynthStrip).

    A skull-stripping mask such as Colin27's ``ch2bet`` follows the cortex: it has zeros in the
    sulci and between the hemispheres and stops at the pial surface. The convention the field's
    tools follow is everything inside the inner skull surface: brain tissue *plus* the CSF in the
    sulci, the fissures and around the brain. Built here on a 1 mm grid (voxels = mm) in four steps:

    1. close the tight mask with a ball of ``close_mm`` (fills sulci and the interhemispheric gap);
    2. grow it outwards by up to ``grow_mm`` one-voxel steps through CSF-dark voxels only: T1 below
       the midpoint of the CSF and GM k-means centres of the brain (so not into GM-bright dura,
       muscle, fat or marrow) and above ``bone_factor`` × the CSF centre (so not into the darker
       cortical bone);
    3. smooth: closing ``smooth_mm``, opening ``open_mm``, largest component, holes filled;
    4. union with the tight mask (the result never loses brain tissue).

    On Colin27 this adds about 220 mL to ``ch2bet`` (1736 → 1955 mL), the amount the learned tools
    put on Colin27 beyond ``ch2bet``.
    """
    brain = np.asarray(brain, bool)
    t1 = np.asarray(t1, np.float32)
    c = kmeans_1d(t1[brain], 3, seed=2)
    hi = (c[0] + c[1]) / 2.0
    lo = bone_factor * c[0]
    csf_like = (t1 >= lo) & (t1 < hi)
    icv = _closing(brain, close_mm)
    st = ndimage.generate_binary_structure(3, 1)
    for _ in range(int(grow_mm)):
        icv = icv | (ndimage.binary_dilation(icv, st) & csf_like)
    icv = _closing(icv, smooth_mm)
    if open_mm > 0:
        icv = ndimage.binary_opening(icv, _ball(open_mm))
    icv = clean_mask(icv | brain)
    return icv | brain


def head_label_map_1mm(t1: np.ndarray, brain_mask: np.ndarray, *, intracranial: bool = True,
                       icv: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sub-labels, cleaned brain mask) of a T1 head with its brain mask (same grid, 1 mm).

    Head = Otsu/2 threshold, closed, largest component, holes filled (in 3D and slice by slice
    along the last axis); tight brain = mask > 0, largest component, holes filled; inside it three
    k-means classes of T1 (1 CSF, 2 GM, 3 WM). With ``intracranial`` (the default, the field's
    convention) the brain mask is :func:`intracranial_mask` of the tight one, and every voxel it
    adds is CSF (sub-label 1). Outside the brain: three k-means classes of T1 (sub-labels 4-6).
    """
    tight = clean_mask(brain_mask > 0)
    brain = intracranial_mask(t1, tight, **{**ICV_DEFAULTS, **(icv or {})}) if intracranial else tight
    head = t1 > 0.5 * otsu_threshold(t1)
    head = ndimage.binary_closing(head, iterations=2)
    head = clean_mask(head | brain)
    for k in range(head.shape[2]):
        head[:, :, k] = ndimage.binary_fill_holes(head[:, :, k])
    head |= brain
    labels = np.zeros(t1.shape, np.uint8)
    outside = head & ~brain
    c_out = kmeans_1d(t1[outside], 3, seed=1)
    labels[outside] = 4 + assign_clusters(t1[outside], c_out).astype(np.uint8)
    c_in = kmeans_1d(t1[tight], 3, seed=2)
    labels[brain] = 1
    labels[tight] = 1 + assign_clusters(t1[tight], c_in).astype(np.uint8)
    return labels, brain


def colin_label_map_1mm(data_dir, *,
                        intracranial: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Colin27 at 1 mm: (sub-labels, T1, brain mask, affine); ``intracranial=False``: ``ch2bet``'s tight brain."""
    t1, aff = _load(data_dir, COLIN_T1)
    bet, _ = _load(data_dir, COLIN_BET)
    labels, brain = head_label_map_1mm(t1, bet, intracranial=intracranial)
    return labels, t1, brain, aff


def label_map_from_arrays(name: str, t1: np.ndarray, brain_mask: np.ndarray, affine, spacing_mm: int = 2) -> LabelMap:
    """A :class:`LabelMap` (with its real image) from one T1 + brain mask, downsampled by voxel blocks."""
    labels1, _ = head_label_map_1mm(np.asarray(t1, np.float32), np.asarray(brain_mask))
    f = int(spacing_mm)
    aff2, _ = downsample_grid(np.asarray(affine, float), labels1.shape, f)
    return LabelMap(name, block_majority(labels1, f, N_SUBLABELS), percentile_normalise(block_mean(t1, f)), aff2)


def mni_tissue_on_grid(data_dir, target_affine, target_shape):
    """MNI152 2009a (brain mask, tissue class 1..3, T1) resampled onto a target grid through the affines."""
    data_dir = Path(data_dir)
    t1, aff = _load(data_dir, MNI_T1)
    gm, _ = _load(data_dir, MNI_GM)
    wm, _ = _load(data_dir, MNI_WM)
    gm_t = resample_array(gm / 255.0, aff, target_affine, target_shape, order=1)
    wm_t = resample_array(wm / 255.0, aff, target_affine, target_shape, order=1)
    t1_t = resample_array(t1, aff, target_affine, target_shape, order=1)
    brain = clean_mask(t1_t > 0.1 * otsu_threshold(t1_t[t1_t > 0]))
    csf = np.clip(1.0 - gm_t - wm_t, 0, 1)
    tissue = 1 + np.argmax(np.stack([csf, gm_t, wm_t]), axis=0).astype(np.uint8)
    tissue[~brain] = 0
    return brain, tissue, t1_t


def build_label_maps(data_dir, spacing_mm: int = 2) -> list[LabelMap]:
    """The label maps the bank is generated from, at ``spacing_mm`` (integer) on the Colin27 grid.

    Returns ``[colin, mni_in_colin_head, mni_real]``: Colin with its k-means tissue and real T1;
    MNI tissue placed in Colin's head (no real image); the skull-stripped MNI T1 with its tissue.
    """
    f = int(spacing_mm)
    labels1, t1, brain, aff = colin_label_map_1mm(data_dir)
    aff2, _ = downsample_grid(aff, labels1.shape, f)
    colin_lab = block_majority(labels1, f, N_SUBLABELS)
    colin_img = percentile_normalise(block_mean(t1, f))
    maps = [LabelMap("colin27", colin_lab, colin_img, aff2)]

    mbrain, mtissue, mt1 = mni_tissue_on_grid(data_dir, aff, labels1.shape)
    mixed = labels1.copy()
    mixed[brain] = 1                          # Colin brain not covered by the template: CSF
    mixed[mbrain] = mtissue[mbrain]
    mixed[mbrain & (labels1 == 0)] = mtissue[mbrain & (labels1 == 0)]
    maps.append(LabelMap("mni152_in_colin_head", block_majority(mixed, f, N_SUBLABELS), None, aff2))

    real = np.where(mbrain, mtissue, 0).astype(np.uint8)
    maps.append(LabelMap("mni152", block_majority(real, f, N_SUBLABELS),
                         percentile_normalise(block_mean(np.where(mbrain, mt1, 0), f)), aff2))
    return maps


# --------------------------------------------------------------------------------------------
# label-to-image synthesis
# --------------------------------------------------------------------------------------------

def _rotation(angles):
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_field(rng, shape, ctrl: int, amplitude: float, n: int = 1) -> np.ndarray:
    """``n`` smooth random fields (cubic upsampling of a coarse Gaussian grid), ±``amplitude``."""
    out = np.empty((n,) + tuple(shape), np.float32)
    for i in range(n):
        coarse = rng.normal(0, amplitude, size=(ctrl, ctrl, ctrl)).astype(np.float32)
        zoom = [s / ctrl for s in shape]
        out[i] = ndimage.zoom(coarse, zoom, order=3, mode="nearest")[: shape[0], : shape[1], : shape[2]]
    return out


@dataclass
class SynthConfig:
    out_shape: tuple[int, int, int] = (96, 128, 96)
    rotation_deg: float = 25.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    shift_vox: float = 6.0
    deform_vox: float = 2.5
    p_permute: float = 0.15          # random orientation: a random axis permutation
    p_flip: float = 0.5              # per axis, LR always allowed; AP/SI with p_flip/4
    blur_max: float = 1.0            # partial-volume blur, voxels
    bias_max: float = 0.35
    noise_max: float = 0.06
    p_thick: float = 0.4             # anisotropic resampling: thick slices along one axis
    thick_max: float = 3.0
    p_t1_like: float = 0.5           # CSF < GM < WM ordering (T1-like) instead of fully random
    p_real: float = 0.25             # use the real T1 of the map (intensity-augmented) when it has one
    p_fov_cut: float = 0.0           # cropped field of view: everything beyond a random plane is cut
    fov_cut_max: float = 0.35        #   at most this share of the volume along the cut's axis
    p_motion: float = 0.0            # motion-like blur: a few shifted copies of the image averaged
    p_enhance: float = 0.0           # post-contrast-like T1: vessel/dura-like bright specks outside WM
    p_neck: float = 0.0              # a longer neck: the brain-free bottom of the head extended downwards
    neck_vox: int = 40               #   by this many voxels (source grid; 80 mm at 2 mm)
    neck_shift_vox: float = 24.0     #   and the window's centre moved down by up to this many voxels
    neck_cord: str = "background"    #   the cord's brain voxels in the added slices: "background" or "keep"
    p_atrophy: float = 0.0           # atrophy-like: brain tissue shrunk inside a fixed skull, the gap CSF
    atrophy_max: float = 0.10        #   tissue coordinates scaled by 1.02 .. 1 + atrophy_max about its centre


def random_transform(rng, cfg: SynthConfig, src_shape, out_shape,
                     centre=None) -> tuple[np.ndarray, np.ndarray]:
    """Output voxel → source voxel linear map (3×3) and offset: rotation, scaling, permutation, flip.

    The output's centre lands on ``centre`` (source voxels; default the source's centre) ± ``shift_vox``.
    """
    rot = _rotation(np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, 3)))
    scale = np.diag(rng.uniform(*cfg.scale_range, 3))
    perm = np.eye(3)
    if rng.random() < cfg.p_permute:
        perm = perm[rng.permutation(3)]
    flips = np.ones(3)
    if rng.random() < cfg.p_flip:
        flips[0] = -1
    for ax in (1, 2):
        if rng.random() < cfg.p_flip / 4:
            flips[ax] = -1
    lin = rot @ scale @ perm @ np.diag(flips)
    base = (np.array(src_shape) - 1) / 2 if centre is None else np.asarray(centre, float)
    c_src = base + rng.uniform(-cfg.shift_vox, cfg.shift_vox, 3)
    c_out = (np.array(out_shape) - 1) / 2
    off = c_src - lin @ c_out
    return lin, off


def sample_coordinates(rng, cfg: SynthConfig, src_shape, centre=None) -> np.ndarray:
    out_shape = tuple(cfg.out_shape)
    lin, off = random_transform(rng, cfg, src_shape, out_shape, centre)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in out_shape], indexing="ij"))
    coords = np.einsum("ij,j...->i...", lin.astype(np.float32), grid) + off.astype(np.float32)[:, None, None, None]
    if cfg.deform_vox > 0:
        coords += smooth_field(rng, out_shape, 5, cfg.deform_vox / 2, n=3)
    return coords


def _synth_intensities(rng, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    means = rng.uniform(0.0, 1.0, N_SUBLABELS)
    if rng.random() < cfg.p_t1_like:
        csf, gm, wm = np.sort(rng.uniform(0.05, 1.0, 3))
        if gm - csf < 0.1:
            gm = min(1.0, csf + 0.1)
        if wm - gm < 0.08:
            wm = min(1.0, gm + 0.08)
        means[1:4] = (csf, gm, wm)
        means[0] = rng.uniform(0.0, 0.1)
    stds = rng.uniform(0.0, 0.08, N_SUBLABELS)
    return means, stds


def thick_slices(rng, img: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    """Simulate a scan acquired with thick slices along one axis: blur + subsample + linear upsample."""
    ax = int(rng.integers(3))
    f = rng.uniform(1.5, cfg.thick_max)
    sig = [0.0, 0.0, 0.0]
    sig[ax] = f / 2.355
    low = ndimage.gaussian_filter(img, sig)
    n = img.shape[ax]
    pos = np.arange(0, n - 1 + 1e-6, f)
    low = np.take(low, np.round(pos).astype(int), axis=ax)
    coords = np.arange(n) / f
    return ndimage.map_coordinates(low, _axis_coords(low.shape, ax, coords, img.shape), order=1, mode="nearest")


def _axis_coords(low_shape, ax, coords, full_shape):
    grids = [np.arange(s, dtype=np.float32) for s in full_shape]
    grids[ax] = coords.astype(np.float32)
    return np.stack(np.meshgrid(*grids, indexing="ij"))


def augment_intensity(rng, img: np.ndarray, cfg: SynthConfig, *, strength: float = 1.0) -> np.ndarray:
    """Bias field, gamma, noise on an image in [0, 1]; returns float32 (not renormalised)."""
    out = img.astype(np.float32)
    if cfg.bias_max > 0:
        bias = np.exp(smooth_field(rng, out.shape, 4, rng.uniform(0, cfg.bias_max * strength))[0])
        out = out * bias
    gamma = np.exp(rng.normal(0, 0.25 * strength))
    out = np.clip(out, 0, None) ** gamma
    out = out + rng.normal(0, rng.uniform(0, cfg.noise_max * strength), out.shape).astype(np.float32)
    return out


def synthesize(label_map: LabelMap, rng: np.random.Generator, cfg: SynthConfig | None = None):
    """One synthetic training pair ``(image float32 in [0, 1], classes uint8)`` of shape ``cfg.out_shape``
    (``cfg`` None: the default :class:`SynthConfig`)."""
    if cfg is None:
        cfg = SynthConfig()
    src_labels, src_image, centre = label_map.labels, label_map.image, None
    if cfg.p_neck > 0 and rng.random() < cfg.p_neck:   # no draw when off: older banks' random streams stay
        src_labels, src_image, added = extend_neck(src_labels, src_image, cfg.neck_vox, cord=cfg.neck_cord)
        if added:
            centre = (np.array(label_map.labels.shape, float) - 1) / 2
            centre[2] += added - rng.uniform(0.0, cfg.neck_shift_vox)
    coords = sample_coordinates(rng, cfg, src_labels.shape, centre)
    sub = ndimage.map_coordinates(src_labels, coords, order=0, mode="constant", cval=0).astype(np.uint8)
    atrophy = cfg.p_atrophy > 0 and rng.random() < cfg.p_atrophy   # no draw when off (older banks' streams)
    factor = rng.uniform(1.02, 1.0 + max(cfg.atrophy_max, 0.02)) if atrophy else 1.0
    use_real = src_image is not None and rng.random() < cfg.p_real
    if use_real:
        img = ndimage.map_coordinates(src_image, coords, order=1, mode="constant", cval=0.0)
        if atrophy:
            sub, img = shrink_tissue(rng, sub, img, factor)
        img = augment_intensity(rng, img, cfg, strength=0.7)
    else:
        if atrophy:
            sub, _ = shrink_tissue(rng, sub, None, factor)
        means, stds = _synth_intensities(rng, cfg)
        noise = rng.normal(0, 1, sub.shape).astype(np.float32)
        img = means[sub].astype(np.float32) + noise * stds[sub].astype(np.float32)
        blur = rng.uniform(0.3, cfg.blur_max)
        img = ndimage.gaussian_filter(img, blur)
        img = augment_intensity(rng, img, cfg)
    classes = SUB_TO_CLASS[sub]
    if rng.random() < cfg.p_enhance:
        img = post_contrast_like(rng, img, sub)
    if rng.random() < cfg.p_motion:
        img = motion_blur(rng, img)
    if rng.random() < cfg.p_thick:
        img = thick_slices(rng, img, cfg)
    img = np.clip(img, 0, None)
    if rng.random() < 0.5:
        img[sub == 0] = 0.0      # air exactly zero half of the time (scanner background / padding)
    if rng.random() < cfg.p_fov_cut:
        img, classes = cut_field_of_view(rng, img, classes, cfg.fov_cut_max)
    return percentile_normalise(img), classes


def extend_neck(labels: np.ndarray, image: np.ndarray | None, n_vox: int, *, max_brain_share: float = 0.02,
                cord: str = "background"):
    """The head with a longer neck: ``n_vox`` slices added below the last axis's first slice.

    Real head scans (sagittal MPRAGE with a 256 mm field of view) reach 50–100 mm below the
    cerebellum; Colin27's field of view stops just below it, so a model trained on it alone has
    never seen a neck and calls what lies below its window's brain "brain". The added slices mirror
    the head's *bottom slab* back and forth, labels and image alike: the lowest non-empty slices
    whose brain share is below ``max_brain_share`` (the label map's last axis runs inferior →
    superior; a ragged first slice under 5 % of the largest head area is skipped; on Colin27 at 2 mm
    these are 3 slices through the medulla and the neck). In the added
    slices every voxel is background — the cord below the cut is not brain (the convention of the
    brain-extraction tools, which end the brain near the foramen magnum): its brain voxels become
    sub-label 4 (the dark tissue class) and keep their image intensities. Returns ``(labels, image,
    added)``; ``added`` is 0 (nothing changed) when there is no such slab or no tissue outside the
    brain in it (a skull-stripped map).
    """
    cls = SUB_TO_CLASS[labels]
    head_area = (labels > 0).sum(axis=(0, 1))
    brain_area = (cls > 0).sum(axis=(0, 1))
    nonempty = np.nonzero(head_area >= 0.05 * head_area.max())[0]      # ignore a ragged first slice
    if n_vox <= 0 or nonempty.size == 0:
        return labels, image, 0
    z0 = z1 = int(nonempty[0])
    while z1 < labels.shape[2] and head_area[z1] and brain_area[z1] < max_brain_share * head_area[z1]:
        z1 += 1
    if z1 == z0 or not (labels[:, :, z0:z1] >= 4).any():
        return labels, image, 0
    n_slab = z1 - z0
    m = np.mod(np.arange(-int(n_vox), 0), 2 * n_slab)
    src = z0 + np.where(m < n_slab, m, 2 * n_slab - 1 - m)      # reflect the slab back and forth
    neck = labels[:, :, src].copy()
    if cord == "background":
        neck[SUB_TO_CLASS[neck] > 0] = 4
    elif cord != "keep":
        raise ValueError(f"neck cord must be 'background' or 'keep', got {cord!r}")
    ext_labels = np.concatenate([neck, labels[:, :, z0:]], axis=2)
    ext_image = None if image is None else np.concatenate([image[:, :, src], image[:, :, z0:]], axis=2)
    return ext_labels, ext_image, int(n_vox) - z0


def cut_field_of_view(rng, img: np.ndarray, classes: np.ndarray, max_share: float):
    """A scan whose field of view stops short of the head: beyond a random plane both are zero.

    The labels are cut too: tissue that was not imaged cannot be labelled.
    """
    ax = int(rng.integers(3))
    share = rng.uniform(0.05, max_share)
    n = img.shape[ax]
    k = int(round(n * share))
    sl = [slice(None)] * 3
    sl[ax] = slice(0, k) if rng.random() < 0.5 else slice(n - k, n)
    img = img.copy()
    classes = classes.copy()
    img[tuple(sl)] = 0.0
    classes[tuple(sl)] = 0
    return img, classes


def shrink_tissue(rng, sub: np.ndarray, image: np.ndarray | None, factor: float):
    """Atrophy-like anatomy: the brain tissue (GM, WM and the CSF inside it) shrunk about its centre by
    ``factor`` (> 1) inside an unchanged intracranial space; the gap it leaves becomes CSF.

    The inner skull surface — the brain mask's border — stays where it was, so a model trained on it
    learns that the brain mask reaches the skull however much CSF lies between cortex and skull (a
    young adult has 1–3 mm there, an older one 5–10 mm). With a real ``image`` the tissue's intensities
    move with it and the gap gets the image's own CSF intensity (median ± its spread); returns
    ``(sub, image)`` (image None when none was given).
    """
    cls = SUB_TO_CLASS[sub]
    icv = cls > 0
    tissue = (cls == 2) | (cls == 3)
    if not tissue.any():
        return sub, image
    c = np.array(ndimage.center_of_mass(tissue))
    f = float(factor) * rng.uniform(0.98, 1.02, 3)      # a little anisotropy
    grid = np.indices(sub.shape, dtype=np.float32)
    coords = c[:, None, None, None] + (grid - c[:, None, None, None]) * f[:, None, None, None].astype(np.float32)
    sub_s = ndimage.map_coordinates(sub, coords, order=0, mode="constant", cval=0).astype(np.uint8)
    keep = icv & (SUB_TO_CLASS[sub_s] > 0)             # brain (tissue or its own CSF) after shrinking
    gap = icv & ~keep
    out = sub.copy()
    out[keep] = sub_s[keep]
    out[gap] = 1
    if image is None:
        return out, None
    img_s = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)
    csf_vals = image[cls == 1]
    if csf_vals.size < 10:
        csf_vals = image[icv]
    med = float(np.median(csf_vals))
    spread = float(np.std(csf_vals)) * 0.5
    new = image.astype(np.float32).copy()
    new[keep] = img_s[keep]
    fill = med + spread * rng.normal(0, 1, int(gap.sum())).astype(np.float32)
    new[gap] = np.clip(fill, 0, None)
    return out, new


def motion_blur(rng, img: np.ndarray) -> np.ndarray:
    """Motion-like blur/ghosting: the mean of the image and 2-4 copies shifted by up to 1.5 voxels."""
    n = int(rng.integers(2, 5))
    acc = img.astype(np.float32).copy()
    for _ in range(n):
        acc += ndimage.shift(img, rng.uniform(-1.5, 1.5, 3), order=1, mode="nearest")
    return acc / (n + 1)


def post_contrast_like(rng, img: np.ndarray, sub: np.ndarray) -> np.ndarray:
    """Gadolinium-like enhancement: bright thin structures in the CSF spaces and at the brain's edge."""
    csf = sub == 1
    if not csf.any():
        return img
    specks = (rng.random(img.shape) < rng.uniform(0.02, 0.08)) & csf
    bright = ndimage.gaussian_filter(specks.astype(np.float32), 0.7)
    gain = rng.uniform(2.0, 6.0)
    return img + gain * bright * float(np.percentile(img, 99))


def build_bank(data_dir, out_path, *, n: int, seed: int = 0, cfg: SynthConfig | None = None,
               spacing_mm: int = 2, progress=None, maps: list[LabelMap] | None = None) -> Path:
    """Pre-generate ``n`` synthetic pairs (+ the untransformed real scans) into a compressed ``.npz``.

    Images are stored as uint8 (0..255 of the [0, 1] range), classes as uint8; ``meta`` records
    the seed, config and label maps so the bank is reproducible. ``maps`` replaces the label maps
    built from ``data_dir`` (tests use the bundled Colin27 sample). ``cfg`` None: the default
    :class:`SynthConfig`.
    """
    if cfg is None:
        cfg = SynthConfig()
    if maps is None:
        maps = build_label_maps(data_dir, spacing_mm)
    rng = np.random.default_rng(seed)
    images = np.zeros((n,) + tuple(cfg.out_shape), np.uint8)
    labels = np.zeros((n,) + tuple(cfg.out_shape), np.uint8)
    sources = []
    for i in range(n):
        j = int(rng.integers(len(maps)))
        img, cls = synthesize(maps[j], rng, cfg)
        images[i] = np.round(img * 255).astype(np.uint8)
        labels[i] = cls
        sources.append(maps[j].name)
        if progress:
            progress(i + 1, n)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"seed": seed, "n": n, "spacing_mm": spacing_mm, "config": cfg.__dict__, "sources": sources,
            "maps": [m.name for m in maps]}
    tmp = out_path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, images=images, labels=labels, meta=np.array(json.dumps(meta, default=list)))
    tmp.replace(out_path)
    return out_path


def load_bank(path) -> tuple[np.ndarray, np.ndarray, dict]:
    with np.load(str(path)) as z:
        return z["images"], z["labels"], json.loads(str(z["meta"]))


__all__ = ["CLASS_NAMES", "N_CLASSES", "SUB_TO_CLASS", "LabelMap", "SynthConfig", "build_label_maps",
           "synthesize", "shrink_tissue", "build_bank", "extend_neck", "intracranial_mask", "ICV_DEFAULTS",
           "label_map_from_arrays",
           "head_label_map_1mm", "load_bank", "percentile_normalise", "kmeans_1d", "otsu_threshold",
           "clean_mask", "largest_component"]
