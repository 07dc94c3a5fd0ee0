"""Which scans a batch runs on: files, folders searched recursively, and list files."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import VolumeError
from ..io.nifti import is_nifti_path


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
        body = rows[1:] if ("input" in header or not is_nifti_path(rows[0][0].strip())) else rows
        items = [r[col].strip() for r in body if len(r) > col and r[col].strip()]
    else:
        items = [ln.strip() for ln in lines]
    return [(p if p.is_absolute() else path.parent / p) for p in map(Path, items)]


def find_inputs(inputs, list_file=None) -> list[Path]:
    """The scans to process, in a stable order, each once: files as given, folders searched recursively
    for ``.nii``/``.nii.gz`` files, and the entries of ``list_file``. A path that does not exist is
    kept (its row fails with a plain message) so a typo in a list is reported, not dropped."""
    out: list[Path] = []
    for item in list(inputs or []) + (_from_list(Path(list_file)) if list_file else []):
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and is_nifti_path(q))
            if not found:
                raise VolumeError(f"{p}: no .nii or .nii.gz scans in this folder")
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
