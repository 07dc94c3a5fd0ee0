"""Recovery files: corrected labels autosaved while the user works, offered back after a crash or a close.

**One file per labels layer**: ``<scan hash[:32]>.<layer id>.npz``, where the scan hash is the scan's
content hash (``Volume.content_hash``, so reopening the same scan from any path finds it) and the layer
id is a uuid kept in the layer's metadata (``io.keys.LAYER_ID``, :func:`layer_id`). Two labels layers of
one scan ("Segment again → Keep both") thus keep two files, and exporting one discards only its own.
The folder is ``$NAPARI_VIT3D_RECOVERY_DIR`` when set, else ``<user cache dir>/napari-vit3d/recovery``.
Files are written atomically (``io.atomic.atomic_write``: a temporary file, then rename), so a crash or a
kill during a save leaves the previous recovery file intact. A file of the older one-per-scan layout
(``<scan hash[:32]>.npz``) is still read.

No Qt or napari here: the widgets call these functions from worker threads.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import numpy as np

ENV_VAR = "NAPARI_VIT3D_RECOVERY_DIR"
_ID_OK = re.compile(r"^[0-9a-f]{8,32}$")


def recovery_dir() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-vit3d")) / "recovery"


def new_layer_id() -> str:
    return uuid.uuid4().hex


def layer_id(layer, *, create: bool = True) -> str | None:
    """The layer's recovery id (``layer.metadata[io.keys.LAYER_ID]``), made and stored when missing."""
    from ..io import keys

    meta = layer.metadata
    lid = meta.get(keys.LAYER_ID)
    if isinstance(lid, str) and _ID_OK.match(lid):
        return lid
    if not create:
        return None
    lid = new_layer_id()
    meta[keys.LAYER_ID] = lid
    return lid


def _legacy_path(scan_hash: str) -> Path:
    return recovery_dir() / f"{scan_hash[:32]}.npz"


def list_recoveries(scan_hash: str) -> list[Path]:
    """Every recovery file of this scan (one per layer, plus an old one-per-scan file), newest first."""
    folder = recovery_dir()
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(scan_hash[:32])}(\.[0-9a-f]{{8,32}})?\.npz$")
    found = [p for p in folder.iterdir() if pattern.match(p.name)]

    def mtime(p):
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    return sorted(found, key=mtime, reverse=True)


def recovery_path(scan_hash: str, layer: str | None = None) -> Path:
    """The recovery file of one layer (``layer``: its id); without ``layer``, this scan's newest file (or,
    when there is none, where the old one-per-scan file would be)."""
    if layer is not None:
        return recovery_dir() / f"{scan_hash[:32]}.{layer}.npz"
    found = list_recoveries(scan_hash)
    return found[0] if found else _legacy_path(scan_hash)


def save_recovery(scan_hash: str, labels_display: np.ndarray, info: dict, layer: str | None = None) -> Path:
    """Write the labels (napari display order) and a small JSON ``info`` atomically; returns the path."""
    from ..io.atomic import atomic_write

    folder = recovery_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = recovery_path(scan_hash, layer) if layer is not None else _legacy_path(scan_hash)
    meta = json.dumps({**info, "scan_hash": scan_hash, **({"layer_id": layer} if layer else {})})

    def writer(tmp):
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, labels=np.asarray(labels_display), info=np.array(meta))

    return Path(atomic_write(path, writer, suffix=".npz"))


def read_recovery_file(path) -> tuple[np.ndarray, dict] | None:
    """(labels, info) of one recovery file, or None when it is damaged (the file is kept)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            labels = np.array(z["labels"])
            info = json.loads(str(z["info"]))
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return (labels, info) if isinstance(info, dict) else None


def load_all(scan_hash: str) -> list[tuple[Path, np.ndarray, dict]]:
    """(path, labels, info) of every readable recovery file of this scan, newest first."""
    out = []
    for p in list_recoveries(scan_hash):
        got = read_recovery_file(p)
        if got is not None and got[1].get("scan_hash") == scan_hash:
            out.append((p, *got))
    return out


def load_recovery(scan_hash: str, layer: str | None = None) -> tuple[np.ndarray, dict] | None:
    """(labels, info) saved for this layer (``layer``: its id; without it, this scan's newest), or None."""
    if layer is None:
        found = load_all(scan_hash)
        return (found[0][1], found[0][2]) if found else None
    path = recovery_path(scan_hash, layer)
    got = read_recovery_file(path) if path.is_file() else None
    if got is None or got[1].get("scan_hash") != scan_hash:
        return None
    return got


def discard_recovery(scan_hash: str, layer: str | None = None) -> None:
    """Remove one layer's recovery file (``layer``: its id; without it, the old one-per-scan file only)."""
    path = recovery_path(scan_hash, layer) if layer is not None else _legacy_path(scan_hash)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
