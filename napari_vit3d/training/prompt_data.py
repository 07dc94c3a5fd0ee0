"""Training objects for the promptable model (``napari-vit3d train-prompt``).

There is no labelled set offline, so every object is built here from the real scans in
``../shared/data`` (README there): Colin27 (T1 with skull), the MNI152 2009a template and its tissue
maps, and the pydeface population-mean head (with face). Three kinds of object, each a 3D mask on a
real image:

* **structures**: connected components of the label maps: the head, the intracranial brain, the
  tight brain, white and gray matter, the ventricles (CSF components inside the tight brain), the
  k-means classes outside the brain (scalp fat, muscle, the skull/CSF-dark band) of Colin27 and the
  pydeface head;
* **supervoxels** (the ScribblePrompt idea): ``skimage.segmentation.slic`` in 3D on each real image
  at 2 mm with 150, 600 and 2500 segments: objects whose borders are real image edges;
* **synthetic shapes** pasted into a real crop: deformed ellipsoids, lobulated blobs, tubes and thin
  shells, with a random texture, optionally a rim and a necrotic core, partial-volume blurred.

A training sample is a crop of ``size`` voxels at a random spacing (0.7–5 mm, chosen so the
object's extent is 10–130 % of the crop), slightly rotated, centred near the first click; its
intensities are normalised by the crop's own percentiles (as at inference) and then remapped at
random (gamma, inversion, random monotone or non-monotone curves) so the network does not rely on
one contrast; some crops are rendered **CT-like** from the Colin27 label map (Hounsfield-like
values for air, fat, muscle, bone, CSF, GM, WM, then the same percentile normalisation). Clicks
follow the simulated user (``prompt.clicks``): the first deep inside the object; in half of the
samples a previous mask (the object eroded, dilated, shifted, cut or leaking into a neighbour) and
1–3 corrective clicks in its largest error regions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..inference.preprocess import normalize
from ..prompt.clicks import farthest_point, network_input, next_click
from . import synthesis as S

PYDEFACE = "pydeface/mean_reg2mean.nii.gz"
#: the crop normalisation of the promptable model (the spec's ``normalization``)
CROP_NORMALIZATION = {"kind": "percentile", "lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": True}


@dataclass
class Structure:
    name: str
    box: tuple[slice, slice, slice]
    mask: np.ndarray              # bool, the box's part of the source grid

    @property
    def extent_vox(self) -> np.ndarray:
        return np.array([s.stop - s.start for s in self.box], float)

    @cached_property
    def border_voxels(self) -> np.ndarray:
        """(n, 3) voxels of the mask's border (box coordinates), every 3rd one."""
        return np.argwhere(self.mask & ~ndimage.binary_erosion(self.mask))[::3]


@dataclass
class PromptSource:
    """One real image on a 1 mm grid with the objects cut from it."""
    name: str
    image: np.ndarray             # float32, raw intensities
    head: np.ndarray              # bool
    structures: list[Structure] = field(default_factory=list)
    supervoxels: list[np.ndarray] = field(default_factory=list)   # int32 labels on the 2 mm grid (voxel blocks)
    sublabels: np.ndarray | None = None                          # synthesis sub-labels (CT-like rendering)


def _boxed(name: str, mask: np.ndarray, min_voxels: int = 30) -> Structure | None:
    if int(mask.sum()) < min_voxels:
        return None
    sl = ndimage.find_objects(mask.astype(np.uint8))[0]
    return Structure(name, sl, np.ascontiguousarray(mask[sl]))


def components(name: str, mask: np.ndarray, *, top: int = 6, min_voxels: int = 200) -> list[Structure]:
    """The ``top`` largest connected components of ``mask`` as structures."""
    lab, n = ndimage.label(mask)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1][:top]
    out = []
    for k in order:
        if sizes[k] < min_voxels:
            break
        s = _boxed(f"{name} #{len(out)}", lab == k)
        if s is not None:
            out.append(s)
    return out


def supervoxels(image: np.ndarray, head: np.ndarray, n_segments=(150, 600, 2500), seed: int = 0) -> list[np.ndarray]:
    """SLIC supervoxels of ``image`` inside ``head`` on the 2 mm block grid (one label array per count)."""
    from skimage.segmentation import slic

    img2 = S.block_mean(image, 2)
    head2 = S.block_mean(head, 2) > 0.5
    lo, hi = np.percentile(img2[head2], [1, 99]) if head2.any() else (0.0, 1.0)
    x = np.clip((img2 - lo) / max(hi - lo, 1e-6), 0, 1)
    out = []
    for n in n_segments:
        lab = slic(x, n_segments=int(n), compactness=0.1, channel_axis=None, mask=head2, start_label=1,
                   enforce_connectivity=True)
        out.append(lab.astype(np.int32))
    return out


def _head_mask(t1: np.ndarray) -> np.ndarray:
    head = t1 > 0.5 * S.otsu_threshold(t1)
    head = ndimage.binary_closing(head, iterations=2)
    head = S.clean_mask(head)
    for k in range(head.shape[2]):
        head[:, :, k] = ndimage.binary_fill_holes(head[:, :, k])
    return head


def colin_source(t1: np.ndarray, brain_mask: np.ndarray, *, n_segments=(150, 600, 2500)) -> PromptSource:
    labels, icv = S.head_label_map_1mm(t1, brain_mask)
    tight = S.clean_mask(brain_mask > 0)
    head = labels > 0
    st = [s for s in (_boxed("head", head), _boxed("brain (intracranial)", icv), _boxed("brain (tight)", tight)) if s]
    st += components("white matter", labels == 3, top=1)
    st += components("gray matter", labels == 2, top=1)
    vent = (labels == 1) & ndimage.binary_erosion(tight, iterations=6)
    st += components("ventricle/CSF", vent, top=4, min_voxels=300)
    for sub, nm in ((4, "dark extracranial (skull/CSF band)"), (5, "muscle-like"), (6, "fat/scalp-like")):
        st += components(nm, labels == sub, top=5, min_voxels=300)
    return PromptSource("colin27", t1.astype(np.float32), head, st, supervoxels(t1, head, n_segments), labels)


def mni_source(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, *, n_segments=(150, 600, 2500)) -> PromptSource:
    brain = S.clean_mask(t1 > 0.1 * S.otsu_threshold(t1[t1 > 0]))
    g, w = gm / 255.0, wm / 255.0
    csf = np.clip(1 - g - w, 0, 1)
    st = [s for s in (_boxed("brain (template)", brain),) if s]
    st += components("white matter", (w > 0.5) & brain, top=1)
    st += components("gray matter", (g > 0.5) & brain, top=1)
    st += components("ventricle/CSF", (csf > 0.6) & ndimage.binary_erosion(brain, iterations=8), top=4, min_voxels=300)
    return PromptSource("mni152", t1.astype(np.float32), brain, st, supervoxels(t1, brain, n_segments))


def pydeface_source(t1: np.ndarray, *, n_segments=(150, 600, 2500)) -> PromptSource:
    head = _head_mask(t1)
    st = [s for s in (_boxed("head", head),) if s]
    c = S.kmeans_1d(t1[head], 4, seed=3)
    cls = S.assign_clusters(t1, c)
    for k in range(4):
        st += components(f"intensity class {k}", head & (cls == k), top=4, min_voxels=500)
    return PromptSource("pydeface", t1.astype(np.float32), head, st, supervoxels(t1, head, n_segments))


def build_sources(data_dir, *, n_segments=(150, 600, 2500)) -> list[PromptSource]:
    d = Path(data_dir)

    def load(rel):
        img = nib.load(str(d / rel))
        return np.asarray(img.dataobj, np.float32)

    out = [colin_source(load(S.COLIN_T1), load(S.COLIN_BET), n_segments=n_segments),
           mni_source(load(S.MNI_T1), load(S.MNI_GM), load(S.MNI_WM), n_segments=n_segments)]
    if (d / PYDEFACE).exists():
        out.append(pydeface_source(load(PYDEFACE), n_segments=n_segments))
    return out


# ------------------------------------------------------------------------------------------ sampling

def _rotation(rng, max_deg: float) -> np.ndarray:
    return S._rotation(np.deg2rad(rng.uniform(-max_deg, max_deg, 3)))


def crop_coords(centre_vox: np.ndarray, spacing: float, size: int, rot: np.ndarray) -> np.ndarray:
    """Source voxel coordinates (3, s, s, s) of a rotated crop of ``size`` voxels of ``spacing`` source voxels."""
    t = (np.arange(size, dtype=np.float32) - (size - 1) / 2) * float(spacing)
    g = np.stack(np.meshgrid(t, t, t, indexing="ij"))
    centre = np.asarray(centre_vox, np.float32)[:, None, None, None]
    return np.einsum("ij,j...->i...", rot.astype(np.float32), g) + centre


def _sample_mask(st: Structure, coords: np.ndarray) -> np.ndarray:
    local = coords - np.array([s.start for s in st.box], np.float32)[:, None, None, None]
    return ndimage.map_coordinates(st.mask.astype(np.uint8), local, order=0, mode="constant", cval=0) > 0


def ct_like(rng, sublabels_crop: np.ndarray) -> np.ndarray:
    """Hounsfield-like values for a crop of synthesis sub-labels (0 air … 6 fat/scalp)."""
    hu = np.array([-1000, 8, 38, 28, rng.uniform(600, 1400), 50, -90], np.float32)
    hu[1:4] += rng.normal(0, 3, 3).astype(np.float32)
    x = hu[sublabels_crop]
    x = ndimage.gaussian_filter(x, rng.uniform(0.4, 1.0))
    return x + rng.normal(0, rng.uniform(3, 15), x.shape).astype(np.float32)


def remap_intensity(rng, x: np.ndarray) -> np.ndarray:
    """A random contrast for a crop in [0, 1]: gamma, inversion, random monotone or non-monotone curve."""
    r = rng.random()
    if r < 0.3:
        return x
    if r < 0.55:
        return np.clip(x, 0, 1) ** float(np.exp(rng.normal(0, 0.5)))
    if r < 0.7:
        return 1.0 - x
    knots = np.linspace(0, 1, 6)
    vals = rng.random(6)
    if rng.random() < 0.5:
        vals = np.sort(vals)
    return np.interp(x, knots, vals).astype(np.float32)


def synthetic_shape(rng, size: int) -> np.ndarray:
    """A random object mask in a crop: deformed ellipsoid, lobulated blob, tube or thin shell."""
    g = np.stack(np.meshgrid(*[np.arange(size, dtype=np.float32)] * 3, indexing="ij"))
    c = size / 2 + rng.uniform(-size / 8, size / 8, 3)
    kind = rng.choice(["ellipsoid", "lobulated", "tube", "shell"], p=[0.35, 0.3, 0.2, 0.15])
    rmax = size * rng.uniform(0.06, 0.38)
    if kind in ("ellipsoid", "shell"):
        radii = rmax * rng.uniform(0.5, 1.0, 3)
        rot = _rotation(rng, 90)
        d = np.einsum("ij,j...->i...", rot.T.astype(np.float32), g - c[:, None, None, None].astype(np.float32))
        r = np.sqrt(sum((d[i] / radii[i]) ** 2 for i in range(3)))
        r = r + S.smooth_field(rng, (size,) * 3, 4, rng.uniform(0, 0.15))[0]
        if kind == "shell":
            t = rng.uniform(1.5, 3.5) / radii.mean()
            return (r <= 1.0) & (r >= 1.0 - t)
        return r <= 1.0
    if kind == "lobulated":
        m = np.zeros((size,) * 3, bool)
        for _ in range(int(rng.integers(2, 6))):
            cc = c + rng.normal(0, rmax * 0.5, 3)
            rr = rmax * rng.uniform(0.35, 0.7)
            m |= np.sum((g - cc[:, None, None, None]) ** 2, axis=0) <= rr * rr
        return m
    # tube: a smooth random curve, radius 1.5-5 voxels
    pts = [c]
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    length = rng.uniform(0.4, 1.0) * size
    n = 24
    for _ in range(n):
        direction = direction + rng.normal(0, 0.25, 3)
        direction /= np.linalg.norm(direction)
        pts.append(pts[-1] + direction * length / n)
    pts = np.array(pts) - (np.array(pts).mean(0) - c)
    rad = rng.uniform(1.5, 5.0)
    d2 = np.full((size,) * 3, np.inf, np.float32)
    for p in pts:
        d2 = np.minimum(d2, np.sum((g - p[:, None, None, None].astype(np.float32)) ** 2, axis=0))
    return d2 <= rad * rad


def paste_shape(rng, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Paste ``mask`` into the normalised crop ``x`` with a random texture, rim and core, partial volume."""
    inside = x[mask]
    around = x[ndimage.binary_dilation(mask, iterations=3) & ~mask]
    ref = float(np.median(around)) if around.size else 0.5
    sign = 1.0 if rng.random() < 0.5 else -1.0
    mean = np.clip(ref + sign * rng.uniform(0.12, 0.5), 0, 1)
    tex = mean + S.smooth_field(rng, x.shape, 6, rng.uniform(0, 0.08))[0] + rng.normal(0, rng.uniform(0, 0.05), x.shape)
    val = tex.astype(np.float32)
    d = ndimage.distance_transform_edt(mask)
    if rng.random() < 0.35 and d.max() > 4:     # rim
        rim = mask & (d <= rng.uniform(1.0, 2.5))
        val[rim] = np.clip(mean + sign * rng.uniform(0.1, 0.3), 0, 1)
    if rng.random() < 0.3 and d.max() > 5:      # necrotic core
        core = d > d.max() * rng.uniform(0.4, 0.7)
        val[core] = np.clip(ref - sign * rng.uniform(0.0, 0.3), 0, 1)
    alpha = ndimage.gaussian_filter(mask.astype(np.float32), rng.uniform(0.3, 1.0))
    if inside.size == 0:
        return x
    return (x * (1 - alpha) + val * alpha).astype(np.float32)


def corrupt(rng, gt: np.ndarray) -> np.ndarray:
    """A plausible previous mask: ``gt`` eroded, dilated, shifted, cut, or leaking into a blob."""
    m = gt.copy()
    kind = rng.choice(["erode", "dilate", "shift", "cut", "leak", "empty_part"])
    if kind == "erode":
        m = ndimage.binary_erosion(m, iterations=int(rng.integers(1, 4)))
    elif kind == "dilate":
        m = ndimage.binary_dilation(m, iterations=int(rng.integers(1, 4)))
    elif kind == "shift":
        m = ndimage.shift(m.astype(np.uint8), rng.integers(-3, 4, 3), order=0) > 0
    elif kind == "cut":
        f = S.smooth_field(rng, m.shape, 3, 1.0)[0]
        m = m & (f > np.quantile(f, rng.uniform(0.2, 0.6)))
    elif kind == "leak":
        f = S.smooth_field(rng, m.shape, 4, 1.0)[0]
        blob = (f > np.quantile(f, rng.uniform(0.85, 0.97))) & ndimage.binary_dilation(m, iterations=8)
        m = m | blob
    else:
        f = S.smooth_field(rng, m.shape, 5, 1.0)[0]
        m = m & ~(f > np.quantile(f, 0.8))
    return m


@dataclass
class PromptSampleConfig:
    size: int = 64
    spacing_range: tuple[float, float] = (0.7, 5.0)
    extent_ratio: tuple[float, float] = (0.1, 1.3)
    extent_log: bool = False        # draw the ratio log-uniformly (as many objects at 0.1–0.5 as at 0.5–2.5)
    rotation_deg: float = 15.0
    p_kind: tuple[float, float, float] = (0.35, 0.3, 0.35)   # structure, supervoxel, synthetic
    p_ct: float = 0.12
    p_previous: float = 0.5
    click_radius: float = 1.5
    p_plain: float = 0.0            # synthetic shapes: share pasted into a plain noisy background, not a real crop
    p_border: float = 0.0           # share of border edits: a structure larger than the crop, a piece of its
    #                                 border missing from or added to the previous mask, clicks only on that piece
    border_spacing: tuple[float, ...] = (1.0, 1.0, 1.0, 1.75)   # drawn from (the session's fine levels)
    click_encoding: dict | None = None   # the model's ``extra.click_encoding`` (None: balls; prompt.clicks)


def plain_background(rng, size: int) -> np.ndarray:
    """A normalised crop with no anatomy: a random level, a smooth field, Gaussian noise (the planted-object
    case: a bright or dark object in noise, as in phantoms and the issue's sphere test)."""
    x = rng.uniform(0.1, 0.6) + S.smooth_field(rng, (size,) * 3, 4, rng.uniform(0, 0.1))[0]
    x = x + rng.normal(0, rng.uniform(0.01, 0.12), x.shape)
    return np.clip(x, 0, 1).astype(np.float32)


def _choose_spacing(rng, extent_vox: float, cfg: PromptSampleConfig) -> float:
    if cfg.extent_log:
        ratio = float(np.exp(rng.uniform(*np.log(cfg.extent_ratio))))
    else:
        ratio = rng.uniform(*cfg.extent_ratio)
    sp = extent_vox / max(ratio * cfg.size, 1e-6)
    return float(np.clip(sp, *cfg.spacing_range))


def sample(rng: np.random.Generator, sources: list[PromptSource], cfg: PromptSampleConfig | None = None):
    """One training pair ``(x (4, s, s, s) float32, y (s, s, s) uint8)``: network input and object mask
    (``cfg`` None: the default :class:`PromptSampleConfig`)."""
    if cfg is None:
        cfg = PromptSampleConfig()
    for _ in range(20):
        out = _try_sample(rng, sources, cfg)
        if out is not None:
            return out
    raise RuntimeError("could not draw a prompt training sample (objects too small?)")


def border_piece(rng, y: np.ndarray, near: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """A piece of ``y``'s border near voxel ``near``, as the error of a whole-structure segmentation there:
    ``(piece, missing)``. The piece is a smooth-edged lump (radius 3–14 voxels) on a border voxel, or a rim
    1–4 voxels deep within a 6–20 voxel radius (a border that lies inside or outside the truth); ``missing``
    says whether it is cut from ``y`` (else it is added outside it). ``None`` if ``y`` has no border here."""
    y = np.asarray(y, bool)
    border = y & ~ndimage.binary_erosion(y)
    bv = np.argwhere(border)
    if len(bv) == 0:
        return None
    d = np.linalg.norm(bv - near, axis=1)
    c = bv[int(np.argmin(d + rng.uniform(0, 8, len(d))))]
    dist = np.sqrt(sum((g - ci) ** 2 for g, ci in zip(np.ogrid[tuple(slice(0, n) for n in y.shape)], c)))
    missing = bool(rng.random() < 0.5)
    if rng.random() < 0.6:
        r = float(rng.uniform(3, 14))
        f = S.smooth_field(rng, y.shape, 4, 1.0)[0]
        region = dist + r * 0.35 * f / max(float(np.abs(f).max()), 1e-6) <= r
    else:
        it = int(rng.integers(1, 5))
        rim = (y & ~ndimage.binary_erosion(y, iterations=it)) if missing else (
            ndimage.binary_dilation(y, iterations=it) & ~y)
        region = rim & (dist <= rng.uniform(6, 20))
    piece = region & y if missing else region & ~y
    if piece.sum() < 8:
        return None
    return piece, missing


def _try_border(rng, src, cfg):
    """A border edit (see :attr:`PromptSampleConfig.p_border`): ``(input, target)`` or ``None``. The clicks
    are the simulated user's corrections of the previous mask only (1–2 of them, the first on the piece):
    the case of a whole-brain segmentation corrected with one click where it is wrong."""
    size = int(cfg.size)
    rot = _rotation(rng, cfg.rotation_deg)
    sp = float(rng.choice(cfg.border_spacing))
    big = [st for st in src.structures if float(st.extent_vox.max()) > 0.8 * size * sp]
    if not big:
        return None
    st = big[int(rng.integers(len(big)))]
    bv = st.border_voxels
    if not len(bv):
        return None
    centre = bv[int(rng.integers(len(bv)))] + [s.start for s in st.box] + rng.uniform(-8, 8, 3)
    coords = crop_coords(centre, sp, size, rot)
    y = _sample_mask(st, coords)
    if y.sum() < 0.05 * size ** 3 or (~y).sum() < 0.05 * size ** 3:
        return None
    out = border_piece(rng, y, np.full(3, (size - 1) / 2) + rng.uniform(-10, 10, 3))
    if out is None:
        return None
    piece, missing = out
    prev = (y & ~piece) if missing else (y | piece)
    x = _render(rng, src, cfg, "structure", coords, y)
    pos, neg = [], []
    _corrections(rng, y, prev, int(rng.integers(1, 3)), pos, neg)
    if not pos and not neg:
        return None
    return network_input(x, pos, neg, prev, cfg.click_radius, cfg.click_encoding), y.astype(np.uint8)


def _corrections(rng, y: np.ndarray, prev: np.ndarray, n: int, pos: list, neg: list) -> None:
    """Up to ``n`` simulated corrective clicks on ``prev`` (truth ``y``), appended to ``pos`` / ``neg``: each
    in the largest error left, the user seeing each click fix a ball around it before the next."""
    work = prev.copy()
    for _ in range(n):
        nc = next_click(y, work, rng=rng, jitter=0.2)
        if nc is None:
            break
        (pos if nc[1] else neg).append(nc[0])
        work = np.where(ndimage.binary_dilation(_point(y.shape, nc[0]), iterations=3), y, work)


def _point(shape, voxel) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(np.clip(voxel, 0, np.asarray(shape) - 1))] = True
    return m


def _try_sample(rng, sources, cfg):
    src = sources[int(rng.integers(len(sources)))]
    if cfg.p_border > 0 and rng.random() < cfg.p_border:
        return _try_border(rng, src, cfg)
    size = int(cfg.size)
    kind = rng.choice(["structure", "supervoxel", "synthetic"], p=np.asarray(cfg.p_kind) / np.sum(cfg.p_kind))
    rot = _rotation(rng, cfg.rotation_deg)
    if rng.random() < 0.5:
        rot = rot @ np.diag([-1.0, 1.0, 1.0])
    if kind == "structure" and src.structures:
        st = src.structures[int(rng.integers(len(src.structures)))]
        click = farthest_point(st.mask, rng=rng, jitter=0.3)
        click = np.asarray(click, float) + [s.start for s in st.box]
        sp = _choose_spacing(rng, float(st.extent_vox.max()), cfg)
        centre = click + rng.uniform(-0.15, 0.15, 3) * size * sp
        coords = crop_coords(centre, sp, size, rot)
        y = _sample_mask(st, coords)
    elif kind == "supervoxel" and src.supervoxels:
        lab2 = src.supervoxels[int(rng.integers(len(src.supervoxels)))]
        ids = np.unique(lab2[lab2 > 0])
        if ids.size == 0:
            return None
        k = int(ids[int(rng.integers(ids.size))])
        m2 = lab2 == k
        if m2.sum() < 4:
            return None
        box = ndimage.find_objects(m2.astype(np.uint8))[0]
        st = Structure("supervoxel", box, np.ascontiguousarray(m2[box]))
        click2 = np.asarray(farthest_point(st.mask, rng=rng, jitter=0.3), float) + [s.start for s in box]
        click = click2 * 2 + 0.5                      # 2 mm block grid → 1 mm grid
        sp = _choose_spacing(rng, float(st.extent_vox.max()) * 2, cfg)
        centre = click + rng.uniform(-0.15, 0.15, 3) * size * sp
        coords = crop_coords(centre, sp, size, rot)
        y = _sample_mask(st, (coords - 0.5) / 2)
    else:
        hv = np.argwhere(src.head[::4, ::4, ::4]) * 4
        if not len(hv):
            return None
        centre = hv[int(rng.integers(len(hv)))].astype(float)
        sp = float(rng.uniform(0.7, 3.0))
        coords = crop_coords(centre, sp, size, rot)
        y = synthetic_shape(rng, size)
    if y.sum() < 8:
        return None
    x = _render(rng, src, cfg, kind, coords, y)
    pos = [farthest_point(y, rng=rng, jitter=0.3)]
    neg = []
    prev = None
    if rng.random() < cfg.p_previous:
        prev = corrupt(rng, y)
        _corrections(rng, y, prev, int(rng.integers(1, 4)), pos, neg)
    elif rng.random() < 0.3:
        extra = farthest_point(y & (rng.random(y.shape) < 0.5), rng=rng, jitter=0.8)
        if extra is not None:
            pos.append(extra)
    inp = network_input(x, pos, neg, prev, cfg.click_radius, cfg.click_encoding)
    return inp, y.astype(np.uint8)




def _render(rng, src, cfg, kind, coords, y) -> np.ndarray:
    """The crop's normalised image at ``coords``: the scan (or a CT-like rendering of its sub-labels), a
    synthetic shape ``y`` pasted in, random intensity remapping and noise."""
    if kind != "synthetic" and src.sublabels is not None and rng.random() < cfg.p_ct:
        sub = ndimage.map_coordinates(src.sublabels, coords, order=0, mode="constant", cval=0).astype(np.uint8)
        img = ct_like(rng, sub)
    else:
        img = ndimage.map_coordinates(src.image, coords, order=1, mode="nearest")
    x = normalize(img[..., None].astype(np.float32), CROP_NORMALIZATION)[..., 0]
    if kind == "synthetic" and cfg.p_plain > 0 and rng.random() < cfg.p_plain:
        x = plain_background(rng, int(cfg.size))
    if kind == "synthetic":
        x = paste_shape(rng, x, y)
    x = remap_intensity(rng, x)
    return np.clip(x + rng.normal(0, rng.uniform(0, 0.03), x.shape).astype(np.float32), 0, 1)


def plant_lesion(rng, image: np.ndarray, centre_vox, *, size: int = 48):
    """A synthetic lesion (``synthetic_shape`` + ``paste_shape``) planted into a whole scan at ``centre_vox``.

    Returns ``(image with the lesion, lesion mask)`` on the scan's grid; the intensities are pasted in
    the block's normalised range and mapped back to the scan's units. Benchmarks use generators the
    training never draws from (seeds ≥ 10 000) for held-out lesions.
    """
    img = np.asarray(image, np.float32).copy()
    mask_full = np.zeros(img.shape, bool)
    c = np.asarray(centre_vox, int)
    lo = c - size // 2
    sl = tuple(slice(max(0, a), min(n, a + size)) for a, n in zip(lo, img.shape))
    off = tuple(s.start - a for s, a in zip(sl, lo))
    block = img[sl]
    bl, bh = np.percentile(block, [0.5, 99.5])
    x = np.clip((block - bl) / max(bh - bl, 1e-6), 0, 1)
    shape = synthetic_shape(rng, size)
    m = shape[tuple(slice(o, o + n) for o, n in zip(off, block.shape))]
    if m.sum() < 8:
        return img, mask_full
    x = paste_shape(rng, x, m)
    img[sl] = x * (bh - bl) + bl
    mask_full[sl] = m
    return img, mask_full


__all__ = ["CROP_NORMALIZATION", "PromptSampleConfig", "PromptSource", "Structure", "build_sources", "colin_source",
           "components", "corrupt", "crop_coords", "ct_like", "mni_source", "paste_shape", "pydeface_source",
           "plant_lesion", "remap_intensity", "sample", "supervoxels", "synthetic_shape"]
