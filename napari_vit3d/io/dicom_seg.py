"""DICOM Segmentation (SEG) objects for label maps of scans read from DICOM, with highdicom.

:func:`write_dicom_seg` writes one segment per label (its name from the label table, its colour as
the recommended display CIELab value) referencing the source series' images: the SEG's frames are
derived from the source slices (one frame per source slice that holds the segment, at that slice's
position and orientation), so a PACS viewer, OHIF or 3D Slicer (QuantitativeReporting) shows it on
the series it was made from. Only a label map of a scan that was opened from DICOM can be written:
its ``metadata["dicom"]`` says which files to reference.

The SEG necessarily carries the source's patient and study attributes (that is how a PACS files it
with the study); napari-vit3d itself never copies them into metadata, provenance or logs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import GeometryError, VolumeError
from ._scan_common import require
from .atomic import atomic_write
from .labels import LabelTable
from .volume import Volume

SEG_TYPES = ("BINARY", "LABELMAP")


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("napari-vit3d")
    except (ImportError, PackageNotFoundError):
        return "0"


def write_dicom_seg(path, labels: np.ndarray, source: Volume, *, label_table: LabelTable | None = None,
                    segmentation_type: str = "BINARY", series_description: str = "napari-vit3d segmentation",
                    algorithm: str | None = None) -> Path:
    """Write ``labels`` (3D, in ``source``'s voxel order) as a DICOM SEG referencing ``source``'s images.

    ``segmentation_type`` is ``"BINARY"`` (one bit per pixel and segment: read by every SEG reader) or
    ``"LABELMAP"`` (one frame holds all segments; DICOM 2024+, fewer readers). Segment numbers are
    1..N in label order; each segment's label is the table's name. Atomic; a one-line
    :class:`VolumeError` when ``source`` did not come from DICOM.
    """
    path = Path(path)
    meta = (source.metadata or {}).get("dicom") if source is not None else None
    if not meta or not meta.get("files"):
        origin = Path(source.source_path).name if source is not None and source.source_path else "elsewhere"
        raise VolumeError(f"{path}: a DICOM SEG can only be written for a scan opened from DICOM (this one came from "
                          f"{origin}); write .nii.gz, .nrrd, .seg.nrrd or .mha instead")
    segmentation_type = str(segmentation_type).upper()
    if segmentation_type not in SEG_TYPES:
        raise VolumeError(f"segmentation type must be one of {', '.join(SEG_TYPES)}, got {segmentation_type}")
    labels = np.asarray(labels)
    if labels.shape != source.spatial_shape:
        raise GeometryError(f"{path}: labels of shape {labels.shape} are not on the scan's grid {source.spatial_shape}")
    if labels.dtype.kind == "f":
        if not np.array_equal(labels, np.round(labels)):
            raise VolumeError(f"{path}: labels must be whole numbers")
    if labels.size and labels.min() < 0:
        raise VolumeError(f"{path}: a DICOM SEG cannot hold negative labels")
    hd = require("highdicom", "writing DICOM SEG")
    from pydicom.sr.codedict import codes

    from .dicom import source_datasets

    present = [int(v) for v in np.unique(labels) if v != 0]
    table = (label_table or LabelTable.from_array(labels)).with_missing(present)
    values = [e.index for e in table if e.index != 0 and e.index in present]
    if not values:
        raise VolumeError(f"{path}: the label map is empty; a DICOM SEG needs at least one labelled voxel")
    if len(values) > 65535:
        raise VolumeError(f"{path}: too many labels for a DICOM SEG ({len(values)})")
    numbers = np.zeros(int(max(values)) + 1, dtype=np.uint16)
    for n, v in enumerate(values, 1):
        numbers[v] = n
    seg_numbers = numbers[labels.astype(np.int64)]  # label value → segment number 1..N, 0 background
    datasets = source_datasets(meta)
    frames_of = meta.get("frames")
    if frames_of is not None:  # one multi-frame source: frames in the source's frame order
        n_frames = int(datasets[0].get("NumberOfFrames", len(frames_of)))
        arr = np.zeros((n_frames, labels.shape[1], labels.shape[0]), dtype=seg_numbers.dtype)
        for k, f in enumerate(frames_of):
            arr[int(f)] = seg_numbers[:, :, k].T
    else:  # one source image per slice k
        if len(datasets) != labels.shape[2]:
            raise GeometryError(f"{path}: {len(datasets)} source images for {labels.shape[2]} slices")
        arr = np.ascontiguousarray(np.transpose(seg_numbers, (2, 1, 0)))  # (k, row j, column i)
    if int(arr.max()) < 256:
        arr = arr.astype(np.uint8)
    family = codes.cid7162.ArtificialIntelligence
    algo = hd.AlgorithmIdentificationSequence(name=str(algorithm or source.metadata.get("model") or "napari-vit3d"),
                                              family=family, version=_version())
    descriptions = []
    for n, v in enumerate(values, 1):
        entry = table[v]
        rgb = tuple(int(round(c * 255)) for c in entry.color[:3])
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=(entry.name or f"label {v}")[:64],
            segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
            algorithm_type="AUTOMATIC", algorithm_identification=algo,
            display_color=hd.color.CIELabColor.from_rgb(*rgb) if any(rgb) else None))
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=arr, segmentation_type=segmentation_type,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9000 + (
                int(meta.get("SeriesNumber") or 0) % 1000),
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="napari-vit3d",
            manufacturer_model_name="napari-vit3d", software_versions=_version(), device_serial_number="0",
            series_description=series_description[:64], content_label="SEGMENTATION")
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise VolumeError(" ".join(f"{path}: highdicom refused to build the SEG ({type(exc).__name__}: {exc})".split())
                          [:400]) from None
    return atomic_write(path, lambda tmp: seg.save_as(tmp), suffix=".dcm")


__all__ = ["SEG_TYPES", "write_dicom_seg"]
