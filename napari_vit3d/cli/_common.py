"""Helpers shared by the command modules (one home: not copied into each command)."""

from __future__ import annotations

from pathlib import Path

from ..errors import VolumeError


def check_output_paths(input_path, outputs) -> list[Path]:
    """Refuse, before any slow work, output paths that cannot be written.

    Each of ``outputs`` (None entries are skipped) must end in ``.nii``/``.nii.gz``, must not be
    ``input_path``, must not be used twice and must be in an existing folder. Returns them as Paths.
    """
    from ..io.nifti import is_nifti_path

    inp = Path(input_path).resolve()
    outs = [Path(p) for p in outputs if p]
    seen = set()
    for out in outs:
        if not is_nifti_path(out):
            raise VolumeError(f"{out}: output must end in .nii or .nii.gz")
        if out.resolve() == inp:
            raise VolumeError(f"{out}: refusing to overwrite the input scan; choose another file name")
        if out.resolve() in seen:
            raise VolumeError(f"{out}: used for two outputs")
        seen.add(out.resolve())
        if not out.resolve().parent.is_dir():
            raise VolumeError(f"{out}: folder {out.parent} does not exist")
    return outs
