"""``Volume`` ↔ napari layer data, without importing napari.

Every layer the plugin makes from a scan (the scan itself, labels, probabilities, explanation maps)
goes through :func:`volume_to_layer_data`, and every layer written back to a file goes through
:func:`volume_from_layer_data`. They are the only place where the display permutation/flip is
applied or undone, so every layer lies on its scan and every export lands on the source file voxel
for voxel.

A layer-data tuple is ``(data, kwargs, layer_type)`` as napari readers return it: ``data`` is in
napari display order (axes along +S, +A, +R, see :mod:`.geometry`), ``kwargs`` holds the transform
(``scale``/``translate``, or ``affine`` for an oblique scan), axis labels, units, a name and
``metadata["vit3d"]`` (see :func:`layer_metadata`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

from ..errors import GeometryError, VolumeError
from . import keys
from .geometry import _REVERSE, DisplayGeometry, check_affine
from .volume import Volume

#: key of the plugin's dict in ``layer.metadata``
METADATA_KEY = keys.PLUGIN
AXIS_LABELS = ("S", "A", "R")
UNITS = "mm"
_MAX_PERCENTILE_SAMPLES = 2_000_000


def layer_metadata(volume: Volume, *, kind: str, channel: int | None = None,
                   channel_axis: int | None = None) -> dict:
    """The ``layer.metadata["vit3d"]`` dict for a layer made from ``volume``.

    Keys: ``affine`` (4×4 nested list, voxel→RAS mm of the *file* grid), ``file_shape`` (the
    volume's full array shape in file order, channels last), ``spatial_shape``, ``header`` (the
    nibabel header object, or None), ``source_path`` (the file the volume came from, or None),
    ``name``, ``kind`` ("image" or "labels"), ``channel`` (the channel shown by this layer, or None),
    ``channel_axis`` (0 when the layer holds all channels first, else None) and ``provenance`` (a
    copy of ``volume.metadata``).
    """
    if kind not in ("image", "labels"):
        raise ValueError(f"kind must be 'image' or 'labels', got {kind!r}")
    return {
        "affine": np.asarray(volume.affine, dtype=float).tolist(),
        "file_shape": tuple(int(s) for s in volume.data.shape),
        "spatial_shape": volume.spatial_shape,
        "header": volume.header,
        "source_path": volume.source_path,
        "name": volume.name,
        "kind": kind,
        "channel": channel,
        "channel_axis": channel_axis,
        "provenance": dict(volume.metadata),
    }


def robust_contrast_limits(data: np.ndarray, low: float = 1.0, high: float = 99.5) -> tuple[float, float]:
    """Contrast limits from the ``low``–``high`` percentiles (on a regular subsample of big arrays)."""
    arr = np.asarray(data)
    if arr.size > _MAX_PERCENTILE_SAMPLES and arr.ndim >= 1:
        step = int(np.ceil((arr.size / _MAX_PERCENTILE_SAMPLES) ** (1.0 / arr.ndim)))
        arr = arr[(slice(None, None, step),) * arr.ndim]
    arr = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr.ravel()
    if arr.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(arr, [low, high]))
    if hi <= lo:
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _kind_of(volume: Volume, kind: str | None) -> str:
    """The napari layer type: ``kind`` if given, else the one the volume's :class:`VolumeKind` is shown as."""
    return kind if kind is not None else volume.kind.layer_type


def volume_to_layer_data(volume: Volume, *, kind: str | None = None, name: str | None = None,
                         split_channels: bool = True, **layer_kwargs: Any) -> list[tuple]:
    """napari layer-data tuples for ``volume``, placed exactly in world (S, A, R) mm.

    ``kind`` is "image" or "labels" (default: ``volume.metadata["kind"]``, else "image"). A 4D volume
    (channels last) gives one layer per channel named ``<name> [c]`` when ``split_channels``, else one
    layer with the channel axis first (a napari slider). ``layer_kwargs`` (colormap, opacity,
    blending, contrast_limits, visible, ...) are passed on; ``metadata`` given there is merged with
    the geometry metadata. Image layers get 1st–99.5th percentile contrast limits unless given.
    """
    kind = _kind_of(volume, kind)
    name = volume.name if name is None else name
    geom = volume.geometry
    transform = geom.napari_transform()
    extra_meta = dict(layer_kwargs.pop("metadata", None) or {})
    data = volume.data
    if kind == "labels":
        if data.ndim != 3:
            raise VolumeError(f"{name}: a label layer must be 3D, got shape {data.shape}")
        if data.dtype.kind == "b":
            data = data.astype(np.uint8)
        elif data.dtype.kind not in "iu":
            raise VolumeError(f"{name}: label data must be integers, got {data.dtype}")

    def one(arr, layer_name, channel, channel_axis, tr):
        kw = {"name": layer_name, "axis_labels": AXIS_LABELS, "units": UNITS, **tr}
        if channel_axis is not None:
            kw["axis_labels"] = ("channel", *AXIS_LABELS)
            kw["units"] = ("pixel", UNITS, UNITS, UNITS)
        meta = {**extra_meta, METADATA_KEY: layer_metadata(volume, kind=kind, channel=channel,
                                                           channel_axis=channel_axis)}
        kw["metadata"] = meta
        if kind == "image" and "contrast_limits" not in layer_kwargs:
            kw["contrast_limits"] = robust_contrast_limits(arr)
        kw.update(layer_kwargs)
        return (arr, kw, kind)

    if data.ndim == 3:
        return [one(geom.to_display(data), name, None, None, transform)]
    if split_channels:
        return [one(geom.to_display(data[..., c]), f"{name} [{c}]", c, None, transform)
                for c in range(data.shape[3])]
    disp = np.moveaxis(geom.to_display(data), 3, 0)
    if "affine" in transform:
        aff = np.eye(5)
        aff[1:, 1:] = transform["affine"]
        tr = {"affine": aff}
    else:
        tr = {"scale": (1.0, *transform["scale"]), "translate": (0.0, *transform["translate"])}
    return [one(disp, name, None, 0, tr)]


def ras_affine_from_napari(world_affine) -> np.ndarray:
    """napari (data index → world (S, A, R) mm) 4×4 → (data index → RAS mm) 4×4."""
    a = np.asarray(world_affine, dtype=float)
    if a.shape != (4, 4):
        raise GeometryError(f"expected a 4×4 napari affine for a 3D layer, got shape {a.shape}")
    return _REVERSE @ a


def volume_from_layer_data(data, metadata: dict | None = None, *, world_affine=None,
                           name: str | None = None, kind: str | None = None) -> Volume:
    """A :class:`Volume` in the source file's voxel order from a layer's data and metadata.

    With ``metadata[METADATA_KEY]`` (a layer made by the plugin) the display permutation/flip is
    undone exactly and the source affine and header come back. Without it, ``world_affine`` (the
    layer's full data→world 4×4, world axes (S, A, R) mm) is required: the array is reoriented to the
    nearest RAS axis order (exact flips/permutations) and its affine is built from the transform.
    A 4D layer holds channels first in napari; the returned volume has them last.
    """
    meta = (metadata or {}).get(METADATA_KEY) if isinstance(metadata, dict) else None
    arr = np.asarray(data)
    if meta:
        affine = check_affine(np.asarray(meta["affine"], dtype=float))
        spatial = tuple(int(s) for s in meta.get("spatial_shape") or meta["file_shape"][:3])
        geom = DisplayGeometry.from_affine(affine, spatial)
        if arr.ndim == 4:
            arr = np.moveaxis(arr, 0, 3)
        if arr.ndim not in (3, 4) or tuple(arr.shape[:3]) != geom.display_shape:
            raise GeometryError(f"{name or meta.get('name')}: layer data of shape {np.asarray(data).shape} "
                                f"no longer matches its scan grid {geom.display_shape}")
        header = meta.get("header")
        provenance = dict(meta.get("provenance") or {})
        if kind:
            provenance["kind"] = kind
        return Volume(data=geom.from_display(arr), affine=affine, header=header,
                      name=name or meta.get("name") or "volume", source_path=meta.get("source_path"),
                      metadata=provenance)
    if world_affine is None:
        raise GeometryError("a layer without napari-vit3d metadata needs its napari transform to be written")
    if arr.ndim == 4:
        arr = np.moveaxis(arr, 0, 3)
    if arr.ndim not in (3, 4):
        raise VolumeError(f"{name or 'layer'}: only 3D layers (or 4D with a leading channel axis) can be "
                          f"written as NIfTI, got shape {np.asarray(data).shape}")
    wa = np.asarray(world_affine, dtype=float)
    if wa.shape == (5, 5):  # channel axis first: keep the spatial block
        wa = wa[1:, 1:]
    ras = check_affine(ras_affine_from_napari(wa))
    ornt = io_orientation(ras)
    file_data = apply_orientation(arr, ornt)
    file_affine = ras @ inv_ornt_aff(ornt, arr.shape[:3])
    return Volume(data=file_data, affine=file_affine, header=None, name=name or "volume",
                  metadata={"kind": kind} if kind else {})


def protected_paths(metadata: dict | None) -> tuple[str, ...]:
    """Files a layer must never be written over: the file it was read from and the scan it belongs to."""
    meta = (metadata or {}).get(METADATA_KEY) if isinstance(metadata, dict) else None
    if not meta:
        return ()
    prov = meta.get("provenance") or {}
    paths = (meta.get("source_path"), prov.get("source_path"), prov.get("scan_path"))
    return tuple(str(p) for p in paths if p)


__all__ = ["AXIS_LABELS", "METADATA_KEY", "UNITS", "layer_metadata", "protected_paths",
           "ras_affine_from_napari", "robust_contrast_limits", "volume_from_layer_data",
           "volume_to_layer_data"]
