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

**Several outputs as one transaction.** Inside ``with output_transaction():`` every :func:`atomic_write`
(so every writer of the package) only *stages* its file: the temporary file is written and kept, and the
targets are replaced together when the block ends without an error. An error or an interrupt
(``KeyboardInterrupt``, and SIGTERM/SIGHUP once the CLI turns them into one) anywhere in the block removes
every temporary file and leaves every target as it was: a command's outputs appear all together or not
at all. The renames at the end run with SIGINT/SIGTERM/SIGHUP held back, so an interrupt cannot split them.

>>> with output_transaction():                                                        # doctest: +SKIP
...     write_labels("labels.nii.gz", ...)          # staged
...     write_image("probabilities.nii.gz", ...)    # staged; Ctrl-C here leaves labels.nii.gz untouched
... # both renamed into place here
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
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


class OutputTransaction:
    """Files staged by :func:`atomic_write` inside :func:`output_transaction`, replaced together at its end."""

    def __init__(self) -> None:
        self.staged: list[tuple[str, Path]] = []

    def stage(self, tmp: str, path: Path) -> None:
        for i, (old_tmp, old_path) in enumerate(self.staged):
            if old_path == path:  # written twice: the second version wins
                _unlink(old_tmp)
                del self.staged[i]
                break
        self.staged.append((tmp, path))

    def abort(self) -> None:
        """Remove every staged temporary file; no target is touched."""
        for tmp, _ in self.staged:
            _unlink(tmp)
        self.staged.clear()

    def commit(self) -> list[Path]:
        """Replace every target by its staged file (with interrupts held back); returns the targets."""
        done: list[Path] = []
        with _signals_held():
            try:
                for tmp, path in self.staged:
                    os.replace(tmp, path)
                    done.append(path)
            except OSError as exc:
                failed = self.staged[len(done)][1]
                self.staged = self.staged[len(done):]
                self.abort()
                raise _write_error(failed, exc) from None
        self.staged.clear()
        return done


_TRANSACTION: contextvars.ContextVar[OutputTransaction | None] = contextvars.ContextVar("vit3d_outputs", default=None)
_HELD = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM/SIGHUP (POSIX, main thread) while a few renames run; they arrive right after."""
    can = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD) if can else None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def output_transaction() -> Iterator[OutputTransaction]:
    """Stage every :func:`atomic_write` in the block; commit them together at its end, or none (module docstring)."""
    tx = OutputTransaction()
    token = _TRANSACTION.set(tx)
    try:
        yield tx
    except BaseException:
        tx.abort()
        raise
    else:
        tx.commit()
    finally:
        _TRANSACTION.reset(token)
        tx.abort()  # a commit that failed half way removes what it left


def _unlink(tmp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def atomic_write(path, writer: Callable[[str], Any], *, suffix: str = "") -> Path:
    """Write ``path`` atomically: ``writer(tmp)`` writes a temporary file that then replaces ``path``.

    ``suffix`` ends the temporary file's name (after ``.tmp``); give the real extension when the writer decides the
    format from it (``nib.save`` compresses ``.nii.gz``, ``np.savez`` appends ``.npz`` otherwise).
    The folder must exist (:class:`~napari_vit3d.errors.VolumeError` otherwise). On any error,
    including ``KeyboardInterrupt``, the temporary file is removed and ``path`` is left untouched; an
    ``OSError`` (no permission, disk full, name too long) becomes a one-line
    :class:`~napari_vit3d.errors.FileWriteError` (a ``Vit3dError`` that is still an ``OSError``).
    Inside :func:`output_transaction` the file is staged and replaces ``path`` when the transaction commits.
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
    tx = _TRANSACTION.get()
    try:
        writer(tmp)
        os.chmod(tmp, new_file_mode(path))
        if tx is not None:
            tx.stage(tmp, path)
        else:
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


def read_json_record(path, *, what: str, warning: type[Warning] = UserWarning) -> dict:
    """A JSON object the package keeps (the model registry, the trusted-bundles record): ``{}`` when the file is
    missing. A corrupt one (not JSON, not an object) is set aside as ``<name>.corrupt-<timestamp>`` with a
    warning, so the next write starts afresh and the old content is kept for the user to look at."""
    import time
    import warnings

    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        warnings.warn(f"{path}: cannot read {what} ({exc.strerror or exc}); using none", warning, stacklevel=3)
        return {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        data, problem = None, " ".join(str(exc).split())
    else:
        problem = None if isinstance(data, dict) else f"a JSON {type(data).__name__}, not an object"
    if problem is None:
        return data
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.replace(path, aside)
        where = f"moved it to {aside.name}"
    except OSError as exc:
        where = f"could not move it aside ({exc.strerror or exc})"
    warnings.warn(f"{path}: {what} is corrupt ({problem}); {where} and started a new one", warning, stacklevel=3)
    return {}


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


__all__ = ["OutputTransaction", "atomic_write", "jsonable", "new_file_mode", "output_transaction", "read_json_record",
           "sha256_file", "to_json", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]
