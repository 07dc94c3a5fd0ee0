"""Which scans a batch runs on: files, folders searched recursively, and list files.

A scan is a file in a format ``io.formats.read_scan`` reads (NIfTI, NRRD, MetaImage, MGH/MGZ, a
DICOM zip or multi-frame file) or a folder of DICOM files: every folder that directly holds DICOM
files counts as one scan (its series), whatever its subfolders hold.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import VolumeError
from ..io.formats import scan_format


def _from_list(path: Path) -> list[Path]:
    """Paths from a text file (one per line, ``#`` comments) or a CSV with an ``input`` (or first) column;
    relative paths are taken relative to the list file's folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise VolumeError(f"{path}: cannot read the list of inputs ({exc})") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return []
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(lines))
        header = [h.strip().lower() for h in rows[0]]
        col = header.index("input") if "input" in header else 0
        body = rows[1:] if ("input" in header or scan_format(rows[0][0].strip(), probe=False) is None) else rows
        items = [r[col].strip() for r in body if len(r) > col and r[col].strip()]
    else:
        items = [ln.strip() for ln in lines]
    return [(p if p.is_absolute() else path.parent / p) for p in map(Path, items)]


def _scans_in(folder: Path) -> list[Path]:
    """Scan files under ``folder`` and the folders that directly hold DICOM files, in a stable order."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        dicom_here = False
        for name in sorted(filenames):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            q = here / name
            fmt = scan_format(q)
            if fmt == "dicom" and not name.lower().endswith(".zip"):
                dicom_here = True  # slices of a series: the folder is the scan
            elif fmt is not None:
                found.append(q)
        if dicom_here:
            found.append(here)
    return sorted(found)


def find_inputs(inputs, list_file=None) -> list[Path]:
    """The scans to process, in a stable order, each once: files as given, folders searched recursively
    for scan files (see :func:`_scans_in`: a folder holding DICOM files is one scan), and the entries of
    ``list_file``. A path that does not exist is kept (its row fails with a plain message) so a typo in
    a list is reported, not dropped."""
    out: list[Path] = []
    for item in list(inputs or []) + (_from_list(Path(list_file)) if list_file else []):
        p = Path(item).expanduser()
        if p.is_dir():
            found = _scans_in(p)
            if not found:
                raise VolumeError(f"{p}: no scans in this folder (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, .mgz, "
                                  ".mgh, DICOM files or zips)")
            out.extend(found)
        else:
            out.append(p)
    seen, unique = set(), []
    for p in out:
        key = str(p.resolve()) if p.exists() else str(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique
