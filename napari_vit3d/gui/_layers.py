"""napari layer <-> :class:`~napari_vit3d.io.Volume` and world <-> voxel, for the widgets.

The conversions are the foundation's (``io.layers.volume_to_layer_data`` and
``_napari.layers.volume_from_layer``); this module only adapts them to what the widgets need and
adds the mouse-position helpers (napari world (S, A, R) mm → RAS → the file's voxel).
"""

from __future__ import annotations

import numpy as np

from .._napari.layers import volume_from_layer as _volume_from_layer
from ..errors import VolumeError
from ..io import DisplayGeometry, Volume, voxel_spacing
from ..io.geometry import napari_world_to_ras, ras_to_napari_world
from ..io.layers import METADATA_KEY, volume_to_layer_data


def geometry_meta(layer) -> dict:
    meta = layer.metadata.get(METADATA_KEY)
    if not meta or "affine" not in meta:
        raise VolumeError(f"layer {layer.name!r} was not opened with napari-vit3d, so its scanner geometry is "
                          "unknown; open the scan with File > Open with plugin > napari-vit3d")
    return meta


def _spatial_shape(meta) -> tuple[int, int, int]:
    return tuple(int(s) for s in (meta.get("spatial_shape") or meta["file_shape"][:3]))


def display_geometry(layer) -> DisplayGeometry:
    meta = geometry_meta(layer)
    return DisplayGeometry.from_affine(np.asarray(meta["affine"], float), _spatial_shape(meta))


def display_spacing(layer) -> tuple[float, float, float]:
    """Voxel size (mm) along the layer's three display axes."""
    return tuple(float(v) for v in voxel_spacing(display_geometry(layer).display_affine))


def volume_from_layer(layer) -> Volume:
    """The layer's data back in the file's own voxel order, with the source affine and header."""
    geometry_meta(layer)
    return _volume_from_layer(layer)


def layer_kwargs(volume: Volume, *, kind: str = "image", name: str | None = None, **style) -> tuple[np.ndarray, dict]:
    """(display-order data, layer kwargs) for a Volume on a scan's grid (a 4th axis becomes a slider)."""
    tuples = volume_to_layer_data(volume, kind=kind, name=name, split_channels=False, **style)
    data, kwargs, _ = tuples[0]
    kwargs = dict(kwargs)
    kwargs.pop("name", None)
    return data, kwargs


def world_to_file_voxel(layer, world_point) -> tuple[int, int, int]:
    """napari world (S, A, R) mm → the nearest voxel (i, j, k) of the layer's source file (clipped)."""
    meta = geometry_meta(layer)
    ras = napari_world_to_ras(np.asarray(world_point, float)[-3:])
    ijk = np.linalg.inv(np.asarray(meta["affine"], float)) @ np.append(ras, 1.0)
    shape = _spatial_shape(meta)
    return tuple(int(np.clip(np.round(v), 0, s - 1)) for v, s in zip(ijk[:3], shape))


def file_voxel_to_world(layer, ijk) -> np.ndarray:
    """The file voxel's centre in napari world (S, A, R) mm."""
    meta = geometry_meta(layer)
    ras = (np.asarray(meta["affine"], float) @ np.append(np.asarray(ijk, float), 1.0))[:3]
    return ras_to_napari_world(ras)


def ras_to_world(ras) -> np.ndarray:
    return ras_to_napari_world(np.asarray(ras, float))


def inside(layer, world_point) -> bool:
    meta = geometry_meta(layer)
    ras = napari_world_to_ras(np.asarray(world_point, float)[-3:])
    ijk = np.linalg.inv(np.asarray(meta["affine"], float)) @ np.append(ras, 1.0)
    return all(-0.5 <= v <= s - 0.5 for v, s in zip(ijk[:3], _spatial_shape(meta)))
