"""npe2 readers: NIfTI scans and label maps as napari layers with exact geometry.

* ``napari-vit3d.get_reader`` (the manifest's only reader): a 3D scan → an Image layer; a 4D scan
  with at most 8 volumes along its last axis → one Image layer per channel, ``<scan> [c]``; a 3D
  file of whole numbers whose name says it is a label map (``*seg*``, ``*label*``, ``*mask*``,
  ``*parc*``, ``*aseg*``, ``*atlas*``) → a Labels layer.
* "open as labels" for any integer file, the user's choice: in napari, right-click the image layer →
  *Convert to Labels* (napari keeps ``layer.metadata``, so the geometry survives); in Python,
  ``read_layers(path, as_labels=True)`` gives the layer-data tuples.

Bad files raise a :class:`~napari_vit3d.errors.Vit3dError` with one plain line, which napari shows
as a notification. The radiological camera is set on the current viewer, if there is one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..gui.viewer_setup import current_viewer_or_none, schedule_radiological_view
from ..io.layers import volume_to_layer_data
from ..io.nifti import is_nifti_path, read_nifti


def _as_paths(path) -> list[str] | None:
    if isinstance(path, (str, bytes)) or hasattr(path, "__fspath__"):
        paths = [os.fsdecode(path)]
    elif isinstance(path, Sequence):
        paths = [os.fsdecode(p) for p in path]
    else:
        return None
    if not paths or not all(is_nifti_path(p) for p in paths):
        return None
    return paths


def read_layers(path, *, as_labels: bool | None = None) -> list[tuple]:
    """Layer-data tuples for one path or a list of paths (each file read with ``io.read_nifti``)."""
    paths = _as_paths(path)
    if paths is None:
        from ..errors import VolumeError

        raise VolumeError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
    layers = []
    for p in paths:
        vol = read_nifti(p, as_labels=as_labels)
        layers.extend(volume_to_layer_data(vol))
    schedule_radiological_view(current_viewer_or_none())
    return layers


def _read_auto(path):
    return read_layers(path, as_labels=None)


def get_reader(path):
    """npe2 ``get_reader``: a reader function for .nii/.nii.gz paths, else None."""
    return _read_auto if _as_paths(path) is not None else None


__all__ = ["get_reader", "read_layers"]
