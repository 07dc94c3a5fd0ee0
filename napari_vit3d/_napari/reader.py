"""npe2 readers: scans and label maps in every supported format as napari layers with exact geometry.

* ``napari-vit3d.get_reader`` (the manifest's only reader) claims ``.nii``, ``.nii.gz``, ``.nrrd``,
  ``.nhdr`` (and ``.seg.nrrd``), ``.mha``, ``.mhd``, ``.mgz``, ``.mgh``, ``.dcm``, ``.zip`` and folders;
  a folder or ``.zip`` only when it holds DICOM (else ``None``, so napari can try other readers).
  Each path is read with :func:`napari_vit3d.io.formats.read_scan` and turned into layers by
  ``io.layers.volume_to_layer_data``: a 3D scan → an Image layer; a 4D scan with at most 8 volumes
  along its last axis → one Image layer per channel, ``<scan> [c]``; a label map (a ``.seg.nrrd``,
  or a file of whole numbers whose name says so: ``*seg*``, ``*label*``, ``*mask*``, ``*parc*``,
  ``*aseg*``, ``*atlas*``) → a Labels layer, with segment names (``features``) and colours when
  the file has them.
* a folder holding several DICOM series raises a one-line error listing them (napari shows it as a
  notification); ``read_layers(path, series=UID)`` opens one of them.
* "open as labels" for any integer file, the user's choice: in napari, right-click the image layer →
  *Convert to Labels* (napari keeps ``layer.metadata``, so the geometry survives); in Python,
  ``read_layers(path, as_labels=True)`` gives the layer-data tuples.

Reading has no side effects: it does not touch the viewer or its camera.
Bad files raise a :class:`~napari_vit3d.errors.Vit3dError` with one plain line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import VolumeError
from ..io.formats import is_scan_path, read_scan
from ..io.labels import LabelTable
from ..io.layers import volume_to_layer_data


def _as_paths(path) -> list[str] | None:
    if isinstance(path, (str, bytes)) or hasattr(path, "__fspath__"):
        paths = [os.fsdecode(path)]
    elif isinstance(path, Sequence):
        paths = [os.fsdecode(p) for p in path]
    else:
        return None
    if not paths or not all(is_scan_path(p) for p in paths):
        return None
    return paths


def _label_kwargs(vol) -> dict:
    """``features`` (index, name) and a colormap for a label map whose file named its labels."""
    table = vol.metadata.get("label_table")
    if vol.metadata.get("kind") != "labels" or not isinstance(table, dict):
        return {}
    try:
        table = LabelTable.from_dict(table)
    except VolumeError:
        return {}
    colors = {e.index: e.color for e in table}
    colors[None] = (0.0, 0.0, 0.0, 0.0)
    return {"features": {"index": [e.index for e in table], "name": [e.name for e in table]}, "colormap": colors}


def read_layers(path, *, as_labels: bool | None = None, series: str | None = None) -> list[tuple]:
    """Layer-data tuples for one path or a list of paths (each read with ``io.formats.read_scan``)."""
    paths = _as_paths(path)
    if paths is None:
        raise VolumeError(f"{path}: not a scan napari-vit3d reads (NIfTI, NRRD, MetaImage, MGH/MGZ or DICOM)")
    layers = []
    for p in paths:
        vol = read_scan(p, as_labels=as_labels, series=series)
        layers.extend(volume_to_layer_data(vol, **_label_kwargs(vol)))
    return layers


def _read_auto(path):
    return read_layers(path, as_labels=None)


def get_reader(path):
    """npe2 ``get_reader``: a reader for paths :func:`~napari_vit3d.io.formats.is_scan_path` accepts, else None."""
    return _read_auto if _as_paths(path) is not None else None


__all__ = ["get_reader", "read_layers"]
