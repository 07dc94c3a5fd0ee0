"""Atomic file writing, strict JSON and file hashing: the one home for these helpers.

Every file the package writes (NIfTI images and label maps, label tables, provenance records, JSON
sidecars, model specs, the model registry, safetensors weights) goes through :func:`atomic_write`:
the content is written to a temporary file in the destination's folder, which then replaces the
destination with ``os.replace``. A crash or an error while writing leaves the previous file (or no
file) in place, never a half-written one, and the temporary file is removed. The new file gets the
permissions a plainly created file would have (``0666`` minus the umask), or those of the file it
replaces (``mkstemp`` alone would make it ``0600``).

>>> atomic_write("labels.nii.gz", lambda tmp: nib.save(img, tmp), suffix=".nii.gz")   # doctest: +SKIP
>>> write_json_atomic("record.json", {"dice": 0.91})                                  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FileWriteError, VolumeError


def _read_umask() -> int:
    umask = os.umask(0o022)  # os.umask can only be read by setting it; done once, at import
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def new_file_mode(path) -> int:
    """The mode a plainly created file would get (0666 minus umask), or the existing file's mode."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o666 & ~_UMASK


def atomic_write(path, writer: Callable[[str], Any], *, suffix: str = "") -> Path:
    """Write ``path`` atomically: ``writer(tmp)`` writes a temporary file that then replaces ``path``.

    ``suffix`` ends the temporary file's name (after ``.tmp``); give the real extension when the writer decides the
    format from it (``nib.save`` compresses ``.nii.gz``, ``np.savez`` appends ``.npz`` otherwise).
    The folder must exist (:class:`~napari_vit3d.errors.VolumeError` otherwise). On any error,
    including ``KeyboardInterrupt``, the temporary file is removed and ``path`` is left untouched; an
    ``OSError`` (no permission, disk full, name too long) becomes a one-line
    :class:`~napari_vit3d.errors.FileWriteError` (a ``Vit3dError`` that is still an ``OSError``).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise VolumeError(f"{path}: folder {folder} does not exist")
    try:  # a short prefix: a target name near the file-system limit must not fail on the temporary name
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=f".tmp{suffix}", dir=str(folder))
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, new_file_mode(path))
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # permission, disk full, name too long, ...: the user's to fix
            raise _write_error(path, exc) from None
        raise
    return path


def _write_error(path: Path, exc: OSError) -> FileWriteError:
    return FileWriteError(f"{path}: cannot write ({exc.strerror or exc or type(exc).__name__})")


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    def writer(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, writer)


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def jsonable(obj):
    """``obj`` with numpy scalars/arrays, tuples and paths turned into plain JSON types.

    Non-finite floats (NaN, inf) raise :class:`~napari_vit3d.errors.VolumeError`: they are not JSON.
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if not math.isfinite(f):
            raise VolumeError(f"cannot write {f} to JSON (not a finite number)")
        return f
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_json(obj, *, indent: int | None = 2) -> str:
    """Strict JSON (numpy scalars/arrays converted; NaN and inf refused)."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False)


def write_json_atomic(path, obj, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON (see :func:`to_json`) to ``path`` atomically, with a final newline."""
    return write_text_atomic(path, to_json(obj, indent=indent) + "\n")


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (streamed); :class:`~napari_vit3d.errors.VolumeError` if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                h.update(block)
    except OSError as exc:
        raise VolumeError(f"{path}: cannot read to hash it ({exc.strerror or exc})") from None
    return h.hexdigest()


__all__ = ["atomic_write", "jsonable", "new_file_mode", "sha256_file", "to_json", "write_bytes_atomic",
           "write_json_atomic", "write_text_atomic"]
