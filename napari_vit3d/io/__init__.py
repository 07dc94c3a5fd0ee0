"""Scans as :class:`Volume` objects: reading and writing with exact geometry, label tables.

NIfTI (nibabel) is always available; DICOM, NRRD/.seg.nrrd, MetaImage and MGH/MGZ go through
:func:`read_scan` / :func:`write_labels_as` (``io.formats``; the extra libraries are imported only
when such a file is used: ``pip install "napari-vit3d[formats]"``).
"""

from .formats import is_scan_path, list_dicom_series, read_scan, write_as, write_labels_as
from .geometry import DisplayGeometry, same_grid, voxel_spacing
from .nifti import is_nifti_path, read_nifti, write_image, write_labels, write_volume
from .volume import Volume

__all__ = ["DisplayGeometry", "Volume", "is_nifti_path", "is_scan_path", "list_dicom_series", "read_nifti",
           "read_scan", "same_grid", "voxel_spacing", "write_as", "write_image", "write_labels", "write_labels_as",
           "write_volume"]
