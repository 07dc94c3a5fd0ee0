"""Resample a :class:`Volume` onto another grid through the two voxel→world affines.

Used by ``review.metrics`` (``--resample``: a reference on another grid is brought onto the
prediction's grid with nearest neighbour so labels stay labels) and available to ``inference`` for
mapping maps back to a scan grid. The work is done slab by slab so a 256³ grid never needs its full
coordinate array (3 × 8 bytes per voxel) in memory at once.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import GeometryError
from .geometry import check_affine
from .volume import Volume

#: voxels per slab of target coordinates (bounds temporary memory to ~100 MB)
_SLAB_VOXELS = 4_000_000


def resample_array(data: np.ndarray, source_affine, target_affine, target_shape, *, order: int = 0,
                   cval: float = 0.0) -> np.ndarray:
    """Sample ``data`` (source grid, spatial axes first, optional trailing channel axis) on a target grid.

    Each target voxel centre is mapped to world mm by ``target_affine`` and back into source voxel
    coordinates by ``inv(source_affine)``; ``order=0`` is nearest neighbour (labels), ``order=1``
    trilinear (maps). Target voxels outside the source get ``cval``. The dtype of ``data`` is kept
    for ``order=0``; other orders return float32.
    """
    src = check_affine(source_affine)
    tgt = check_affine(target_affine)
    target_shape = tuple(int(s) for s in target_shape[:3])
    if len(target_shape) != 3 or min(target_shape) <= 0:
        raise GeometryError(f"target shape must be 3 positive sizes, got {target_shape}")
    data = np.asarray(data)
    if data.ndim not in (3, 4):
        raise GeometryError(f"can only resample 3D or 4D arrays, got shape {data.shape}")
    if order not in (0, 1, 3):
        raise GeometryError(f"interpolation order must be 0 (nearest), 1 (linear) or 3 (cubic), got {order}")
    vox = np.linalg.inv(src) @ tgt  # target voxel -> source voxel
    lin, off = vox[:3, :3], vox[:3, 3]
    out_dtype = data.dtype if order == 0 else np.float32
    channels = 1 if data.ndim == 3 else data.shape[3]
    out = np.empty(target_shape + ((channels,) if data.ndim == 4 else ()), dtype=out_dtype)
    plane = target_shape[1] * target_shape[2]
    step = max(1, _SLAB_VOXELS // max(plane, 1))
    jj, kk = np.meshgrid(np.arange(target_shape[1]), np.arange(target_shape[2]), indexing="ij")
    jj, kk = jj.ravel().astype(np.float64), kk.ravel().astype(np.float64)
    for i0 in range(0, target_shape[0], step):
        i1 = min(target_shape[0], i0 + step)
        ii = np.repeat(np.arange(i0, i1, dtype=np.float64), plane)
        idx = np.stack([ii, np.tile(jj, i1 - i0), np.tile(kk, i1 - i0)])
        coords = lin @ idx + off[:, None]
        if order == 0:
            # round half away from zero would be asymmetric; use floor(x + 0.5) for a stable choice
            coords = np.floor(coords + 0.5)
        for c in range(channels):
            src_c = data if data.ndim == 3 else data[..., c]
            vals = ndimage.map_coordinates(src_c, coords, order=order, mode="constant", cval=cval,
                                           prefilter=order > 1,
                                           output=out_dtype if order == 0 else np.float32)
            vals = vals.reshape((i1 - i0,) + target_shape[1:])
            if data.ndim == 3:
                out[i0:i1] = vals
            else:
                out[i0:i1, ..., c] = vals
    return out


def resample_to_grid(volume: Volume, target_affine, target_shape, order: int = 0, *, cval: float = 0.0,
                     header=None) -> Volume:
    """``volume`` resampled onto the grid (``target_affine``, ``target_shape``); see :func:`resample_array`.

    The result carries the target affine (and ``header`` when given, else none: the source header
    describes another grid) and records what was done in ``metadata["resampled_from"]``.
    """
    data = resample_array(volume.data, volume.affine, target_affine, target_shape, order=order, cval=cval)
    meta = dict(volume.metadata)
    meta["resampled_from"] = {"shape": list(volume.spatial_shape), "affine": np.asarray(volume.affine).tolist(),
                              "order": int(order)}
    return Volume(data=data, affine=np.asarray(target_affine, float), header=header, name=volume.name,
                  source_path=volume.source_path, metadata=meta)


def resample_edge(data: np.ndarray, source_affine, target_affine, target_shape, *, order: int = 1,
                  cval: float = 0.0) -> np.ndarray:
    """Sample ``data`` (source grid; spatial axes first, optional trailing channels) on a target grid.

    Linear (``order=1``) or nearest (``order=0``) interpolation at each target voxel centre, taken to
    world mm by ``target_affine`` and into the source by ``inv(source_affine)``. The source's edge voxels
    are repeated once, so a target point within half a voxel outside the outermost source centres (still
    inside its field of view) gets the edge value rather than a blend with ``cval``; points further out
    fade to ``cval``. When the voxel-to-voxel map is a permutation with per-axis scale and offset (always
    the case between a scan and its model grid, oblique or not) the interpolation is done axis by axis
    (the same trilinear values, much cheaper); otherwise through
    :func:`resample_array`. Returns float32 (X, Y, Z[, C]).
    """
    data = np.asarray(data, dtype=np.float32)
    target_shape = tuple(int(v) for v in target_shape[:3])
    vox = np.linalg.inv(np.asarray(source_affine, float)) @ np.asarray(target_affine, float)
    axes = _separable_axes(vox)
    if axes is not None and order == 1:
        return _resample_separable(data, axes, target_shape, cval)
    pad = [(1, 1)] * 3 + [(0, 0)] * (data.ndim - 3)
    padded = np.pad(data, pad, mode="edge")
    shift = np.eye(4)
    shift[:3, 3] = -1.0  # padded index p is source index p - 1
    return resample_array(padded, np.asarray(source_affine, float) @ shift, target_affine, target_shape,
                          order=order, cval=cval).astype(np.float32, copy=False)


def _separable_axes(vox: np.ndarray, tol: float = 1e-9):
    """For a target→source voxel map that is a permuted diagonal: [(source_axis, scale, offset)] per target axis."""
    lin = vox[:3, :3]
    src = np.argmax(np.abs(lin), axis=0)
    if sorted(src.tolist()) != [0, 1, 2]:
        return None
    out = []
    for t in range(3):
        col = lin[:, t].copy()
        scale = col[src[t]]
        col[src[t]] = 0
        if np.abs(col).max() > tol * max(1.0, abs(scale)):
            return None
        out.append((int(src[t]), float(scale), float(vox[src[t], 3])))
    return out


def _resample_separable(data: np.ndarray, axes, target_shape, cval: float) -> np.ndarray:
    """Linear interpolation one axis at a time (see :func:`resample_edge` for the edge rule)."""
    extra = list(range(3, data.ndim))
    x = np.transpose(data, [a for a, _, _ in axes] + extra)  # source axes in target order
    for t, (_, scale, offset) in enumerate(axes):
        n = x.shape[t]
        pos = scale * np.arange(target_shape[t], dtype=np.float64) + offset
        # within one voxel beyond the outermost centres: the edge value; further out: cval
        outside = (pos < -1.0 - 1e-6) | (pos > n + 1e-6)
        q = np.clip(pos, 0.0, n - 1.0)
        i0 = np.minimum(np.floor(q).astype(np.int64), max(n - 2, 0))
        i1 = np.minimum(i0 + 1, n - 1)
        shape = [1] * x.ndim
        shape[t] = -1
        w = (q - i0).astype(np.float32).reshape(shape)
        lo = np.take(x, i0, axis=t)           # lo + (hi - lo) * w, in place: two full-size arrays, not four
        hi = np.take(x, i1, axis=t)
        np.subtract(hi, lo, out=hi)
        np.multiply(hi, w, out=hi)
        x = np.add(lo, hi, out=lo)
        del hi
        if outside.any():
            idx = [slice(None)] * x.ndim
            idx[t] = outside
            x[tuple(idx)] = cval
    return np.ascontiguousarray(x, dtype=np.float32)


__all__ = ["resample_array", "resample_edge", "resample_to_grid"]
