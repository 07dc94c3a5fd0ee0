"""napari side of ``io.layers``: napari layers ↔ :class:`~napari_vit3d.io.Volume`.

``io.layers.volume_to_layer_data`` / ``volume_from_layer_data`` do the geometry without napari; this
module adds what needs napari: the full data→world transform of a layer (scale, translate, rotate,
shear and affine composed the way napari composes them) and building real layer objects.
"""

from __future__ import annotations

import numpy as np

from ..io.layers import volume_from_layer_data, volume_to_layer_data
from ..io.volume import Volume


def world_affine_from_state(state: dict, ndim: int) -> np.ndarray:
    """The (ndim+1)² data→world matrix of a layer from its state dict (``layer.as_layer_data_tuple()[1]``,
    the ``meta`` napari passes to writers): ``affine ∘ (translate, rotate, shear, scale)``."""
    from napari.utils.transforms import Affine, CompositeAffine

    def get(key, default):
        val = state.get(key)
        return default if val is None else val

    physical = CompositeAffine(scale=get("scale", (1.0,) * ndim), translate=get("translate", (0.0,) * ndim),
                               rotate=get("rotate", None), shear=get("shear", None), ndim=ndim)
    aff = state.get("affine")
    if aff is None:
        world = Affine(ndim=ndim)
    elif isinstance(aff, Affine):
        world = aff
    else:
        world = Affine(affine_matrix=np.asarray(aff, dtype=float), ndim=ndim)
    return np.asarray(world.affine_matrix, dtype=float) @ np.asarray(physical.affine_matrix, dtype=float)


def volume_from_state(data, state: dict, *, kind: str | None = None) -> Volume:
    """A Volume in the source file's voxel order from layer data + state (plugin metadata first,
    else the layer's own napari transform)."""
    arr = np.asarray(data)
    metadata = state.get("metadata") or {}
    world = None if not arr.ndim else world_affine_from_state(state, arr.ndim)
    return volume_from_layer_data(arr, metadata, world_affine=world, name=state.get("name"), kind=kind)


def volume_from_layer(layer, *, kind: str | None = None) -> Volume:
    """A Volume in the source file's voxel order from a napari Image or Labels layer."""
    data, state, layer_type = layer.as_layer_data_tuple()
    if kind is None and layer_type in ("image", "labels"):
        kind = layer_type
    return volume_from_state(data, state, kind=kind)


def layers_from_volume(volume: Volume, **kwargs) -> list:
    """napari layer objects for ``volume`` (same arguments as ``io.layers.volume_to_layer_data``)."""
    from napari.layers import Layer

    return [Layer.create(data, meta, layer_type) for data, meta, layer_type in
            volume_to_layer_data(volume, **kwargs)]


__all__ = ["layers_from_volume", "volume_from_layer", "volume_from_state", "world_affine_from_state"]
