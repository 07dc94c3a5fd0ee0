"""Export a reviewed label map with everything that explains it, in one call.

``export_review(path, scan, corrected, ...)`` writes, side by side:

* ``<stem>.nii.gz`` (or ``.nii``): the corrected labels on the scan's own grid (the scan's affine,
  qform/sform codes and voxel order; integer dtype; atomic; never over the scan);
* ``<stem>.labels.json`` and ``<stem>.itksnap.txt``: the label table;
* ``<stem>.provenance.json``: :func:`~napari_vit3d.review.provenance.build_provenance` (when the
  model's labels are given, the edits per label).

Used by the Export widget and usable from scripts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import GeometryError, VolumeError
from ..io.atomic import to_json, write_text_atomic
from ..io.labels import LabelTable
from ..io.nifti import is_nifti_path, nifti_stem, write_labels
from ..io.volume import Volume
from .provenance import build_provenance


def export_review(path, scan: Volume, corrected, *, model_labels=None, model_info: dict | None = None,
                  settings: dict | None = None, label_table: LabelTable | None = None) -> dict:
    """Write labels, label table (JSON + ITK-SNAP) and provenance; returns ``{kind: Path}``."""
    path = Path(path)
    if not is_nifti_path(path):
        raise VolumeError(f"{path}: the label file must end in .nii or .nii.gz")
    data = np.asarray(corrected.data if isinstance(corrected, Volume) else corrected)
    if data.shape != scan.spatial_shape:
        raise GeometryError(f"labels of shape {data.shape} are not on the scan's grid {scan.spatial_shape}")
    if isinstance(corrected, Volume) and not np.allclose(corrected.affine, scan.affine, atol=1e-4):
        raise GeometryError("the corrected labels' affine differs from the scan's; they would not land on the scan")
    present = np.unique(data)
    table = (label_table or LabelTable.from_array(present)).with_missing(present.tolist())
    stem = nifti_stem(path)
    # the record first: a problem with it (model labels on another grid, an unreadable checkpoint, a
    # value JSON cannot hold) must not leave a label file behind without its provenance
    base = model_labels if model_labels is not None else data
    record = build_provenance(scan, model_info or {}, settings or {}, base, data, table)
    record["exported_labels"] = path.name
    if model_labels is None:
        record["edits_note"] = "no model output was given: edits are relative to the exported labels themselves"
    provenance_text = to_json(record) + "\n"  # strict JSON checked before anything is written
    out = {"labels": write_labels(path, data, scan.affine, header=scan.header, source_path=scan.source_path)}
    out["label_table_json"] = table.write_json(path.with_name(f"{stem}.labels.json"))
    out["label_table_itksnap"] = table.write_itksnap(path.with_name(f"{stem}.itksnap.txt"))
    out["provenance"] = write_text_atomic(path.with_name(f"{stem}.provenance.json"), provenance_text)
    return out


__all__ = ["export_review"]
