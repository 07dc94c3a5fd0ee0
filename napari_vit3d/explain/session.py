"""An explanation session: one scan, one model, the window a query falls in, and cached captures.

The scan is prepared once with :func:`napari_vit3d.inference.preprocess` (the same orientation,
spacing, normalisation and padding as segmentation). A query point (file voxel index or world RAS
mm) is taken into the padded model grid, and the model sees **one ROI-sized window** holding it:

* the window is *centred on the query* where the padded grid allows, otherwise shifted just enough
  to stay inside the grid (so a query near the border is off-centre in its window);
* with ``reuse=True`` (the GUI's clicks) a window already captured that contains the query is used
  again, so a new click costs no forward pass; the window used is always in the map's metadata.

This is a choice, not what sliding-window inference does (it blends overlapping windows with
gaussian weights): attention and gradients are properties of one forward pass of one window, and a
blend of several windows' attention would not be the attention of any pass the model made. See
``docs/explain.md``.

Maps computed on a token grid (attention) or on the window (ERF) are placed into the padded model
grid here (token centres, linear interpolation) and mapped onto the scan with
:func:`napari_vit3d.inference.to_scan_grid`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch

from ..errors import Cancelled, GeometryError, ModelError
from ..io.volume import Volume
from .capture import AttentionCapture, family
from .memory import check_memory
from .tokens import TokenGrid

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


def model_parts(model):
    """(network, spec, name, weights_sha256) from a LoadedModel-like object, a name or a path."""
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from ..models import load_model

        model = load_model(str(model))
    network, spec = getattr(model, "network", None), getattr(model, "spec", None)
    if not isinstance(network, torch.nn.Module) or spec is None:
        raise ModelError(f"cannot explain with {type(model).__name__}: expected a loaded model (network + spec)")
    return network, spec, getattr(spec, "name", type(network).__name__), getattr(model, "weights_sha256", None)


def query_world(volume: Volume, *, voxel=None, world=None) -> np.ndarray:
    """World RAS mm of a query given as a file voxel index (i, j, k) or world mm; checked to be inside."""
    if (voxel is None) == (world is None):
        raise GeometryError("give the query point either as a voxel index or in world mm (exactly one)")
    shape = np.asarray(volume.spatial_shape, float)
    if voxel is not None:
        v = np.asarray(voxel, float).reshape(-1)
        if v.size != 3 or not np.all(np.isfinite(v)):
            raise GeometryError(f"a voxel index needs 3 finite numbers, got {voxel}")
        ijk = v
        w = volume.affine[:3, :3] @ v + volume.affine[:3, 3]
    else:
        w = np.asarray(world, float).reshape(-1)
        if w.size != 3 or not np.all(np.isfinite(w)):
            raise GeometryError(f"a world point needs 3 finite numbers (mm), got {world}")
        ijk = np.linalg.solve(volume.affine[:3, :3], w - volume.affine[:3, 3])
    if np.any(ijk < -0.5) or np.any(ijk > shape - 0.5):
        raise GeometryError(f"the query point (voxel {np.round(ijk, 2).tolist()}) lies outside {volume.name} "
                            f"(shape {volume.spatial_shape})")
    return w


def _linear_index(pos: np.ndarray, n: int):
    """Linear interpolation at token coordinates ``pos`` (clamped to the ends): (i0, i1, weight of i1)."""
    p = np.clip(pos, 0, n - 1)
    i0 = np.minimum(np.floor(p).astype(int), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, (p - i0).astype(np.float32)


class ExplainSession:
    """Explanations of one scan by one model (see module docstring)."""

    def __init__(self, model, volume: Volume, *, roi_size=None, channels=None, max_cached_windows: int = 2,
                 model_input=None):
        """``model_input`` replaces the prepared scan (a :class:`~napari_vit3d.inference.ModelInput`): the
        promptable model's session passes its crop with the prompt channels, so every method explains
        the network exactly as it ran; the window is then the whole crop by default."""
        from ..inference import preprocess

        self.network, self.spec, self.model_name, self.weights_sha256 = model_parts(model)
        self.volume = volume
        try:
            self.device = next(self.network.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")
        if model_input is not None:
            self.model_input = model_input
            self.roi = tuple(int(r) for r in (roi_size if roi_size is not None else model_input.spatial_shape))
        else:
            from ..inference.preflight import check_scan_content, check_segmentation

            # refuse a scan the model cannot say anything about, or a model grid that would not fit, before preparing it
            check_scan_content(volume, self.spec, channels=channels, warn=False)
            check_segmentation(volume, self.spec, network=self.network, roi_size=roi_size, probabilities=False,
                               warn=False)
            self.model_input = preprocess(volume, self.spec, roi_size=roi_size, channels=channels)
            self.roi = tuple(int(r) for r in (roi_size if roi_size is not None else self.spec.roi_size))
        self._captures: OrderedDict = OrderedDict()
        self.max_cached_windows = int(max_cached_windows)

    @property
    def family(self) -> str:
        """'vit', 'swin' or 'segformer' (ModelError for a network without explainable attention)."""
        return family(self.network)

    # -- geometry -------------------------------------------------------------------------------
    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return self.model_input.spatial_shape

    def model_voxel(self, world) -> np.ndarray:
        a = self.model_input.affine
        return np.linalg.solve(a[:3, :3], np.asarray(world, float) - a[:3, 3])

    def window_affine(self, start) -> np.ndarray:
        t = np.eye(4)
        t[:3, 3] = np.asarray(start, float)
        return self.model_input.affine @ t

    def centred_window(self, world) -> tuple[int, int, int]:
        q = self.model_voxel(world)
        roi, shape = np.asarray(self.roi), np.asarray(self.grid_shape)
        start = np.floor(q + 0.5).astype(int) - roi // 2
        start = np.clip(start, 0, np.maximum(shape - roi, 0))
        return tuple(int(s) for s in start)

    def window_for(self, world, reuse: bool = True) -> tuple[int, int, int]:
        if reuse:
            q = np.floor(self.model_voxel(world) + 0.5)
            for start in reversed(self._captures):
                s = np.asarray(start)
                if np.all(q >= s) and np.all(q < s + np.asarray(self.roi)):
                    return start
        return self.centred_window(world)

    def window_tensor(self, start) -> torch.Tensor:
        sl = tuple(slice(s, s + r) for s, r in zip(start, self.roi))
        return self.model_input.tensor[(slice(None), slice(None)) + sl]

    def start_window(self, start, method: str, *, cancel=None, progress=None) -> torch.Tensor:
        """Before one window's forward pass for ``method``: stop if cancelled, check the memory it needs,
        report progress 0/1; returns the window's input on the session's device."""
        if cancel is not None and cancel():
            raise Cancelled("explanation was cancelled")
        check_memory(self.network, self.roi, method, int(self.model_input.tensor.shape[1]))
        if progress is not None:
            progress(0, 1)
        return self.window_tensor(start).to(self.device)

    def window_info(self, start) -> dict:
        a = self.window_affine(start)
        roi = np.asarray(self.roi, float)
        corners = [a[:3, :3] @ (c * (roi - 1)) + a[:3, 3] for c in (np.zeros(3), np.ones(3))]
        return {"start_model_voxel": [int(s) for s in start], "size": list(self.roi),
                "centre_world_mm": (a[:3, :3] @ ((roi - 1) / 2) + a[:3, 3]).round(3).tolist(),
                "first_voxel_world_mm": corners[0].round(3).tolist(),
                "last_voxel_world_mm": corners[1].round(3).tolist()}

    # -- forward passes -------------------------------------------------------------------------
    def capture(self, start, *, layers=None, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None) -> AttentionCapture:
        """The attention capture of the window at ``start`` (one forward pass, cached)."""
        key = tuple(int(s) for s in start)
        hit = self._captures.get(key)
        if hit is not None and (layers is None and hit.wanted == set(range(len(hit.layers)))
                                or layers is not None and {int(i) % len(hit.layers) for i in layers} <= hit.wanted):
            self._captures.move_to_end(key)
            if progress is not None:
                progress(1, 1)
            return hit
        x = self.start_window(key, "attention", cancel=cancel, progress=progress)
        was_training = self.network.training
        self.network.eval()
        # a ViT's attention lives in its encoder: run only that when the network offers it (ViTSeg's decoder
        # would double the cost of a whole-scan pass and adds nothing to the capture)
        encoder = getattr(self.network, "forward_features", None) if self.family == "vit" else None
        try:
            with AttentionCapture(self.network, layers=layers) as cap, torch.no_grad():
                if encoder is not None:
                    cap.input_shape = tuple(int(s) for s in x.shape[2:])
                    encoder(x)
                else:
                    self.network(x)
        finally:
            self.network.train(was_training)
        self._captures[key] = cap
        while len(self._captures) > self.max_cached_windows:
            self._captures.popitem(last=False)
        if progress is not None:
            progress(1, 1)
        return cap

    # -- placement ------------------------------------------------------------------------------
    def place_tokens(self, token_maps: np.ndarray, grid: TokenGrid, start, *, order: int = 1) -> np.ndarray:
        """Token maps (*grid.shape, C) → padded model grid (C, X, Y, Z), zero outside the window.

        Each window voxel is sampled at its position in token units ``(x − origin) / step``: linear
        between token centres (``order=1``; voxels beyond the outer centres take the edge token's
        value) or the nearest token (``order=0``, for masks).
        """
        token_maps = np.asarray(token_maps, dtype=np.float32)
        if token_maps.ndim == 3:
            token_maps = token_maps[..., None]
        out = np.zeros((token_maps.shape[3], *self.grid_shape), dtype=np.float32)
        axes = [(np.arange(r) - o) / s for r, o, s in zip(self.roi, grid.origin, grid.step)]
        if order == 0:
            idx = [np.clip(np.floor(a + 0.5), 0, n - 1).astype(int) for a, n in zip(axes, grid.shape)]
            block = token_maps[np.ix_(*idx)]  # (*roi, C)
        else:
            # trilinear interpolation is separable: interpolate along one axis at a time
            block = token_maps
            for ax, (a, n) in enumerate(zip(axes, grid.shape)):
                i0, i1, f = _linear_index(a, n)
                shape = [1] * block.ndim
                shape[ax] = len(f)
                f = f.reshape(shape)
                lo = np.take(block, i0, axis=ax)
                block = lo + (np.take(block, i1, axis=ax) - lo) * f
        sl = tuple(slice(s, s + r) for s, r in zip(start, self.roi))
        out[(slice(None),) + sl] = np.moveaxis(block, -1, 0)
        return out

    def place_window(self, window_maps: np.ndarray, start) -> np.ndarray:
        """Window-grid maps (C, *roi) → padded model grid (C, X, Y, Z), zero outside the window."""
        window_maps = np.asarray(window_maps, dtype=np.float32)
        out = np.zeros((window_maps.shape[0], *self.grid_shape), dtype=np.float32)
        sl = tuple(slice(s, s + r) for s, r in zip(start, self.roi))
        out[(slice(None),) + sl] = window_maps
        return out

    def to_scan(self, model_maps: np.ndarray, *, order: int = 1) -> np.ndarray:
        """Padded model-grid maps (C, X, Y, Z) → scan grid (x, y, z, C) via inference.to_scan_grid."""
        from ..inference import to_scan_grid

        return to_scan_grid(model_maps, self.model_input, order=order)

    def make_volume(self, scan_maps: np.ndarray, *, name: str, metadata: dict, kind: str = "map") -> Volume:
        data = scan_maps[..., 0] if scan_maps.ndim == 4 and scan_maps.shape[3] == 1 else scan_maps
        meta = {"kind": kind, "model": self.model_name, "weights_sha256": self.weights_sha256,
                "architecture": self.spec.architecture, "source": self.volume.source_path, **metadata}
        return Volume(data=np.ascontiguousarray(data), affine=self.volume.affine.copy(), header=self.volume.header,
                      name=f"{self.volume.name} · {name}", source_path=None,
                      metadata={**meta, "protect_path": self.volume.source_path})
