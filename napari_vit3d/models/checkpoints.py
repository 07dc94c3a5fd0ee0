"""Safe checkpoint loading.

* ``.safetensors`` is read with :func:`safetensors.torch.load_file` (no code, only tensors).
* ``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin`` are read **only** with ``torch.load(weights_only=True)``. Pickles
  that need globals beyond tensors and containers are checked against a small allow-list of data-only
  numpy globals (scalars, dtypes, arrays — common in published checkpoints' ``epoch``/``best_metric``
  entries); anything else is refused with a :class:`~napari_vit3d.errors.CheckpointError` naming the
  file and the global. The pickle's code never runs.
* Wrappers (``{"state_dict": ...}``, ``model``, ``network``, ...) and ``module.`` prefixes (DataParallel)
  are unwrapped.
* :func:`apply_state_dict` is strict: missing, unexpected or mis-shaped keys raise a
  ``CheckpointError`` listing them.
* Weights holding NaN or Inf are refused (every output would be NaN: meaningless labels).
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..io.atomic import atomic_write
from ..io.atomic import sha256_file as file_sha256  # one home for file hashing (re-exported)

__all__ = ["load_state_dict", "apply_state_dict", "save_safetensors", "file_sha256", "PICKLE_SUFFIXES",
           "CONVERT_HINT"]

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")
SAFETENSORS_SUFFIXES = (".safetensors",)
#: keys under which training scripts nest the network's weights
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "network", "net", "module", "weights")
#: prefixes added by DataParallel / DistributedDataParallel / torch.compile
STRIP_PREFIXES = ("module.", "_orig_mod.")
#: prefixes that wrappers (Lightning modules, ...) put in front of the network's own keys; stripped only
#: when that makes the checkpoint match the network
OPTIONAL_PREFIXES = ("model.", "net.", "network.", "backbone.")

#: what to do with a refused pickle. It does not hand out a one-liner: converting means unpickling, which runs the
#: file's code, so it is only for a file whose source the user trusts, in a throwaway environment.
CONVERT_HINT = ("ask its author for a .safetensors file; converting it yourself runs its code, so only do that for a "
                "file from a source you trust, in an isolated throwaway environment (see docs/security.md)")

_NUMPY_SAFE = None
_MAX_LIST = 8


def _numpy_safe_globals() -> dict[str, object]:
    """Data-only numpy globals that ``weights_only`` rejects but which cannot run code."""
    global _NUMPY_SAFE
    if _NUMPY_SAFE is None:
        import numpy as np

        safe: dict[str, object] = {}
        try:
            from numpy._core import multiarray as _ma  # numpy ≥ 2
            modname = "numpy._core.multiarray"
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core import multiarray as _ma
            modname = "numpy.core.multiarray"
        for mod in (modname, "numpy.core.multiarray"):
            safe[f"{mod}.scalar"] = _ma.scalar
            safe[f"{mod}._reconstruct"] = _ma._reconstruct
        safe["numpy.dtype"] = np.dtype
        safe["numpy.ndarray"] = np.ndarray
        for name in dir(np.dtypes):
            obj = getattr(np.dtypes, name)
            if isinstance(obj, type) and name.endswith("DType"):
                safe[f"numpy.dtypes.{name}"] = obj
        _NUMPY_SAFE = safe
    return _NUMPY_SAFE


def _refuse(path: Path, bad: list[str]) -> CheckpointError:
    return CheckpointError(
        f"{path}: refused to load: the pickle needs {', '.join(bad[:_MAX_LIST])}, which could run code; only "
        f"tensors and plain data are loaded; {CONVERT_HINT}")


def _unsafe_globals(path: Path, exc: Exception) -> list[str]:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (RuntimeError, ValueError, OSError, pickle.UnpicklingError):  # legacy (non-zip) format: read the error
        names = []
    if not names:
        names = re.findall(r"(?:Unsupported global: GLOBAL|Unsupported class|GLOBAL) ([\w.]+)", str(exc))
    if not names:
        names = ["an unsupported object"]
    return list(dict.fromkeys(names))


def _torch_load(path: Path) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        if isinstance(exc, RuntimeError) and "weights_only" not in str(exc) and "Unpickl" not in str(exc):
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({str(exc).splitlines()[0]})") from None
        first_exc = exc
    bad = _unsafe_globals(path, first_exc)
    allowed = _numpy_safe_globals()
    if all(b in allowed for b in bad):
        try:
            with torch.serialization.safe_globals([(obj, name) for name, obj in allowed.items()]):
                return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # needs more than the first round reported
            bad = [b for b in _unsafe_globals(path, exc) if b not in allowed] or bad
        except Exception as exc:  # noqa: BLE001 - a corrupt file fails anywhere in torch's loader: one line
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({str(exc).splitlines()[0]})") from None
        if all(b in allowed for b in bad):  # pragma: no cover - defensive: torch refused an allowed global
            raise CheckpointError(f"{path}: refused to load ({str(first_exc).splitlines()[0]})")
    raise _refuse(path, [b for b in bad if b not in allowed] or bad)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(4):
        if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
        else:
            break
    if isinstance(obj, nn.Module):  # pragma: no cover - weights_only never yields modules
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: no weights found (expected a dict of tensors, maybe under "
                              f"'state_dict' or 'model'; got {type(obj).__name__})")
    out: dict[str, torch.Tensor] = {}
    bad = []
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[str(k)] = v
        else:
            try:
                import numpy as np
                if isinstance(v, np.ndarray):
                    out[str(k)] = torch.from_numpy(v)
                    continue
            except ImportError:  # pragma: no cover
                pass
            bad.append(str(k))
    if bad:
        raise CheckpointError(f"{path}: entries are not tensors: {_fmt(bad)}; is this a training checkpoint? "
                              f"its weights should be under one of {', '.join(WRAPPER_KEYS)}")
    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    _refuse_non_finite(out, path)
    return out


def _refuse_non_finite(state: dict[str, torch.Tensor], path) -> None:
    """NaN/Inf weights make every output NaN (the labels would be arbitrary): refuse them, naming the tensors."""
    bad = [k for k, v in state.items() if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN or Inf values ({_fmt(bad)}); the "
                              "checkpoint is broken (a diverged training run?) and would give meaningless labels")


def load_state_dict(path) -> dict[str, torch.Tensor]:
    """Read a checkpoint's weights safely (see module docstring); always on CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None
    elif suffix in PICKLE_SUFFIXES:
        obj = _torch_load(path)
    else:
        raise CheckpointError(f"{path}: unknown checkpoint type {suffix!r}; use .safetensors "
                              f"(preferred) or one of {', '.join(PICKLE_SUFFIXES)}")
    return _unwrap(obj, path)


def _fmt(keys: list[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_MAX_LIST])
    return shown + (f" … (+{len(keys) - _MAX_LIST} more)" if len(keys) > _MAX_LIST else "")


_CROSS_ATTN = re.compile(r"(^|\.)blocks\.\d+\.cross_attn\.")


def _diff(expected: dict, state: dict):
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
              if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    return missing, unexpected, shapes


def apply_state_dict(network: nn.Module, state: dict[str, torch.Tensor], *, source: str = "checkpoint") -> nn.Module:
    """Load ``state`` into ``network`` strictly; raise :class:`CheckpointError` listing every mismatch.

    Known harmless differences are repaired with a warning: unused cross-attention weights that
    MONAI 1.4–1.5 stored in every ``TransformerBlock`` (``blocks.N.cross_attn.*``), a wrapper prefix
    such as ``model.`` when stripping it makes the keys match, and missing BatchNorm
    ``num_batches_tracked`` counters.
    """
    expected = network.state_dict()
    state = dict(state)
    stale = [k for k in state if k not in expected and _CROSS_ATTN.search(k)]
    if stale:
        warnings.warn(f"{source}: dropped {len(stale)} unused cross-attention weights saved by MONAI 1.4–1.5 "
                      f"(e.g. {stale[0]})", stacklevel=2)
        for k in stale:
            del state[k]
    if any(k not in expected for k in state):
        for prefix in OPTIONAL_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                stripped = {k[len(prefix):]: v for k, v in state.items()}
                if sum(k in expected for k in stripped) > sum(k in expected for k in state):
                    state = stripped
                    break
    missing, unexpected, shapes = _diff(expected, state)
    counters = [k for k in missing if k.endswith("num_batches_tracked")]
    for k in counters:
        state[k] = expected[k].clone()
    missing = [k for k in missing if k not in counters]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_fmt(unexpected)}")
        if shapes:
            parts.append(f"wrong shape {len(shapes)} (checkpoint vs model): {_fmt(shapes)}")
        raise CheckpointError(f"{source} does not match the {type(network).__name__} architecture: "
                              + "; ".join(parts))
    network.load_state_dict(state, strict=True)
    return network


def save_safetensors(network_or_state, path, *, metadata: dict[str, str] | None = None) -> Path:
    """Save a network's (or a state dict's) tensors to ``path`` as safetensors, atomically; returns the path."""
    from safetensors.torch import save_file

    state = network_or_state.state_dict() if isinstance(network_or_state, nn.Module) else network_or_state
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), suffix=".safetensors")
