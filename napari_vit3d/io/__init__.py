"""Scans as :class:`Volume` objects: NIfTI reading and writing with exact geometry, label tables."""

from .geometry import DisplayGeometry, same_grid, voxel_spacing
from .nifti import is_nifti_path, read_nifti, write_image, write_labels, write_volume
from .volume import Volume

__all__ = ["DisplayGeometry", "Volume", "is_nifti_path", "read_nifti", "same_grid", "voxel_spacing",
           "write_image", "write_labels", "write_volume"]
