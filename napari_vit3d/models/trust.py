"""Trust for MONAI bundles: a bundle's config is code, and none of it runs until the user trusts it.

A bundle's ``configs/inference.json`` (or ``.yaml``) is evaluated by MONAI's ``ConfigParser``: strings
starting with ``$`` are Python expressions, ``_target_`` names any importable callable (``os.system``
included), ``_requires_`` runs before an instantiation, ``%`` macros read other files. So loading a
bundle (its ``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``) runs code from the
folder, and this package only does that for a bundle the user trusted:

* **for one run**: ``trust=True`` (the CLI's ``--trust-bundle``); nothing is recorded;
* **recorded**: :func:`trust_bundle` (``napari-vit3d models --add PATH --trust-bundle``) records the
  bundle's content hash in ``<config dir>/trusted_bundles.json`` (``models.registry.config_dir()``).

The content hash (:func:`bundle_digest`) is sha256 over every file under the bundle's ``configs/`` and
``scripts/`` folders (the Python a config may import), sorted by relative path, each contributing its
path and its own sha256; ``__pycache__`` is left out. Any change to a config makes the bundle untrusted
again. The trust check reads the files once and the parser is given exactly those bytes
(:func:`read_bundle_files`), so what was checked is what runs.

Listing a bundle and building its :class:`~napari_vit3d.models.spec.ModelSpec` never evaluate anything
(``models.bundle.bundle_spec`` reads literal values only). :func:`describe_bundle_code` lists what a
config would run, for the user to review (``napari-vit3d models --card BUNDLE``, the GUI's trust dialog).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..errors import ModelError, ModelWarning, UntrustedCodeError

__all__ = ["TRUST_FILE", "bundle_digest", "describe_bundle_code", "is_trusted", "read_bundle_files",
           "require_trust", "trust_bundle", "trusted_bundles_path"]

TRUST_FILE = "trusted_bundles.json"
#: the bundle folders whose files make up a bundle's content hash
HASHED_FOLDERS = ("configs", "scripts")
_CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
#: a single config or script file larger than this is refused (configs are text of a few kB)
MAX_FILE_BYTES = 16 * 1024**2
_MAX_SHOWN = 200


def trusted_bundles_path() -> Path:
    """``<config dir>/trusted_bundles.json`` (the config dir of :func:`napari_vit3d.models.registry.config_dir`)."""
    from .registry import config_dir

    return config_dir() / TRUST_FILE


def read_bundle_files(folder) -> dict[str, bytes]:
    """{relative posix path: bytes} of every file that makes up the bundle's content hash (sorted by path)."""
    folder = Path(folder)
    files: dict[str, bytes] = {}
    for sub in HASHED_FOLDERS:
        root = folder / sub
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*")):
            if "__pycache__" in p.parts or p.suffix == ".pyc" or p.is_dir():
                continue
            rel = p.relative_to(folder).as_posix()
            try:
                if p.stat().st_size > MAX_FILE_BYTES:
                    raise ModelError(f"{p}: {p.stat().st_size / 1024**2:.0f} MB is too large for a bundle config or "
                                     "script; refusing to read it")
                files[rel] = p.read_bytes()
            except OSError as exc:
                raise ModelError(f"{p}: cannot read the bundle file ({exc.strerror or exc})") from None
    return dict(sorted(files.items()))


def bundle_digest(folder=None, *, files: dict[str, bytes] | None = None) -> str:
    """sha256 content hash of a bundle's ``configs/`` and ``scripts/`` (see the module docstring)."""
    if files is None:
        files = read_bundle_files(folder)
    h = hashlib.sha256()
    for rel, data in sorted(files.items()):
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------- record

def _read_record() -> dict:
    from ..io.atomic import read_json_record

    data = read_json_record(trusted_bundles_path(), what="the trusted-bundles record", warning=ModelWarning)
    bundles = data.get("bundles") if isinstance(data, dict) else None
    return {str(k): v for k, v in bundles.items() if isinstance(v, dict)} if isinstance(bundles, dict) else {}


def is_trusted(folder=None, *, digest: str | None = None) -> bool:
    """Whether the bundle's current content hash (or ``digest``) is recorded as trusted."""
    return (digest or bundle_digest(folder)) in _read_record()


def trust_bundle(folder, *, digest: str | None = None) -> str:
    """Record the bundle's current content hash as trusted; returns the hash."""
    from ..io.atomic import write_json_atomic

    folder = Path(folder).resolve()
    digest = digest or bundle_digest(folder)
    record = _read_record()
    record[digest] = {"path": str(folder), "trusted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = trusted_bundles_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"version": 1, "bundles": record})
    return digest


def _trusted_before(folder: Path) -> bool:
    return any(Path(v.get("path", "")) == folder for v in _read_record().values())


def require_trust(folder, *, trust: bool = False, files: dict[str, bytes] | None = None,
                  how: str | None = None) -> str:
    """The bundle's content hash if it may run (``trust`` for this call, or recorded); else
    :class:`~napari_vit3d.errors.UntrustedCodeError` (one line: why, what it would run, how to trust it;
    ``how`` replaces the default advice: pass ``--trust-bundle`` or record the trust)."""
    folder = Path(folder).resolve()
    files = read_bundle_files(folder) if files is None else files
    digest = bundle_digest(files=files)
    if trust or is_trusted(digest=digest):
        return digest
    code = describe_bundle_code(folder, files=files)
    why = ("its config changed since it was trusted" if _trusted_before(folder) else "it has not been trusted")
    first = f"; e.g. {code[0]}" if code else ""
    how = how or (f"pass --trust-bundle for this run or record trust with napari-vit3d models --add {folder} "
                  "--trust-bundle")
    raise UntrustedCodeError(
        f"{folder}: refused to load this MONAI bundle: its config is code ({len(code)} expression(s) or "
        f"instantiation(s){first}) and {why}, so none of it was run. Review what it runs (napari-vit3d models --card "
        f"{folder}), then {how} (docs/security.md)")


# ----------------------------------------------------------------------------------------- describe

def _short(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN - 1] + "…"


def _walk(node, key: str, out: list[str], where: str) -> None:
    if isinstance(node, dict):
        target = node.get("_target_")
        for k, v in node.items():
            sub = f"{key}#{k}" if key else str(k)
            if k == "_target_":
                extra = ""
                if isinstance(v, str) and v.split(".")[-1] in ("Lambda", "Lambdad") and "func" in node:
                    extra = f" with func {_short(node['func'])}"
                out.append(f"{where} {sub}: instantiates {_short(v)}{extra}")
                continue
            if k == "_requires_":
                out.append(f"{where} {sub}: requires {_short(v)}")
                continue
            if k == "_mode_":
                out.append(f"{where} {sub}: calls in mode {_short(v)}")
                continue
            if k == "func" and isinstance(target, str) and target.split(".")[-1] in ("Lambda", "Lambdad"):
                if isinstance(v, str) and v.startswith("$"):
                    continue  # shown with its _target_
            _walk(v, sub, out, where)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk(v, f"{key}#{i}" if key else str(i), out, where)
    elif isinstance(node, str):
        if node.startswith("$"):
            out.append(f"{where} {key}: evaluates {_short(node)}")
        elif node.startswith("%"):
            out.append(f"{where} {key}: macro {_short(node)}")


def parse_config_bytes(rel: str, data: bytes):
    """A config file's content (JSON or YAML, safe loaders only); ModelError when it cannot be parsed."""
    try:
        text = data.decode("utf-8")
        if rel.lower().endswith(".json"):
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{rel}: cannot parse the bundle config ({' '.join(str(exc).split())[:200]})") from None
    except Exception as exc:  # noqa: BLE001 - yaml's errors have many types: one line
        raise ModelError(f"{rel}: cannot parse the bundle config ({' '.join(str(exc).split())[:200]})") from None


def describe_bundle_code(folder, *, files: dict[str, bytes] | None = None) -> list[str]:
    """What the bundle's configs would run, one line per entry, with its file and config key (MONAI id):
    every ``$`` expression, ``_target_`` (``Lambda``/``Lambdad`` with their ``func``), ``_requires_``,
    ``_mode_`` and ``%`` macro, plus the Python files under ``scripts/``. Nothing is evaluated.
    For the GUI's trust dialog and ``models --card``."""
    files = read_bundle_files(folder) if files is None else files
    out: list[str] = []
    for rel, data in files.items():
        if rel.lower().endswith(_CONFIG_SUFFIXES) and rel.startswith("configs/"):
            try:
                content = parse_config_bytes(rel, data)
            except ModelError as exc:
                out.append(f"{rel}: unreadable ({exc})")
                continue
            _walk(content, "", out, rel.removeprefix("configs/"))
        elif rel.endswith(".py"):
            out.append(f"{rel}: Python code a config may import")
    return out
