"""Helpers shared by the command modules (one home: not copied into each command).

Outputs of a command are handled as one transaction:

1. :func:`check_output_paths` validates **all** of them before any slow work: NIfTI names, not an input
   (by path, through a symbolic link or as a hard link to the same inode), not used twice, the folder exists
   and a file can really be created there, and no existing sidecar (a file the user did not name, such as
   explain's ``X.json``) is replaced unless it is the command's own or ``--overwrite`` is given;
2. the command writes inside :func:`outputs_transaction` (``io.atomic.output_transaction``): every file is
   written to a temporary beside its target, and all targets are replaced together at the end, or none
   (an error, Ctrl-C, SIGTERM or SIGHUP removes the temporaries and leaves every target as it was).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import FileWriteError, VolumeError

__all__ = ["TRUST_BUNDLE_HELP", "add_trust_option", "check_output_paths", "model_files", "outputs_transaction",
           "safe_resolve"]

TRUST_BUNDLE_HELP = ("run a MONAI bundle's config for this run: it is code (Python expressions, imports of any "
                     "module), so only for a bundle you reviewed and trust (docs/security.md); to record trust, "
                     "use `napari-vit3d models --add BUNDLE --trust-bundle`")


def add_trust_option(parser) -> None:
    parser.add_argument("--trust-bundle", action="store_true", help=TRUST_BUNDLE_HELP)


def safe_resolve(path, what: str = "") -> Path:
    """``Path(path).resolve()``, with a symbolic-link loop (a ``RuntimeError`` in Python) as one plain line."""
    p = Path(os.fsdecode(path))
    try:
        return p.resolve()
    except RuntimeError:
        raise VolumeError(f"{p}: is a symbolic link loop{f' ({what})' if what else ''}") from None
    except OSError as exc:
        raise VolumeError(f"{p}: cannot be resolved ({exc.strerror or exc})") from None


def _inode(path: Path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _probe_folder(folder: Path, out: Path) -> None:
    """Create and remove a file in ``folder``: the only test of writability that root, ACLs and read-only
    mounts all answer truthfully."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".napari-vit3d-probe-", dir=str(folder))
    except OSError as exc:
        raise FileWriteError(f"{out}: folder {folder} is not writable ({exc.strerror or exc}); nothing was "
                             "started") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_output_paths(input_path, outputs, *, inputs: Iterable = (), extra: Iterable = (),
                       sidecars: Iterable[tuple[object, Callable[[Path], bool] | None]] = (),
                       overwrite: bool = False, label_outputs: Iterable = ()) -> list[Path]:
    """Refuse, before any slow work, outputs that cannot or must not be written (see the module docstring).

    ``outputs``: NIfTI files the user named (None entries are skipped; they may replace existing files);
    ``label_outputs``: those of ``outputs`` that are label maps, which may also be any format
    ``io.formats.write_labels_as`` writes (``.seg.nrrd``, ``.nrrd``, ``.mha``, ``.dcm``);
    ``extra``: other files the user named (JSON statistics, …); ``sidecars``: ``(path, owned)`` files the
    command writes without being asked by name: an existing one is only replaced when ``owned(path)`` says it
    is the command's own, or with ``overwrite``; ``inputs``: files besides ``input_path`` (masks, the model's
    spec and weights, …) that must never be written over. Returns ``outputs`` as Paths.
    """
    from ..io.formats import output_format
    from ..io.nifti import is_nifti_path

    label_names = {Path(os.fsdecode(p)) for p in label_outputs if p}

    protected = [p for p in (input_path, *inputs) if p]
    guarded = []
    for p in protected:
        r = safe_resolve(p, "an input")
        guarded.append((Path(p), r, _inode(r)))
    named = [Path(os.fsdecode(p)) for p in outputs if p]
    others = [Path(os.fsdecode(p)) for p in extra if p]
    side = [(Path(os.fsdecode(p)), owned) for p, owned in sidecars if p]
    seen: dict[Path, Path] = {}
    folders: dict[Path, Path] = {}
    for out, kind in [(o, "nifti") for o in named] + [(o, "extra") for o in others] + [(o, "sidecar") for o, _ in side]:
        if kind == "nifti" and out in label_names:
            output_format(out, labels=True)  # a one-line error naming the label formats
        elif kind == "nifti" and not is_nifti_path(out):
            raise VolumeError(f"{out}: output must end in .nii or .nii.gz")
        r = safe_resolve(out, "an output")
        node = _inode(r)
        for given, real, inode in guarded:
            if r == real or (node is not None and node == inode):
                how = "" if r == real and out == given else (" (the same file through a link)" if r == real
                                                              else " (a hard link to it)")
                raise VolumeError(f"{out}: is the input {given}{how}; refusing to overwrite an input, choose another "
                                  "file name")
        if r in seen:
            also = "" if seen[r] == out else f" ({seen[r]})"
            raise VolumeError(f"{out}: this name is taken by another output{also}; each output needs its own file")
        seen[r] = out
        if r.is_dir():
            raise VolumeError(f"{out}: is a folder, not a file name")
        if not r.parent.is_dir():
            raise VolumeError(f"{out}: folder {out.parent} does not exist")
        folders.setdefault(r.parent, out)
    for out, owned in side:
        if os.path.lexists(out) and not overwrite and not (owned is not None and owned(out)):
            raise VolumeError(f"{out}: exists and was not written by this command for this output; refusing to replace "
                              "it (choose another -o, or pass --overwrite)")
    for folder, out in folders.items():
        _probe_folder(folder, out)
    return named


def model_files(model_ref) -> list[Path]:
    """The files a model reference reads (its spec file when given as a path, its weights): inputs that an output
    must never replace. Empty when the reference cannot be resolved (loading says why, later)."""
    from ..errors import Vit3dError
    from ..models.registry import get_spec

    files = []
    if model_ref and os.path.lexists(str(model_ref)):
        files.append(Path(str(model_ref)))
    try:
        spec = get_spec(model_ref)
        w = spec.weights_path
    except Vit3dError:
        return files
    if w is not None:
        files.append(w)
    return files


@contextlib.contextmanager
def outputs_transaction():
    """Every file written in the block is staged and all replace their targets together at its end (or none)."""
    from ..io.atomic import output_transaction

    with output_transaction() as tx:
        yield tx
