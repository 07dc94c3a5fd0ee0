"""Click-prompted segmentation of one scan: :class:`PromptSession`.

A session holds a scan, a promptable model (``napari_vit3d/resources/prompt_models``), the clicks so far and the
current mask. Each :meth:`PromptSession.predict`:

1. picks the **crop**: centred on the clicks (and the box, and the current mask), at the finest
   zoom level of the model (``levels_mm``, e.g. 1 / 1.75 / 3 / 4.5 mm for a 64-voxel crop: 64 to
   288 mm across) whose field of view holds them with a margin;
2. samples the scan onto the crop (linear; cached per crop, so the next click on the same crop does
   not resample or renormalise the scan), normalises it by the crop's own percentiles (any MRI
   contrast, CT in HU), adds the click balls and the current mask as channels and runs the network
   once (the prompts enter at the first layer, as in nnInteractive, so every click is one forward
   pass of the 64³ crop: about 0.1 s on a laptop CPU);
3. **zooms out** when the object reaches the crop's faces: the next level, re-centred on the
   object, until it fits or the coarsest level is reached;
4. maps the object probability back onto the scan's own grid (linear, > 0.5) inside the crop's
   footprint, keeps the connected parts that hold a positive click, clips to the box if one was
   given, and returns a ``Volume`` (uint8 0/1) on the scan grid;
5. a **corrective click** (any click once there is a mask: the previous prediction, or a mask given
   with :meth:`PromptSession.set_previous`) is a **local edit** (``local_edits=True``, the default):
   only the connected region the click is about changes — for a positive click, the part the
   network's new mask adds (new minus previous) that holds the click; for a negative click, the part
   it removes (previous minus new) that holds it — and the rest of the previous mask stays as it
   was, inside and outside the crop. Measured (``benchmarks/bench_prompt.py``): letting a click
   redraw the whole object made the third click worse than the first on held-out lesions;
   ``local_edits=False`` keeps that behaviour (each prediction replaces the mask inside the crop).
   A corrective click on a mask given with ``set_previous`` (a segmentation to correct) too large for the
   second zoom level (``large_edit_mm``, 0.7 of its crop: 78 mm for the bundled model, e.g. a whole brain
   to correct) is predicted on a crop centred on the click at the coarsest level whose voxels are no
   larger than the click's **depth** (the distance from the click to the mask's other side: to the mask
   for a positive click, out of it for a negative one), without zooming out, and its change is kept
   within the click's **reach**: twice the depth plus two voxels. The network's edits scale with its
   crop (at 1 mm it fills a fifth of a 12 mm lump), and the 4.5 mm voxels of a coarse crop mapped back
   leak along the whole border: measured on the default model's brain with lumps and thin rims cut out
   or added (``benchmarks/eval_prompt_correct.py``, ``docs/models/segformer3d-prompt.md``), this rule
   improved 32 of 32 trials (lumps: 0.99 of a missing one filled, 0.75 of an extra one removed; a brush
   dab: 0.25), where the finest crop around the click improved 26 of 32 (0.19 and 0.01 of lumps) and the
   crop holding the whole mask 15 of 32 (19,000 voxels added along the border for a lump of 3,700).
6. a positive corrective click far from an object still being grown by clicks (its depth: mm to the
   current mask) says the object reaches that far: the crop is at least the coarsest level whose voxels
   are at most a quarter of that depth (``grow_depth_factor``), and, when that is coarser than the
   usual choice, the change is kept within the click's reach. The network's edits scale with its crop:
   measured on the benchmark's structures (``bench_prompt.py``, stage-10 weights), the second click on a
   whole brain went from 1.75 to 4.5 mm and Dice after 3 clicks from 0.11 to 0.54 (6 structures: 0.212 ->
   0.382), while 7 of 8 held-out lesions were unchanged (one 6.6 mL lesion 0.66 -> 0.49, the MNI152
   ventricles 0.28 -> 0.09).

Nothing here imports Qt or napari; the GUI and the CLI call this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..errors import Cancelled, GeometryError, ModelError
from ..inference.preprocess import normalize
from ..io.geometry import voxel_spacing
from ..io.volume import Volume
from .clicks import network_input
from .crop import Crop, crop_to_scan, make_crop, sample_scan, scan_box

DEFAULT_PROMPT_MODEL = "segformer3d-prompt"


def prompt_models_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("napari_vit3d") / "resources" / "prompt_models"))


def list_prompt_models() -> list[str]:
    """Names of the bundled promptable models."""
    d = prompt_models_dir()
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def load_prompt_model(name_or_path=None, device="cpu"):
    """A bundled promptable model by name (default ``segformer3d-prompt``) or a spec ``.json`` path."""
    from ..models import load_model

    target = name_or_path or DEFAULT_PROMPT_MODEL
    p = Path(str(target))
    if not p.exists():
        cand = prompt_models_dir() / f"{target}.json"
        if not cand.is_file():
            bundled = ", ".join(list_prompt_models()) or "none"
            raise ModelError(f"unknown promptable model {target!r}; bundled: {bundled}")
        p = cand
    model = load_model(str(p), device=device)
    check_prompt_spec(model.spec)
    return model


def check_prompt_spec(spec) -> None:
    if spec.in_channels != 4 or spec.n_classes != 2 or spec.extra.get("task") != "prompt":
        raise ModelError(f"model {spec.name!r} is not a promptable model (it needs 4 input channels: image, positive, "
                         "negative, previous mask; 2 labels; extra.task = 'prompt')")


@dataclass
class Click:
    world: np.ndarray
    positive: bool


@dataclass
class PromptResult:
    mask: Volume
    crop: Crop
    probability: np.ndarray          # on the crop grid
    input: torch.Tensor | None = None  # the network input (1, 4, *crop) of this prediction
    levels_tried: list = field(default_factory=list)


def _as_world(volume: Volume, world=None, voxel=None) -> np.ndarray:
    """World mm of a point given in world mm or as a file voxel index, checked to lie inside the scan
    (the explanation engine's rule: one home for query points)."""
    from ..explain.session import query_world

    return query_world(volume, voxel=voxel, world=world)


class PromptSession:
    """Click-prompted segmentation of ``volume`` with ``model`` (see the module docstring)."""

    def __init__(self, model, volume: Volume, *, channel: int = 0, max_cached_crops: int = 4,
                 local_edits: bool = True):
        if isinstance(model, (str, Path)) or model is None:
            model = load_prompt_model(model)
        check_prompt_spec(model.spec)
        self.model = model
        self.network = model.network.eval()
        self.spec = model.spec
        self.volume = volume
        data = volume.data if volume.data.ndim == 3 else volume.data[..., int(channel)]
        data = np.asarray(data, np.float32)
        finite = np.isfinite(data)
        if not finite.all():
            if not finite.any():
                raise GeometryError(f"{volume.name} has no finite voxel values")
            data = np.where(finite, data, np.float32(np.nanmin(data[finite])))
        self._data = data
        self.size = tuple(int(s) for s in self.spec.roi_size)
        self.levels = tuple(float(v) for v in self.spec.extra.get("levels_mm", [1.0, 2.0, 4.0]))
        self.radius = float(self.spec.extra.get("click_radius_vox", 1.5))
        self.click_encoding = self.spec.extra.get("click_encoding")   # None: balls (prompt.clicks)
        self.clicks: list[Click] = []
        self.box: tuple[np.ndarray, np.ndarray] | None = None
        self.current: np.ndarray | None = None   # bool mask on the scan grid
        self._crops: dict = {}
        self.max_cached_crops = int(max_cached_crops)
        self.last: PromptResult | None = None
        self._last_input: torch.Tensor | None = None
        self.crop_cache_hits = 0
        self.local_edits = bool(local_edits)
        self._given = False          # the current mask came from set_previous (a segmentation to correct)
        try:
            self.device = next(self.network.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")

    # -- prompts --------------------------------------------------------------------------------
    def add_point(self, *, world=None, voxel=None, positive: bool = True) -> np.ndarray:
        w = _as_world(self.volume, world, voxel)
        self.clicks.append(Click(w, bool(positive)))
        return w

    def set_box(self, world_min, world_max) -> None:
        a, b = np.asarray(world_min, float).reshape(-1), np.asarray(world_max, float).reshape(-1)
        if a.size != 3 or b.size != 3 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            raise GeometryError("a box needs two corners of 3 finite numbers (mm)")
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        if np.any(hi - lo <= 0):
            raise GeometryError(f"the box {lo.round(1).tolist()}–{hi.round(1).tolist()} mm has no volume")
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        ijk = (corners - self.volume.affine[:3, 3]) @ np.linalg.inv(self.volume.affine[:3, :3]).T
        shape = np.asarray(self.volume.spatial_shape)
        if np.any(ijk.max(0) < -0.5) or np.any(ijk.min(0) > shape - 0.5):
            raise GeometryError("the box lies outside the scan")
        self.box = (lo, hi)

    def set_previous(self, mask: Volume | np.ndarray) -> None:
        """Start from an existing mask (on the scan grid): the next click corrects it."""
        arr = mask.data if isinstance(mask, Volume) else np.asarray(mask)
        if isinstance(mask, Volume) and (mask.spatial_shape != self.volume.spatial_shape
                                         or not np.allclose(mask.affine, self.volume.affine, atol=1e-4)):
            raise GeometryError("the previous mask is not on the scan's grid (shape and affine must match)")
        if arr.shape[:3] != self.volume.spatial_shape:
            raise GeometryError(f"the previous mask has shape {arr.shape}, the scan {self.volume.spatial_shape}")
        self.current = np.asarray(arr[..., 0] if arr.ndim == 4 else arr) > 0
        self._given = True

    def reset(self) -> None:
        """Forget the clicks, box and mask (a new object); cached crops are kept."""
        self.clicks, self.box, self.current, self.last = [], None, None, None
        self._given = False

    @property
    def positives(self) -> list[np.ndarray]:
        return [c.world for c in self.clicks if c.positive]

    # -- crops ----------------------------------------------------------------------------------
    def _extent_points(self) -> np.ndarray:
        pts = [c.world for c in self.clicks]
        if self.box is not None:
            pts += [self.box[0], self.box[1]]
        return np.array(pts, float)

    def _mask_world_box(self) -> np.ndarray | None:
        if self.current is None or not self.current.any():
            return None
        idx = np.argwhere(self.current)
        corners = np.array([idx.min(0), idx.max(0)], float)
        return corners @ self.volume.affine[:3, :3].T + self.volume.affine[:3, 3]

    def choose_crop(self, min_level: int = 0, around: np.ndarray | None = None) -> tuple[int, Crop]:
        """(level index, crop) for the current prompts: the finest level holding them with a 15 % margin."""
        pts = self._extent_points() if around is None else np.asarray(around, float)
        mb = self._mask_world_box() if around is None else None
        if mb is not None and self.clicks:
            # the current object matters near the new clicks: include it (a given mask wider than
            # large_edit_mm does not get here: edit_crop; an object still being grown is followed whatever
            # its size)
            pts = np.vstack([pts, mb])
        lo, hi = pts.min(0), pts.max(0)
        centre = (lo + hi) / 2
        extent = float(np.max(hi - lo))
        level = min_level
        while level < len(self.levels) - 1 and extent > 0.7 * self.levels[level] * min(self.size):
            level += 1
        last = self.last.crop if self.last is not None else None
        if around is None and last is not None and last.spacing >= self.levels[level] and last.contains(pts, 0.1):
            # the prompts still fit the last crop: keep it (the object stays put, the cached crop is reused)
            return self.levels.index(last.spacing) if last.spacing in self.levels else level, last
        return level, make_crop(self.volume.affine, self.volume.spatial_shape, centre, self.levels[level], self.size)

    @property
    def large_edit_mm(self) -> float:
        """A given mask wider than this (mm) is corrected within the click's reach (module docstring, 5)."""
        return 0.7 * self.levels[min(1, len(self.levels) - 1)] * min(self.size)

    def large_edit(self) -> bool:
        """True when the next prediction is a local edit of a mask given with :meth:`set_previous` (a
        segmentation to correct, not an object still being grown by clicks) wider than :attr:`large_edit_mm`."""
        if not (self.local_edits and self.clicks and self._given):
            return False
        mb = self._mask_world_box()
        return mb is not None and float(np.max(mb[1] - mb[0])) > self.large_edit_mm

    def crop_image(self, crop: Crop) -> np.ndarray:
        """The normalised scan on ``crop`` (cached: the next click on the same crop reuses it)."""
        key = crop.key()
        hit = self._crops.get(key)
        if hit is not None:
            self.crop_cache_hits += 1
            return hit
        raw = sample_scan(self._data, self.volume.affine, crop)
        img = normalize(raw[..., None], self.spec.normalization)[..., 0]
        self._crops[key] = img
        while len(self._crops) > self.max_cached_crops:
            self._crops.pop(next(iter(self._crops)))
        return img

    def network_input(self, crop: Crop) -> torch.Tensor:
        img = self.crop_image(crop)
        pos = [crop.to_voxel(c.world) for c in self.clicks if c.positive]
        neg = [crop.to_voxel(c.world) for c in self.clicks if not c.positive]
        prev = None
        if self.current is not None and self.current.any():
            prev = sample_scan(self.current.astype(np.uint8), self.volume.affine, crop, order=0)
        x = network_input(img, pos, neg, prev, self.radius, self.click_encoding)
        return torch.from_numpy(x)[None].to(self.device)

    def _forward(self, crop: Crop) -> np.ndarray:
        x = self.network_input(crop)
        with torch.no_grad():
            logits = self.network(x)
        self._last_input = x.detach().cpu()
        return torch.softmax(logits.float(), 1)[0, 1].cpu().numpy()

    @staticmethod
    def _touches_faces(prob: np.ndarray, min_voxels: int = 4) -> bool:
        m = prob > 0.5
        faces = [m[0], m[-1], m[:, 0], m[:, -1], m[:, :, 0], m[:, :, -1]]
        return any(int(f.sum()) >= min_voxels for f in faces)

    # -- prediction -----------------------------------------------------------------------------
    def predict(self, *, progress=None, cancel=None) -> PromptResult:
        """The object mask for the clicks so far (see the module docstring)."""
        if not self.positives and (self.current is None or not self.current.any()):
            # with a mask to correct (set_previous), a negative click alone is an edit
            raise GeometryError("click-prompted segmentation needs at least one positive point on the object")
        local_only = self.large_edit()   # a given mask wider than large_edit_mm: the edit crop and reach
        click, reach = self.clicks[-1], None
        if local_only:
            depth = self.click_depth_mm(click)
            level, crop = self.edit_crop(click, depth)
            reach = self.reach_mm(click, depth)
        else:
            level, crop = self.choose_crop()
            if self._grows_object():
                depth = self.click_depth_mm(click)
                grow = self.grow_level(depth)
                if grow > level:   # a far positive click on an object being grown
                    level, crop = self.choose_crop(grow)
                    reach = self.reach_mm(click, depth)
        tried = []
        while True:
            if cancel is not None and cancel():
                raise Cancelled("prompted segmentation was cancelled")
            if progress is not None:
                progress(len(tried), len(self.levels))
            prob = self._forward(crop)
            tried.append(crop.spacing)
            if local_only or not self._touches_faces(prob) or level >= len(self.levels) - 1:
                break
            # zoom out, re-centred on the object and the clicks
            m = prob > 0.5
            idx = np.argwhere(m)
            obj = np.array([idx.min(0), idx.max(0)], float) @ crop.affine[:3, :3].T + crop.affine[:3, 3]
            level, crop = self.choose_crop(level + 1, around=np.vstack([obj, self._extent_points()]))
        scan_prob = crop_to_scan(prob, crop, self.volume.affine, self.volume.spatial_shape)
        mask = scan_prob > 0.5
        previous = self.current
        if self.local_edits and previous is not None and previous.any():
            mask = self._local_edit(previous, mask, self.clicks[-1], crop, reach_mm=reach)
        else:
            mask = self._keep_clicked(mask)
        if self.box is not None:
            mask &= self._box_mask()
        self.current = mask
        if progress is not None:
            progress(len(self.levels), len(self.levels))
        vol = Volume(data=mask.astype(np.uint8), affine=self.volume.affine.copy(), header=self.volume.header,
                     name=f"{self.volume.name} · prompt", source_path=None,
                     metadata=self._metadata(crop, tried))
        self.last = PromptResult(vol, crop, prob, input=self._last_input, levels_tried=list(tried))
        return self.last

    def _click_voxel(self, world) -> np.ndarray:
        inv = np.linalg.inv(self.volume.affine)
        return np.floor(inv[:3, :3] @ np.asarray(world, float) + inv[:3, 3] + 0.5).astype(int)

    def click_depth_mm(self, click: Click, cap_mm: float = 40.0) -> float:
        """The click's depth in the current mask's error: mm from ``click`` to the nearest voxel of the mask
        for a positive click, of the background for a negative one (at most ``cap_mm``)."""
        sp = voxel_spacing(self.volume.affine)
        ijk = self._click_voxel(click.world)
        half = np.ceil(cap_mm / sp).astype(int)
        shape = np.asarray(self.current.shape)
        lo, hi = np.maximum(ijk - half, 0), np.minimum(ijk + half + 1, shape)
        if np.any(hi <= lo) or not np.all((ijk >= 0) & (ijk < shape)):
            return float(cap_mm)
        sub = self.current[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        other = sub if click.positive else ~sub
        if not other.any():
            return float(cap_mm)
        d = ndimage.distance_transform_edt(~other, sampling=sp)
        return min(float(d[tuple(ijk - lo)]), float(cap_mm))

    def reach_mm(self, click: Click, depth: float | None = None) -> float:
        """How far (mm) from ``click`` a correction of a large given mask may change it: twice the click's
        depth (``depth``, or :meth:`click_depth_mm`) plus two voxels (module docstring, 5)."""
        depth = self.click_depth_mm(click) if depth is None else float(depth)
        return 2 * depth + 2 * float(voxel_spacing(self.volume.affine).max())

    def _coarsest_level_within(self, mm: float) -> int:
        """The index of the coarsest zoom level whose voxels are at most ``mm`` (the finest level at least)."""
        return max(i for i, v in enumerate(self.levels) if v <= max(mm, self.levels[0]))

    #: a positive corrective click ``d`` mm from an object being grown asks for a crop whose voxels are at
    #: most ``grow_depth_factor`` × ``d`` (module docstring, 6)
    grow_depth_factor = 0.25

    def _grows_object(self) -> bool:
        """True if the last click is a positive corrective click on an object being grown by clicks."""
        return not self._given and bool(self.clicks) and self.clicks[-1].positive \
            and self.current is not None and bool(self.current.any())

    def grow_level(self, depth: float | None = None) -> int | None:
        """The coarsest level whose voxels are at most :attr:`grow_depth_factor` × the depth of the last
        click (``depth``, or :meth:`click_depth_mm`), when it is a positive corrective click on an object
        being grown by clicks (else ``None``)."""
        if not self._grows_object():
            return None
        depth = self.click_depth_mm(self.clicks[-1]) if depth is None else float(depth)
        return self._coarsest_level_within(self.grow_depth_factor * depth)

    def edit_crop(self, click: Click, depth: float | None = None) -> tuple[int, Crop]:
        """(level index, crop) for correcting a large given mask at ``click``: centred on the click, at the
        coarsest level whose voxels are no larger than the click's depth (``depth``, or
        :meth:`click_depth_mm`; the finest level at least)."""
        level = self._coarsest_level_within(self.click_depth_mm(click) if depth is None else float(depth))
        return level, make_crop(self.volume.affine, self.volume.spatial_shape, np.asarray(click.world, float),
                                self.levels[level], self.size)

    def _within_mm(self, box, centre_world, radius_mm: float) -> np.ndarray:
        """Bool mask on the scan box ``box``: voxels whose centres lie within ``radius_mm`` of ``centre_world``
        (evaluated only on the part of the box the ball can reach)."""
        out = np.zeros(tuple(b.stop - b.start for b in box), bool)
        sp = voxel_spacing(self.volume.affine)
        ijk = self._click_voxel(centre_world)
        half = np.ceil(radius_mm / sp.min()).astype(int) + 1
        lo = np.maximum(ijk - half, [b.start for b in box])
        hi = np.minimum(ijk + half + 1, [b.stop for b in box])
        if np.any(hi <= lo):
            return out
        grids = np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)], indexing="ij")
        a = self.volume.affine.astype(np.float32)
        c = np.asarray(centre_world, np.float32)
        d2 = sum((a[r, 0] * grids[0] + a[r, 1] * grids[1] + a[r, 2] * grids[2] + a[r, 3] - c[r]) ** 2
                 for r in range(3))
        start = np.array([b.start for b in box])
        out[tuple(slice(int(x), int(y)) for x, y in zip(lo - start, hi - start))] = d2 <= np.float32(radius_mm) ** 2
        return out

    def _local_edit(self, previous: np.ndarray, new: np.ndarray, click: Click, crop: Crop,
                    reach_mm: float | None = None) -> np.ndarray:
        """``previous`` changed only in the connected region of (new − previous) or (previous − new),
        inside the crop's footprint, that holds (or touches within 2 voxels) ``click``; with ``reach_mm``,
        only the part of that region within ``reach_mm`` of the click."""
        box = scan_box(crop, self.volume.affine, self.volume.spatial_shape)
        out = previous.copy()
        if box is None:
            return out
        prev_b, new_b = previous[box], new[box]
        diff = (new_b & ~prev_b) if click.positive else (prev_b & ~new_b)
        if not diff.any():
            return out
        lab, _ = ndimage.label(diff)
        ijk = self._click_voxel(click.world) - np.array([s.start for s in box])
        lo, hi = np.maximum(ijk - 2, 0), np.minimum(ijk + 3, np.asarray(diff.shape))
        if np.any(hi <= lo):
            return out
        near = lab[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        ids = sorted(int(v) for v in np.unique(near) if v)
        if not ids:
            return out
        region = np.isin(lab, ids)
        if reach_mm is not None:
            region &= self._within_mm(box, click.world, reach_mm)
        if click.positive:
            out[box] |= region
        else:
            out[box] &= ~region
        return out

    def _keep_clicked(self, mask: np.ndarray) -> np.ndarray:
        """The connected parts of ``mask`` that hold (or touch within 2 voxels) a positive click."""
        if not mask.any():
            return mask
        lab, n = ndimage.label(mask)
        if n <= 1:
            return mask
        keep = set()
        shape = np.asarray(mask.shape)
        for w in self.positives:
            ijk = self._click_voxel(w)
            lo, hi = np.maximum(ijk - 2, 0), np.minimum(ijk + 3, shape)
            sub = lab[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            keep |= set(int(v) for v in np.unique(sub) if v)
        if not keep:
            return mask
        return np.isin(lab, sorted(keep))

    def _box_mask(self) -> np.ndarray:
        lo, hi = self.box
        shape = self.volume.spatial_shape
        out = np.zeros(shape, bool)
        ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        a = self.volume.affine
        for k in range(shape[2]):
            w = np.stack([ii, jj, np.full_like(ii, k)], -1) @ a[:3, :3].T + a[:3, 3]
            out[:, :, k] = np.all((w >= lo - 1e-6) & (w <= hi + 1e-6), axis=-1)
        return out

    def _metadata(self, crop: Crop, tried) -> dict:
        return {"kind": "labels", "method": "prompt", "model": self.spec.name,
                "weights_sha256": getattr(self.model, "weights_sha256", None),
                "source": self.volume.source_path, "protect_path": self.volume.source_path,
                "prompt": {"positive_world_mm": [np.round(c.world, 3).tolist() for c in self.clicks if c.positive],
                           "negative_world_mm": [np.round(c.world, 3).tolist() for c in self.clicks if not c.positive],
                           "box_world_mm": None if self.box is None else [self.box[0].tolist(), self.box[1].tolist()]},
                "crop": {"spacing_mm": crop.spacing, "size": list(crop.shape),
                         "centre_world_mm": np.round(crop.centre_world, 3).tolist(), "levels_tried_mm": list(tried)}}

    # -- explanations ---------------------------------------------------------------------------
    def explain_session(self):
        """An :class:`~napari_vit3d.explain.session.ExplainSession` on the last prediction's crop and prompts:
        ``explain.point_attention(..., session=s)`` / ``explain.erf_map(..., session=s)`` then explain the
        promptable network exactly as it ran (the four input channels included)."""
        from ..explain.session import ExplainSession
        from ..inference.preprocess import ModelInput

        if self.last is None:
            raise ModelError("segment with a click first: explanations are of the last prediction's crop")
        crop = self.last.crop
        x = self.last.input
        full = tuple(slice(0, s) for s in crop.shape)
        mi = ModelInput(tensor=x, affine=crop.affine.copy(), valid=full, valid_affine=crop.affine.copy(),
                        scan_affine=np.asarray(self.volume.affine, float), scan_shape=self.volume.spatial_shape,
                        ornt=np.array([[0, 1], [1, 1], [2, 1]]), resampled=True,
                        spacing=(crop.spacing,) * 3, normalization=dict(self.spec.normalization), channels=(0, 1, 2, 3))
        return ExplainSession(self.model, self.volume, model_input=mi)


__all__ = ["Click", "DEFAULT_PROMPT_MODEL", "PromptResult", "PromptSession", "check_prompt_spec", "list_prompt_models",
           "load_prompt_model", "prompt_models_dir"]
