"""npe2 writers: a Labels or Image layer → NIfTI (or NRRD, .seg.nrrd, MetaImage, DICOM SEG) on its source scan's grid.

A layer made by the plugin (``layer.metadata["vit3d"]``) is written in the source file's own voxel
order with its affine, qform/sform codes and header; a layer without that metadata is written with
its own napari transform (reoriented to the nearest RAS axis order, exactly). Labels get the smallest
integer dtype that holds them (uint8 up to 255) and no intensity scaling; images are float32 (4D maps
with the extra axis last). Files are written atomically and never over the scan a layer came from.

``write_labels_layer_as`` writes a Labels layer in the format its extension names (``.seg.nrrd``:
a 3D Slicer segmentation with the layer's label names and colours; ``.nrrd``; ``.mha``; ``.dcm``: a
DICOM SEG, for a layer whose scan was opened from DICOM) through ``io.formats.write_labels_as``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from ..errors import Vit3dError
from ..io.formats import write_labels_as
from ..io.labels import LabelEntry, LabelTable
from ..io.layers import protected_paths
from ..io.nifti import is_nifti_path, write_image, write_labels
from .layers import volume_from_state


def _out_path(path) -> Path:
    p = Path(str(path))
    return p if is_nifti_path(p) else p.with_name(p.name + ".nii.gz")


def _visible_to_napari(fn):
    """napari's save path treats a ValueError from a writer as "no writer found" and drops the
    message; our errors are ValueErrors, so re-raise them as a plain Vit3dError (same one line)."""

    @functools.wraps(fn)
    def wrapper(path, data, meta):
        try:
            return fn(path, data, meta)
        except Vit3dError as exc:
            if isinstance(exc, ValueError):
                raise Vit3dError(str(exc)) from exc
            raise

    return wrapper


@_visible_to_napari
def write_labels_layer(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels layers."""
    vol = volume_from_state(data, meta, kind="labels")
    out = write_labels(_out_path(path), vol.data, vol.affine, header=vol.header,
                       protect=protected_paths(meta.get("metadata")))
    return [str(out)]


@_visible_to_napari
def write_image_layer(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Image layers (probability and explanation maps)."""
    vol = volume_from_state(data, meta, kind="image")
    out = write_image(_out_path(path), vol.data, vol.affine, header=vol.header,
                      protect=protected_paths(meta.get("metadata")))
    return [str(out)]


def _layer_table(state: dict, vol) -> LabelTable | None:
    """The layer's label names and colours: its ``features`` (index, name) and colormap, else its provenance."""
    feats = state.get("features")
    names = {}
    try:
        if feats is not None and "index" in feats and "name" in feats:
            names = {int(i): str(n) for i, n in zip(list(feats["index"]), list(feats["name"]))}
    except (TypeError, ValueError):
        names = {}
    if not names:
        return None  # write_labels_as falls back to the volume's metadata, then to defaults
    table = LabelTable.default(names.keys(), names)
    colormap = state.get("colormap")
    colors = getattr(colormap, "color_dict", None)
    if isinstance(colors, dict):
        entries = []
        for e in table:
            col = colors.get(e.index)
            try:
                rgba = tuple(float(c) for c in col) if col is not None else e.color
                entries.append(LabelEntry(e.index, e.name, rgba, e.visible, e.mesh))
            except (TypeError, ValueError):
                entries.append(e)
        table = LabelTable(entries)
    return table


@_visible_to_napari
def write_labels_layer_as(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels layers as .seg.nrrd, .nrrd, .mha or DICOM SEG (.dcm)."""
    vol = volume_from_state(data, meta, kind="labels")
    out = write_labels_as(str(path), vol, label_table=_layer_table(meta, vol),
                          protect=protected_paths(meta.get("metadata")))
    return [str(out)]


__all__ = ["write_image_layer", "write_labels_layer", "write_labels_layer_as"]
