"""Export a reviewed label map with everything that explains it, in one call.

``export_review(path, scan, corrected, ...)`` writes, side by side:

* the corrected labels on the scan's own grid, in the format the name asks for
  (``io.formats.write_labels_as``): ``.nii.gz``/``.nii`` (the scan's affine, qform/sform codes and
  voxel order), ``.seg.nrrd`` (a 3D Slicer segmentation with the label names and colours), ``.nrrd``,
  ``.mha``, or ``.dcm`` (DICOM SEG, for a scan read from DICOM); integer dtype; atomic; never over the scan;
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
from ..io.formats import output_format, scan_stem, write_labels_as
from ..io.labels import LabelTable
from ..io.volume import Volume
from .provenance import build_provenance


def export_review(path, scan: Volume, corrected, *, model_labels=None, model_info: dict | None = None,
                  settings: dict | None = None, label_table: LabelTable | None = None) -> dict:
    """Write labels, label table (JSON + ITK-SNAP) and provenance; returns ``{kind: Path}``."""
    path = Path(path)
    fmt = output_format(path, labels=True)  # a one-line error for a name no writer takes
    if fmt == "dicom-seg" and not (scan.metadata or {}).get("dicom"):
        raise VolumeError(f"{path}: a DICOM SEG references the DICOM series it segments; this scan was not read "
                          "from DICOM (export as .nii.gz or .seg.nrrd)")
    data = np.asarray(corrected.data if isinstance(corrected, Volume) else corrected)
    if data.shape != scan.spatial_shape:
        raise GeometryError(f"labels of shape {data.shape} are not on the scan's grid {scan.spatial_shape}")
    if isinstance(corrected, Volume) and not np.allclose(corrected.affine, scan.affine, atol=1e-4):
        raise GeometryError("the corrected labels' affine differs from the scan's; they would not land on the scan")
    present = np.unique(data)
    table = (label_table or LabelTable.from_array(present)).with_missing(present.tolist())
    stem = scan_stem(path)
    # the record first: a problem with it (model labels on another grid, an unreadable checkpoint, a
    # value JSON cannot hold) must not leave a label file behind without its provenance
    base = model_labels if model_labels is not None else data
    record = build_provenance(scan, model_info or {}, settings or {}, base, data, table)
    record["exported_labels"] = path.name
    if model_labels is None:
        record["edits_note"] = "no model output was given: edits are relative to the exported labels themselves"
    provenance_text = to_json(record) + "\n"  # strict JSON checked before anything is written
    labels = scan.with_data(data, name=f"{scan.name} · labels", metadata={**scan.metadata, "kind": "labels"})
    out = {"labels": write_labels_as(path, labels, source=scan, label_table=table)}
    out["label_table_json"] = table.write_json(path.with_name(f"{stem}.labels.json"))
    out["label_table_itksnap"] = table.write_itksnap(path.with_name(f"{stem}.itksnap.txt"))
    out["provenance"] = write_text_atomic(path.with_name(f"{stem}.provenance.json"), provenance_text)
    return out


__all__ = ["export_review"]
