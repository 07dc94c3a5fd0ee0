"""``Volume``: an array with its voxel→world affine and the header of the file it came from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np

from ..errors import GeometryError, VolumeError
from .geometry import DisplayGeometry, check_affine, voxel_spacing


class VolumeKind(StrEnum):
    """What a :class:`Volume` holds (``metadata["kind"]``); a ``str`` enum, so it compares equal to its value
    and survives JSON. ``layer_type`` is the napari layer it is shown as."""

    IMAGE = "image"  # a scan or any intensity image
    LABELS = "labels"  # integer label map (segmentation, corrections, masks)
    PROBABILITIES = "probabilities"  # per-class probabilities, classes last
    UNCERTAINTY = "uncertainty"  # normalised entropy or another uncertainty map
    MAP = "map"  # an explanation map (attention, rollout, DINO heads, ERF)

    @property
    def layer_type(self) -> str:
        return "labels" if self is VolumeKind.LABELS else "image"

    @classmethod
    def of(cls, value) -> VolumeKind:
        """``value`` as a kind; None → IMAGE; anything unknown is a :class:`VolumeError`."""
        if value is None:
            return cls.IMAGE
        try:
            return cls(value)
        except ValueError:
            raise VolumeError(f"unknown volume kind {value!r}; known: {', '.join(k.value for k in cls)}") from None


@dataclass
class Volume:
    """A scan, label map or map derived from a scan.

    ``data`` has the three spatial axes first, in the *file's own voxel order*, and optionally one
    trailing axis (channels, heads, classes). ``affine`` maps voxel indices (i, j, k) to RAS+ mm.
    ``header`` is the source ``nibabel`` header when there is one (used to write files that land on
    the source voxel for voxel). ``metadata`` carries provenance (method, model, units, …).
    """

    data: np.ndarray
    affine: np.ndarray
    header: Any = None
    name: str = "volume"
    source_path: str | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.affine = check_affine(self.affine)
        if self.data.ndim not in (3, 4):
            raise VolumeError(f"{self.name}: a volume needs 3 spatial axes (and at most one more), got "
                              f"{self.data.ndim}D")

    @property
    def kind(self) -> VolumeKind:
        """What the volume holds (``metadata["kind"]``, default :attr:`VolumeKind.IMAGE`)."""
        return VolumeKind.of(self.metadata.get("kind"))

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[:3])

    @property
    def n_channels(self) -> int:
        return 1 if self.data.ndim == 3 else int(self.data.shape[3])

    @property
    def spacing(self) -> np.ndarray:
        return voxel_spacing(self.affine)

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def geometry(self) -> DisplayGeometry:
        return DisplayGeometry.from_affine(self.affine, self.spatial_shape)

    def channel(self, c: int) -> Volume:
        if self.data.ndim == 3:
            if c != 0:
                raise VolumeError(f"{self.name} has one channel, asked for channel {c}")
            return self
        return self.with_data(self.data[..., c], name=f"{self.name} [{c}]")

    def with_data(self, data: np.ndarray, **changes) -> Volume:
        """A new Volume on the same grid (first three axes must match)."""
        if tuple(data.shape[:3]) != self.spatial_shape:
            raise GeometryError(f"data of shape {data.shape} is not on the grid {self.spatial_shape} of {self.name}")
        meta = changes.pop("metadata", None)
        out = replace(self, data=data, **changes)
        out.metadata = dict(self.metadata if meta is None else meta)
        return out

    def content_hash(self) -> str:
        """sha256 of the data (dtype, shape, bytes) and the affine: identifies a scan's content."""
        h = hashlib.sha256()
        arr = np.ascontiguousarray(self.data)
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
        h.update(np.round(self.affine, 6).astype(np.float64).tobytes())
        return h.hexdigest()
