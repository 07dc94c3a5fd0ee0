"""The real sample scans shipped inside the package (``resources/samples``).

Files are found through :mod:`importlib.resources`, so they work the same from an editable checkout
and from an installed wheel. See ``resources/NOTICE.txt`` for their provenance and licence notice.

>>> from napari_vit3d.io.samples import sample_path
>>> vol = read_nifti(sample_path("colin27_t1"))          # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import VolumeError


@dataclass(frozen=True)
class Sample:
    name: str
    filename: str
    title: str
    kind: str  # "image" or "labels"
    description: str


SAMPLES: dict[str, Sample] = {s.name: s for s in (
    Sample("colin27_t1", "colin27_t1.nii.gz", "Colin27 head T1 (1 mm)", "image",
           "Colin27: one person's T1 head MRI (27 averaged scans), skull and scalp included; "
           "181×217×181, 1 mm, MNI space."),
    Sample("colin27_brainmask", "colin27_brainmask.nii.gz", "Colin27 brain mask", "labels",
           "Binary brain mask (1 = brain) on the Colin27 grid, from the automatic brain extraction "
           "ch2bet: > 0, largest connected component, holes filled (a silver standard)."),
    Sample("mni152_2009a_t1", "mni152_2009a_t1.nii.gz", "MNI152 2009a T1", "image",
           "ICBM 2009a symmetric MNI152 template T1 (average of 152 people), skull-stripped; "
           "197×233×189, 1 mm."),
)}


def samples_dir() -> Path:
    """The folder holding the sample files (inside the installed package)."""
    return Path(str(resources.files("napari_vit3d").joinpath("resources", "samples")))


def sample_path(name: str) -> Path:
    """Path of a bundled sample by name (``colin27_t1``, ``colin27_brainmask``, ``mni152_2009a_t1``).

    A file name (``colin27_t1.nii.gz``) is accepted too. Raises :class:`VolumeError` for an unknown
    name or a missing file (a broken installation).
    """
    key = str(name)
    for suffix in (".nii.gz", ".nii"):
        if key.endswith(suffix):
            key = key[: -len(suffix)]
    if key not in SAMPLES:
        raise VolumeError(f"unknown sample {name!r}; available: {', '.join(SAMPLES)}")
    path = samples_dir() / SAMPLES[key].filename
    if not path.is_file():
        raise VolumeError(f"sample file {path} is missing; reinstall napari-vit3d")
    return path


__all__ = ["SAMPLES", "Sample", "sample_path", "samples_dir"]
