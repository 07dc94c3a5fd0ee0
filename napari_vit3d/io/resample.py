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


__all__ = ["resample_array", "resample_to_grid"]
