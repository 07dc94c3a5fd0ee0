"""Scan → model space, and model-space maps → the scan's own voxels.

Model space follows MONAI's ``Orientation`` + ``Spacing`` convention (what published models and
bundles are trained with):

1. **Orientation**: the scan's array is permuted and flipped *exactly* (``nibabel`` orientation
   transforms, no interpolation) so that its axes run along the spec's orientation (``"RAS"``:
   axis 0 → R, 1 → A, 2 → S) as closely as the affine allows. An oblique scan's residual rotation
   stays in the model-space affine (the model sees the scan as acquired, like MONAI's
   ``Spacingd``); it is never silently dropped, and the mapping back goes through the full affines.
2. **Spacing**: when the scan's spacing differs from ``spec.spacing`` the re-oriented array is
   resampled (trilinear) on a grid with the spec's spacing along the same axes, centred on the scan's
   field of view and just large enough that it covers the field of view *and* every scan voxel
   centre (so mapping back never extrapolates). Sampling is done in world space through the two
   affines (:func:`napari_vit3d.io.resample.resample_array`). When the spacing already matches, no
   interpolation happens at all, so a pass-through model gives back the scan's exact labels.
3. **Normalisation** per ``spec.normalization`` (on the model grid, before padding):
   ``zscore_nonzero`` (MONAI ``NormalizeIntensity(nonzero=True, channel_wise=True)``), ``zscore``,
   ``percentile`` (``lower``/``upper`` percentiles → ``b_min``/``b_max``, clipped unless
   ``clip=False``) or ``none``.
4. **Padding** with zeros (after normalisation), symmetric, to at least the ROI on every axis.

:func:`to_scan_grid` maps model-space maps back: each scan voxel centre is taken to world mm by the
scan affine and into the model grid by the inverse model affine, and sampled there (linear for
logits/probabilities). Labels are the argmax of the resampled logits (see ``inference.engine``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from ..errors import GeometryError, ModelError, VolumeError, VolumeWarning
from ..io.geometry import voxel_spacing
from ..io.resample import resample_edge
from ..io.volume import Volume
from ..models.architectures import check_window

NORMALIZATIONS = ("zscore_nonzero", "zscore", "percentile", "none")

#: relative spacing difference under which two spacings count as equal (no resampling)
SPACING_RTOL = 1e-4


@dataclass
class ModelInput:
    """A scan prepared for a model, with everything needed to map outputs back onto the scan.

    ``tensor`` is ``(1, C, X, Y, Z)`` float32 on the padded model grid; ``affine`` maps a padded
    model-grid voxel to RAS mm. ``valid`` are the slices of the padded grid holding the (resampled)
    scan; ``valid_affine`` is the affine of that unpadded grid. ``ornt`` is the nibabel orientation
    transform from the scan's file axes to model axes; ``resampled`` is False when the model grid is
    an exact permutation/flip of the scan grid.
    """

    tensor: torch.Tensor
    affine: np.ndarray
    valid: tuple[slice, slice, slice]
    valid_affine: np.ndarray
    scan_affine: np.ndarray
    scan_shape: tuple[int, int, int]
    ornt: np.ndarray
    resampled: bool
    spacing: tuple[float, float, float]
    normalization: dict = field(default_factory=dict)
    channels: tuple[int, ...] = (0,)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.tensor.shape[2:])

    @property
    def valid_shape(self) -> tuple[int, int, int]:
        return tuple(int(s.stop - s.start) for s in self.valid)

    def scan_to_model_voxel(self) -> np.ndarray:
        """4×4 map from scan voxel indices (file order) to padded model-grid voxel indices."""
        return np.linalg.inv(self.affine) @ self.scan_affine

    def model_to_world(self, ijk) -> np.ndarray:
        """Padded model-grid voxel coordinates (…, 3) → RAS mm (…, 3)."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


# --------------------------------------------------------------------------------------------
# helpers

def select_channels(volume: Volume, spec, channels=None) -> tuple[np.ndarray, tuple[int, ...]]:
    """(X, Y, Z, C_model) float32 array of the channels the model reads."""
    n = volume.n_channels
    want = int(spec.in_channels)
    if channels is None:
        if n == want:
            channels = tuple(range(n))
        elif n > want:
            raise VolumeError(f"{volume.name} has {n} channels but model {spec.name!r} reads {want} "
                              f"({', '.join(spec.channel_names)}); choose which channel(s) to use")
        else:
            raise VolumeError(f"{volume.name} has {n} channel(s) but model {spec.name!r} needs {want} "
                              f"({', '.join(spec.channel_names)})")
    channels = tuple(int(c) for c in channels)
    if len(channels) != want:
        raise VolumeError(f"model {spec.name!r} reads {want} channel(s), {len(channels)} were chosen")
    if any(c < 0 or c >= n for c in channels):
        raise VolumeError(f"{volume.name} has channels 0..{n - 1}; asked for {list(channels)}")
    data = volume.data if volume.data.ndim == 4 else volume.data[..., None]
    out = np.stack([np.asarray(data[..., c], dtype=np.float32) for c in channels], axis=-1)
    return out, channels


def model_orientation(volume_affine: np.ndarray, shape, orientation: str = "RAS"):
    """(ornt, reoriented_affine): the exact file→model axis transform and the re-oriented affine."""
    try:
        target = axcodes2ornt(tuple(orientation))
    except (ValueError, TypeError, KeyError):
        raise ModelError(f"unknown model orientation {orientation!r} (expected axis codes like 'RAS')") from None
    if np.isnan(target).any():
        raise ModelError(f"unknown model orientation {orientation!r} (expected axis codes like 'RAS')")
    ornt = ornt_transform(io_orientation(volume_affine), target)
    return ornt, np.asarray(volume_affine, float) @ inv_ornt_aff(ornt, tuple(shape[:3]))


def _target_grid(affine: np.ndarray, shape, spacing) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A grid along ``affine``'s axes with ``spacing``: covers the field of view and every voxel centre."""
    sp = voxel_spacing(affine)
    new = np.asarray(spacing, float)
    n = np.asarray(shape[:3], float)
    fov = n * sp / new
    centres = (n - 1) * sp / new + 1
    n_new = np.maximum(np.ceil(np.maximum(fov, centres) - 1e-6), 1).astype(int)
    scale = new / sp  # model voxel step in scan voxels
    # model index t ↦ scan voxel (n-1)/2 + (t - (n_new-1)/2) * scale  (centred)
    m = np.eye(4)
    m[:3, :3] = np.diag(scale)
    m[:3, 3] = (n - 1) / 2 - (n_new - 1) / 2 * scale
    return affine @ m, tuple(int(v) for v in n_new)


def normalize(x: np.ndarray, norm: dict) -> np.ndarray:
    """Normalise (X, Y, Z, C) float32 channel-wise per a spec's ``normalization`` dict (in place allowed)."""
    norm = dict(norm or {"kind": "none"})
    kind = norm.get("kind", "none")
    if kind not in NORMALIZATIONS:
        raise ModelError(f"unknown normalisation {kind!r}; known: {', '.join(NORMALIZATIONS)}")
    out = np.empty_like(x, dtype=np.float32)
    for c in range(x.shape[-1]):
        v = x[..., c].astype(np.float32, copy=False)
        if kind == "none":
            out[..., c] = v
        elif kind in ("zscore", "zscore_nonzero"):
            mask = v != 0 if kind == "zscore_nonzero" else np.ones(v.shape, bool)
            if not mask.any():
                out[..., c] = v
                continue
            vals = v[mask].astype(np.float64)
            mean, std = vals.mean(), vals.std()
            std = std if std > 0 else 1.0
            res = v.copy() if kind == "zscore_nonzero" else np.empty_like(v)
            res[mask] = ((vals - mean) / std).astype(np.float32)
            out[..., c] = res
        else:  # percentile
            lo_p, hi_p = float(norm.get("lower", 0.5)), float(norm.get("upper", 99.5))
            b_min, b_max = float(norm.get("b_min", 0.0)), float(norm.get("b_max", 1.0))
            if not 0 <= lo_p < hi_p <= 100:
                raise ModelError(f"percentile normalisation needs 0 ≤ lower < upper ≤ 100, got {lo_p}, {hi_p}")
            lo, hi = np.percentile(v, [lo_p, hi_p])
            scale = (b_max - b_min) / (hi - lo) if hi > lo else 0.0
            res = (v - lo) * scale + b_min
            if norm.get("clip", True):
                res = np.clip(res, min(b_min, b_max), max(b_min, b_max))
            out[..., c] = res.astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------
# public API

def model_grid(volume: Volume, spec) -> tuple[np.ndarray, tuple[int, int, int], bool]:
    """(affine, shape, resampled) of the model-space grid for ``volume`` (before padding), no data touched."""
    ornt, affine_o = model_orientation(volume.affine, volume.spatial_shape, spec.orientation)
    shape_o = [0, 0, 0]
    for file_ax, (model_ax, _) in enumerate(ornt):
        shape_o[int(model_ax)] = volume.spatial_shape[file_ax]
    target = np.asarray(spec.spacing, float)
    if target.shape != (3,) or np.any(target <= 0):
        raise ModelError(f"model {spec.name!r}: spacing must be three positive numbers, got {spec.spacing}")
    if np.allclose(voxel_spacing(affine_o), target, rtol=SPACING_RTOL, atol=0):
        return affine_o, tuple(shape_o), False
    affine_m, shape_m = _target_grid(affine_o, shape_o, target)
    return affine_m, shape_m, True


def preprocess(volume: Volume, spec, *, roi_size=None, channels=None) -> ModelInput:
    """Prepare ``volume`` for the model described by ``spec`` (see the module docstring)."""
    roi = check_window(spec, roi_size if roi_size is not None else spec.roi_size)
    data, channels = select_channels(volume, spec, channels)
    finite = np.isfinite(data)
    if not finite.all():
        if not finite.any():
            raise VolumeError(f"{volume.name} has no finite voxel values (all NaN/Inf)")
        warnings.warn(f"{volume.name}: {int(data.size - finite.sum())} NaN/Inf voxels were set to 0 for the model",
                      VolumeWarning, stacklevel=2)
        data = np.where(finite, data, np.float32(0))
    shape = volume.spatial_shape
    ornt, affine_o = model_orientation(volume.affine, shape, spec.orientation)
    data = apply_orientation(data, ornt)  # exact permutation / flips; channel axis kept last
    affine_m, shape_m, resampled = model_grid(volume, spec)
    if resampled:
        cval = float(data.min()) if data.size else 0.0
        data = resample_edge(data, affine_o, affine_m, shape_m, order=1, cval=cval)
    data = normalize(np.ascontiguousarray(data), spec.normalization)
    valid_shape = data.shape[:3]
    pad_before = [max(0, (r - s)) // 2 for r, s in zip(roi, valid_shape)]
    full = [max(r, s) for r, s in zip(roi, valid_shape)]
    arr = np.zeros((data.shape[3], *full), dtype=np.float32)
    valid = tuple(slice(b, b + s) for b, s in zip(pad_before, valid_shape))
    arr[(slice(None),) + valid] = np.moveaxis(data, -1, 0)
    shift = np.eye(4)
    shift[:3, 3] = -np.asarray(pad_before, float)
    padded_affine = affine_m @ shift
    return ModelInput(
        tensor=torch.from_numpy(arr)[None], affine=padded_affine, valid=valid, valid_affine=affine_m,
        scan_affine=np.asarray(volume.affine, float), scan_shape=shape, ornt=ornt, resampled=bool(resampled),
        spacing=tuple(float(v) for v in voxel_spacing(affine_m)), normalization=dict(spec.normalization),
        channels=channels)


def to_scan_grid(maps, model_input: ModelInput, order: int = 1) -> np.ndarray:
    """Map model-space maps ``(C, X, Y, Z)`` (padded model grid) onto the scan: ``(x, y, z, C)`` float32.

    Exact (a crop and the inverse permutation/flip) when no resampling was done; otherwise each scan
    voxel centre is sampled in the model grid through the two affines (``order=1`` linear,
    ``order=0`` nearest).
    """
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().to("cpu", torch.float32).numpy()
    maps = np.asarray(maps)
    if maps.ndim != 4:
        raise GeometryError(f"model-space maps must be (C, X, Y, Z), got shape {maps.shape}")
    if tuple(maps.shape[1:]) != model_input.spatial_shape:
        raise GeometryError(f"maps of spatial shape {maps.shape[1:]} are not on the model grid "
                            f"{model_input.spatial_shape}")
    valid = np.moveaxis(maps[(slice(None),) + model_input.valid], 0, -1)  # (X, Y, Z, C) model axes
    if not model_input.resampled:
        # applying the inverse transform undoes the permutation/flips exactly
        back = apply_orientation(valid, _inverse_ornt(model_input.ornt))
        out = np.ascontiguousarray(back, dtype=np.float32)
        if out.shape[:3] != model_input.scan_shape:  # pragma: no cover - defensive
            raise GeometryError("internal error: mapped maps are not on the scan grid")
        return out
    return resample_edge(valid.astype(np.float32, copy=False), model_input.valid_affine, model_input.scan_affine,
                         model_input.scan_shape, order=order, cval=0.0)


def _inverse_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``ornt`` (file axes → model axes)."""
    ornt = np.asarray(ornt)
    inv = np.zeros_like(ornt)
    for file_ax, (model_ax, flip) in enumerate(ornt):
        inv[int(model_ax)] = [file_ax, flip]
    return inv


__all__ = ["ModelInput", "NORMALIZATIONS", "model_grid", "model_orientation", "normalize", "preprocess",
           "select_channels", "to_scan_grid"]
