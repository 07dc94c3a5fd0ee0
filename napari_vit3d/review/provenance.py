"""Provenance of an exported label map: which scan, which model, which settings, what was edited.

:func:`build_provenance` returns a JSON-ready dict (format described in ``docs/review.md``);
:func:`write_json_atomic` writes it (temporary file in the same folder, then rename; NaN/inf refused).
``sha256_file``, ``to_json`` and ``write_json_atomic`` live in :mod:`napari_vit3d.io.atomic` and are
re-exported here.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import GeometryError, VolumeError
from ..io.atomic import sha256_file, to_json, write_json_atomic
from ..io.labels import LabelTable
from ..io.volume import Volume
from .corrections import diff

FORMAT = "napari-vit3d provenance"
FORMAT_VERSION = 1


def _array(x, what):
    a = np.asarray(x.data if isinstance(x, Volume) else x)
    if a.ndim != 3:
        raise VolumeError(f"{what} must be a 3D label map, got shape {a.shape}")
    return a


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _model_block(model_info: dict) -> dict:
    info = dict(model_info or {})
    block = {"name": info.pop("name", None), "checkpoint": None,
             "checkpoint_sha256": info.pop("checkpoint_sha256", None)}
    ckpt = info.pop("checkpoint", None) or info.pop("weights", None)
    if ckpt is not None:
        block["checkpoint"] = str(ckpt)
        if block["checkpoint_sha256"] is None and Path(ckpt).is_file():
            block["checkpoint_sha256"] = sha256_file(ckpt)
    block.update(info)
    return block


def build_provenance(scan: Volume, model_info: dict, settings: dict, model_labels, corrected_labels,
                     label_table: LabelTable | None = None, *, date: str | None = None) -> dict:
    """A provenance record for ``corrected_labels`` made from ``model_labels`` on ``scan``.

    ``model_info``: ``name`` and ``checkpoint`` (a path: its sha256 is computed) or
    ``checkpoint_sha256``; other keys are kept. ``settings``: inference settings (device, overlap, …),
    kept as given. ``model_labels``/``corrected_labels``: arrays or Volumes on the scan's grid.
    ``edits`` lists, per label, voxels (and mL) added and removed and the Dice between the model's
    output and the corrected labels.
    """
    a = _array(model_labels, "model labels")
    b = _array(corrected_labels, "corrected labels")
    if a.shape != scan.spatial_shape or b.shape != scan.spatial_shape:
        raise GeometryError(f"labels {a.shape}/{b.shape} are not on the scan's grid {scan.spatial_shape}")
    d = diff(a, b)
    vox_ml = scan.voxel_volume_ml
    table = label_table if label_table is not None else LabelTable.from_array(np.union1d(np.unique(a), np.unique(b)))
    edits = []
    for lab, e in d.per_label.items():
        edits.append({"label": int(lab), "name": table.name(lab), **e,
                      "ml_added": e["voxels_added"] * vox_ml, "ml_removed": e["voxels_removed"] * vox_ml})
    corrected_vol = Volume(data=np.ascontiguousarray(b), affine=scan.affine)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "date": date or utc_now_iso(),
        "software": {"name": "napari-vit3d", "version": __version__},
        "scan": {"name": scan.name, "source_path": scan.source_path, "content_sha256": scan.content_hash(),
                 "shape": list(scan.spatial_shape), "affine": np.asarray(scan.affine).tolist(),
                 "voxel_volume_ml": vox_ml},
        "model": _model_block(model_info),
        "settings": dict(settings or {}),
        "labels": table.to_dict()["labels"],
        "corrected_labels_sha256": corrected_vol.content_hash(),
        "edits": edits,
        "edits_total": {"voxels_changed": d.n_changed,
                        "voxels_added": int(np.count_nonzero(d.map == 1)),
                        "voxels_removed": int(np.count_nonzero(d.map == 2)),
                        "voxels_relabelled": int(np.count_nonzero(d.map == 3))},
    }
    return record


__all__ = ["FORMAT", "FORMAT_VERSION", "build_provenance", "sha256_file", "to_json", "utc_now_iso",
           "write_json_atomic"]
