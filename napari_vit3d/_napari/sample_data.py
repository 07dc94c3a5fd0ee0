"""npe2 sample data: the bundled real scans, opened exactly like the reader opens files."""

from __future__ import annotations

from ..io.samples import sample_path
from .reader import read_layers


def colin27_t1() -> list[tuple]:
    """Colin27 head T1 (1 mm, skull included)."""
    return read_layers(str(sample_path("colin27_t1")))


def mni152_2009a_t1() -> list[tuple]:
    """ICBM 2009a symmetric MNI152 template, T1 (1 mm, skull-stripped)."""
    return read_layers(str(sample_path("mni152_2009a_t1")))


__all__ = ["colin27_t1", "mni152_2009a_t1"]
