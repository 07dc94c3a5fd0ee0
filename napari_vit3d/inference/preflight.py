"""Pre-flight checks: is a segmentation sensible and will it fit, decided *before* anything large is allocated.

From the scan's geometry (shape, spacing: no voxel is read), the model's spec (ROI, spacing, channels,
classes, parameters) and the options (overlap, window batch, probabilities, uncertainty),
:func:`estimate_segmentation` works out the model grid, the padded grid, the number of windows and the
peak memory of the run, phase by phase (preparing the model grid, the sliding window, the way back onto
the scan). :func:`check_segmentation` then refuses, with one :class:`~napari_vit3d.errors.ResourceLimitError`
line that names what to change, a model grid over :data:`MAX_GRID_VOXELS`, a window over
:data:`MAX_WINDOW_VOXELS`, more than :data:`MAX_WINDOWS` windows, or a peak over 80 % of the memory
available (:func:`napari_vit3d.io.memory.available_memory`: free memory, the address-space limit, the
cgroup limit), and warns (:class:`~napari_vit3d.errors.ResourceLimitWarning`) above 50 %.

:func:`check_scan_content` refuses scans a model cannot say anything about (blank, constant, a single
slice, a grid too small for the network) with a :class:`~napari_vit3d.errors.VolumeError`, and warns
(:class:`~napari_vit3d.errors.VolumeWarning`) when the model would see mostly padding.

``inference.segment``/``forward``/``predict_tta`` and the explanation session call these with
``warn=False`` (they refuse, the front end warns); the CLI commands and the GUI call
:func:`check_segmentation` themselves first, with every option the user chose, so the warning names it.

The memory model counts float32 arrays (4 bytes a value): S scan voxels, G model-grid voxels, P padded
voxels, C input channels, K classes, R window voxels, B windows per batch. Per-voxel activation memory
of a window is the architecture's measured ``bytes_per_voxel`` (``models.architectures``), scaled with the
network's width relative to the default-size models those were measured on. It was checked against the
peak resident memory of real runs (``docs/security.md``, "Pre-flight"); it errs on the high side.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import ResourceLimitError, VolumeError, VolumeWarning
from ..io.memory import USABLE_FRACTION, available_memory, check_memory_request, format_bytes
from ..io.volume import Volume
from ..models.architectures import UNKNOWN_BYTES_PER_VOXEL, get_architecture
from .predictor import count_windows

__all__ = ["MAX_GRID_VOXELS", "MAX_WINDOWS", "MAX_WINDOW_VOXELS", "ScanGeometry", "SegmentationPlan",
           "check_scan_content", "check_segmentation", "estimate_segmentation"]

#: the largest model grid (voxels, before padding) a run may ask for: 2**30 = 1024³ (4 GiB per float32 channel)
MAX_GRID_VOXELS = 2**30
#: the largest sliding window (voxels): 512³
MAX_WINDOW_VOXELS = 512**3
#: the most windows one pass may take (an overlap near 1 makes a window per voxel)
MAX_WINDOWS = 200_000
#: the smallest model grid along an axis (voxels): below it the network sees less than one first-stage token
MIN_GRID_AXIS = 4
#: parameters of the default-size models the per-voxel activation memory was measured on
_REFERENCE_PARAMS = 5_000_000
#: what a first run adds whatever the sizes (code pages of lazily imported modules, torch's allocator and threads)
RUNTIME_BYTES = 192 * 1024**2


@dataclass
class ScanGeometry:
    """What the estimates need of a scan, without its voxels: for a check made from a file's header before
    reading it (``nibabel.load(path).header`` gives shape and affine). A :class:`Volume` works the same."""

    spatial_shape: tuple[int, int, int]
    affine: np.ndarray
    name: str = "the scan"
    n_channels: int = 1

    def __post_init__(self):
        self.spatial_shape = tuple(int(s) for s in self.spatial_shape[:3])
        self.affine = np.asarray(self.affine, dtype=float)

    @property
    def spacing(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(0))


def _x(shape) -> str:
    return "×".join(str(int(s)) for s in shape)


@dataclass
class SegmentationPlan:
    """What a segmentation run will do and need, worked out from geometry alone (see the module docstring)."""

    scan_shape: tuple[int, int, int]
    scan_spacing: tuple[float, float, float]
    model_grid: tuple[int, int, int]
    padded_grid: tuple[int, int, int]
    model_spacing: tuple[float, float, float]
    roi: tuple[int, int, int]
    overlap: float
    n_windows: int
    n_classes: int
    in_channels: int
    parameters: int | None
    resampled: bool
    #: peak bytes of each phase ("model grid", "sliding window", "scan grid")
    phases: dict = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        return int(max(self.phases.values())) if self.phases else 0

    def summary(self) -> str:
        """One line for a log or a status bar."""
        return (f"model grid {_x(self.model_grid)} at {'×'.join(f'{s:g}' for s in self.model_spacing)} mm, "
                f"{self.n_windows} window(s) of {_x(self.roi)}, peak memory about {format_bytes(self.peak_bytes)}")


def _n_classes(spec) -> int:
    out = spec.arch_kwargs.get("out_channels") if isinstance(spec.arch_kwargs, dict) else None
    n = int(out) if out is not None else len(spec.labels)
    return max(2, n)


def _param_count(spec, network) -> int | None:
    if network is not None:
        return int(sum(p.numel() for p in network.parameters()))
    from ..models.registry import parameter_count

    return parameter_count(spec)


def estimate_segmentation(volume: Volume, spec, *, network=None, roi_size=None, overlap: float = 0.25,
                          sw_batch_size: int | None = None, probabilities: bool = True,
                          uncertainty: bool = False, flips: int = 1) -> SegmentationPlan:
    """The :class:`SegmentationPlan` of segmenting ``volume`` with ``spec`` (``network`` when it is loaded,
    else its parameters are counted on the ``meta`` device). Only the geometry of ``volume`` is used."""
    from .preprocess import model_grid

    roi = tuple(int(r) for r in (roi_size if roi_size is not None else spec.roi_size))
    shape = tuple(int(s) for s in volume.spatial_shape)
    spacing = tuple(float(s) for s in volume.spacing)
    arch = get_architecture(spec.architecture)
    if arch.external:  # a bundle resamples with its own transforms: the scan grid is the best guess
        grid, model_spacing, resampled = shape, spacing, True
    else:
        affine_m, grid, resampled = model_grid(volume, spec)
        grid = tuple(int(g) for g in grid)
        model_spacing = tuple(float(v) for v in np.sqrt((np.asarray(affine_m)[:3, :3] ** 2).sum(0)))
    padded = tuple(max(int(r), int(g)) for r, g in zip(roi, grid))
    # float products: a grid from absurd spacing overflows int64
    S, G, P, R = (float(np.prod(np.asarray(v, dtype=np.float64))) for v in (shape, grid, padded, roi))
    C = max(1, int(spec.in_channels))
    K = _n_classes(spec)
    B = max(1, int(sw_batch_size or 1))
    n_windows = count_windows(padded, roi, overlap) if P < 1e15 else int(1e15)
    params = None if arch.external else _param_count(spec, network)
    per_voxel = arch.bytes_per_voxel[0] if arch.bytes_per_voxel else UNKNOWN_BYTES_PER_VOXEL[0]
    width = math.sqrt(max(1.0, (params or 0) / _REFERENCE_PARAMS))  # wider networks hold wider activations
    f = 4.0
    phases = {
        # channels copied out of the scan, the finiteness mask, resampling (axis by axis), normalising, padding
        "model grid": S * C * (2 * f + 1) + G * C * f * (3 if resampled else 1) + G * C * f * 2 + P * C * f,
        # the padded input, MONAI's blended output and weight map, the importance map, one batch of windows
        "sliding window": P * C * f + P * (K + 1) * f + R * f + per_voxel * width * R * B * math.sqrt(C)
        + 4.0 * (params or 0),
        # logits kept + scan-grid logits (and the axis-by-axis resampling's temporaries), argmax labels,
        # softmax probabilities, entropy (with its temporaries)
        "scan grid": P * K * f + (5 if resampled else 3) * S * K * f + 17 * S
        + (2 * S * K * f if probabilities or uncertainty else 0)
        + (S * f + 2 * S * K * f if uncertainty else 0),
    }
    if flips > 1:  # test-time augmentation keeps one probability map per flip
        phases["scan grid"] += (flips - 1) * S * K * f
    return SegmentationPlan(scan_shape=shape, scan_spacing=spacing, model_grid=grid, padded_grid=padded,
                            model_spacing=model_spacing, roi=roi, overlap=float(overlap), n_windows=int(n_windows),
                            n_classes=K, in_channels=C, parameters=params, resampled=bool(resampled),
                            phases={k: int(min(v + RUNTIME_BYTES, 2**62)) for k, v in phases.items()})


def check_segmentation(volume: Volume, spec, *, network=None, roi_size=None, overlap: float = 0.25,
                       sw_batch_size: int | None = None, probabilities: bool = True, uncertainty: bool = False,
                       flips: int = 1, warn: bool = True, available: int | None = None,
                       options: dict | None = None) -> SegmentationPlan:
    """:func:`estimate_segmentation`, then refuse what cannot work and (``warn``) warn about what only just fits.

    ``options`` names the front end's options in messages: keys ``"probabilities"``, ``"uncertainty"``,
    ``"overlap"``, ``"batch"``, ``"roi"`` → the option text (defaults: the CLI's ``--save-probabilities``, …).
    """
    names = {"probabilities": "--save-probabilities", "uncertainty": "--save-uncertainty", "overlap": "--overlap",
             "batch": "--sw-batch-size", "roi": "the model spec's roi_size", **(options or {})}
    plan = estimate_segmentation(volume, spec, network=network, roi_size=roi_size, overlap=overlap,
                                 sw_batch_size=sw_batch_size, probabilities=probabilities, uncertainty=uncertainty,
                                 flips=flips)
    name = getattr(volume, "name", "the scan")
    grid_voxels = float(np.prod(np.asarray(plan.model_grid, dtype=np.float64)))
    if grid_voxels > MAX_GRID_VOXELS:
        sp = "×".join(f"{s:g}" for s in plan.scan_spacing)
        msp = "×".join(f"{s:g}" for s in spec.spacing)
        raise ResourceLimitError(
            f"{name}: its {_x(plan.scan_shape)} voxels of {sp} mm resampled to model {spec.name!r}'s {msp} mm spacing "
            f"make a {_x(plan.model_grid)} model grid ({grid_voxels:.3g} voxels, the limit is {MAX_GRID_VOXELS:.3g}); "
            "refused before allocating: check the scan's voxel size in its header, crop or resample the scan, or use "
            "a model with a coarser spacing (the spec's spacing)")
    window_voxels = float(np.prod(np.asarray(plan.roi, dtype=np.float64)))
    if window_voxels > MAX_WINDOW_VOXELS:
        raise ResourceLimitError(
            f"model {spec.name!r}: a {_x(plan.roi)} window is {window_voxels:.3g} voxels (the limit is "
            f"{MAX_WINDOW_VOXELS:.3g}); refused before allocating: use a smaller {names['roi']}")
    if plan.n_windows > MAX_WINDOWS:
        raise ResourceLimitError(
            f"{name}: {plan.n_windows:,} windows of {_x(plan.roi)} at overlap {plan.overlap:g} (the limit is "
            f"{MAX_WINDOWS:,}); refused: use a smaller {names['overlap']}")
    extra = [names[k] for k, on in (("probabilities", probabilities), ("uncertainty", uncertainty)) if on]
    peak_phase = max(plan.phases, key=plan.phases.get)
    if peak_phase == "scan grid" and extra:
        change = f"leave out {' / '.join(extra)}, or crop the scan"
    elif peak_phase == "sliding window" and (sw_batch_size or 1) > 1:
        change = f"use {names['batch']} 1, or a smaller model or {names['roi']}"
    elif peak_phase == "sliding window":
        change = f"use a smaller model or a smaller {names['roi']}"
    else:
        change = "crop or downsample the scan, or use a model with a coarser spacing"
    what = (f"segmenting {name} (model grid {_x(plan.model_grid)}, {plan.n_windows} window(s) of {_x(plan.roi)}"
            f"{', with ' + ' and '.join(extra) if extra else ''})")
    avail = available_memory() if available is None else int(available)
    if warn or plan.peak_bytes > USABLE_FRACTION * avail:
        check_memory_request(plan.peak_bytes, what=what, change=change, available=avail)
    return plan


def check_scan_content(volume: Volume, spec=None, *, channels=None, warn: bool = True) -> None:
    """Refuse a scan a model cannot say anything about; warn when it is doubtful (module docstring).

    * a spatial axis of one voxel (a single slice, a single voxel): refused;
    * blank or constant (every voxel of every channel the model reads has one value): refused;
    * ``spec`` given: a model grid under :data:`MIN_GRID_AXIS` voxels along an axis is refused, one smaller than
      half the architecture's ROI multiple (the network's coarsest stride) is warned about.
    """
    name = getattr(volume, "name", "the scan")
    shape = tuple(int(s) for s in volume.spatial_shape)
    if min(shape) < 2:
        what = "a single voxel" if max(shape) < 2 else f"one voxel thick along axis {shape.index(min(shape))}"
        raise VolumeError(f"{name}: is {_x(shape)} voxels, {what}; a 3D model needs a volume (refusing to segment)")
    data = volume.data
    chans = range(volume.n_channels) if channels is None else [int(c) for c in channels]
    values = []
    for c in chans:
        if not 0 <= c < volume.n_channels:
            continue  # select_channels says what is wrong
        ch = data if data.ndim == 3 else data[..., c]
        lo, hi = np.nanmin(ch), np.nanmax(ch)
        values.append((float(lo), float(hi)))
    if values and all(lo == hi for lo, hi in values):
        v = values[0][0]
        kind = "blank (every voxel is 0)" if all(lo == 0 for lo, _ in values) else f"constant (every voxel is {v:g})"
        raise VolumeError(f"{name}: is {kind}; there is nothing to segment, and a model would label it anyway, so "
                          "it is refused (is it the right file or channel?)")
    if spec is None:
        return
    arch = get_architecture(spec.architecture)
    if arch.external:
        return
    from .preprocess import model_grid

    _, grid, _ = model_grid(volume, spec)
    sp = "×".join(f"{s:g}" for s in spec.spacing)
    if min(grid) < MIN_GRID_AXIS:
        raise VolumeError(f"{name}: is too small for model {spec.name!r}: at its {sp} mm spacing it is {_x(grid)} "
                          f"voxels, under {MIN_GRID_AXIS} along an axis (less than one token of the network)")
    m = int(arch.roi_multiple(spec.arch_kwargs))
    if warn and m > 1 and min(grid) < m / 2:
        warnings.warn(f"{name}: at model {spec.name!r}'s {sp} mm spacing it is {_x(grid)} voxels, under half the "
                      f"network's {m}-voxel stride along an axis; the model sees mostly padding there, so the labels "
                      "are unreliable", VolumeWarning, stacklevel=2)
