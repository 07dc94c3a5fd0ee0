"""Recovery files: corrected labels autosaved while the user works, offered back after a crash.

One file per scan, named by the scan's content hash (``Volume.content_hash``), so reopening the same
scan — from any path — finds it. The folder is ``$NAPARI_VIT3D_RECOVERY_DIR`` when set, else
``<user cache dir>/napari-vit3d/recovery``. Files are written atomically (temporary file, then
rename), so a crash during a save leaves the previous recovery file intact.

No Qt or napari here: the widgets call these functions from worker threads.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

ENV_VAR = "NAPARI_VIT3D_RECOVERY_DIR"


def recovery_dir() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-vit3d")) / "recovery"


def recovery_path(scan_hash: str) -> Path:
    return recovery_dir() / f"{scan_hash[:32]}.npz"


def save_recovery(scan_hash: str, labels_display: np.ndarray, info: dict) -> Path:
    """Write the labels (napari display order) and a small JSON ``info`` atomically."""
    folder = recovery_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = recovery_path(scan_hash)
    fd, tmp = tempfile.mkstemp(prefix=".recovery.", suffix=".npz", dir=str(folder))
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, labels=np.asarray(labels_display),
                                info=np.array(json.dumps({**info, "scan_hash": scan_hash})))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_recovery(scan_hash: str) -> tuple[np.ndarray, dict] | None:
    """(labels, info) saved for this scan, or None. A damaged file is ignored (and kept)."""
    path = recovery_path(scan_hash)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            labels = np.array(z["labels"])
            info = json.loads(str(z["info"]))
    except (OSError, ValueError, KeyError):
        return None
    if info.get("scan_hash") != scan_hash:
        return None
    return labels, info


def discard_recovery(scan_hash: str) -> None:
    try:
        recovery_path(scan_hash).unlink()
    except FileNotFoundError:
        pass
