"""Model registry: build networks from specs, find specs by name or path, load models safely.

Where models come from:

* **bundled** specs: ``napari_vit3d/resources/models/*.json`` (weights beside them);
* **user-added** models: ``add_model(path)`` records a spec file, a checkpoint with a spec beside it, or
  a MONAI bundle folder in ``<config dir>/models.json``. The config dir is ``$NAPARI_VIT3D_CONFIG_DIR``
  if set, else ``$XDG_CONFIG_HOME/napari-vit3d`` (``~/.config/napari-vit3d``; ``%APPDATA%\\napari-vit3d``
  on Windows);
* any **path** given directly: a spec ``.json``, a checkpoint (``model.safetensors`` with ``model.json``
  beside it), or a bundle folder.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, ModelWarning, UntrustedCodeError, Vit3dError
from ..io.atomic import write_json_atomic
from .architectures import check_window, get_architecture
from .devices import resolve_device
from .spec import ModelSpec

__all__ = ["build_network", "list_models", "get_spec", "add_model", "remove_model", "default_model_name",
           "load_model", "LoadedModel", "config_dir", "bundled_models_dir", "ModelEntry", "IdentityNet",
           "CHECKPOINT_SUFFIXES", "check_model_memory", "parameter_count"]

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
REGISTRY_FILE = "models.json"


# --------------------------------------------------------------------------------------------- networks

class IdentityNet(nn.Module):
    """A pass-through "model" for geometry tests: its logits reproduce its input.

    With as many output as input channels it returns the input unchanged. With one input channel and
    ``out_channels`` classes it treats the input as a label map and returns a one-hot encoding of
    ``round(x)`` (clamped to the classes) as logits, so ``argmax`` gives the input mask back.
    """

    def __init__(self, *, in_channels: int = 1, out_channels: int = 2):
        super().__init__()
        if in_channels != out_channels and in_channels != 1:
            raise ModelError("identity model: needs in_channels == out_channels or a single input channel")
        self.in_channels, self.out_channels = in_channels, out_channels

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == self.out_channels:
            return x.clone()
        idx = x[:, 0].round().clamp(0, self.out_channels - 1).long()
        return torch.nn.functional.one_hot(idx, self.out_channels).movedim(-1, 1).to(x.dtype)


def _out_channels(spec: ModelSpec, kwargs: dict) -> int:
    out = kwargs.pop("out_channels", None)
    if out is None:
        if not spec.labels:
            raise ModelError(f"model {spec.name!r}: no labels and no out_channels in arch_kwargs")
        return spec.n_classes
    if spec.labels and int(out) != spec.n_classes:
        raise ModelError(f"model {spec.name!r}: arch_kwargs out_channels={out} but {spec.n_classes} labels")
    return int(out)


def build_network(spec: ModelSpec, *, trust_bundle: bool = False) -> nn.Module:
    """A freshly initialised network for ``spec`` (no weights loaded), constructed with keywords only.

    The builder and the window rules come from the architecture's record (``models.architectures``). A MONAI
    bundle's network comes from its config, which is code: ``trust_bundle`` as in :func:`load_model`."""
    kwargs = dict(spec.arch_kwargs)
    arch = get_architecture(spec.architecture)
    in_ch = int(kwargs.pop("in_channels", spec.in_channels))
    if in_ch != spec.in_channels:
        raise ModelError(f"model {spec.name!r}: arch_kwargs in_channels={in_ch} but in_channels={spec.in_channels}")
    if arch.external:
        from .bundle import load_bundle

        if spec.root is None:
            raise ModelError(f"model {spec.name!r}: a monai_bundle spec needs its bundle folder")
        return load_bundle(spec.root, weights=False, trust=trust_bundle).network
    out_ch = _out_channels(spec, kwargs)
    check_window(spec, spec.roi_size)
    try:
        return arch.build(spec, in_ch, out_ch, kwargs)
    except TypeError as exc:
        raise ModelError(f"model {spec.name!r}: invalid arch_kwargs for {arch.name}: {exc}") from None
    except (ValueError, AssertionError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"model {spec.name!r}: cannot build {arch.name}: {exc}") from None


class _SkipInPlaceOnMeta(torch.overrides.TorchFunctionMode):
    """Inside a shape-only build: in-place tensor methods (``erfinv_``, ``normal_``, ``uniform_``, …) on meta
    tensors do nothing. They would only fill values a meta tensor does not have, and PyTorch runs several of
    them (MONAI's ``trunc_normal_`` of the ViT position embedding) through ``torch._refs``, which imports
    ``torch._dynamo`` on first use: about 2 s of a one-click run with ``dino-vit-brain`` or UNETR."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if (name.endswith("_") and not name.endswith("__") and args and isinstance(args[0], torch.Tensor)
                and args[0].is_meta):
            return args[0]
        return func(*args, **(kwargs or {}))


def parameter_count(spec: ModelSpec) -> int | None:
    """How many parameters ``spec``'s network has, counted on PyTorch's ``meta`` device (no memory is
    allocated, nothing is computed, in-place initialisation skipped); None for bundles and for builders
    that cannot run there."""
    arch = get_architecture(spec.architecture)
    if arch.external:
        return None
    try:
        with torch.device("meta"), _SkipInPlaceOnMeta():
            net = build_network(spec)
    except ModelError:
        raise
    except Exception:  # noqa: BLE001 - a builder that needs real tensors (e.g. .item()): unknown, not an error
        return None
    return int(sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers()))


def check_model_memory(spec: ModelSpec, *, available: int | None = None) -> int | None:
    """Refuse (``ResourceLimitError``) a model whose weights would not fit in memory, before building it.

    Loading holds the network and the checkpoint's tensors at once: 2 × 4 bytes per parameter."""
    from ..io.memory import check_memory_request

    n = parameter_count(spec)
    if n is None:
        return None
    check_memory_request(8 * n, what=f"model {spec.name!r} ({n / 1e6:,.0f} M parameters)", available=available,
                         change="use a smaller model (its spec's arch_kwargs: embed_dims, hidden_size, feature_size, "
                                "depths)")
    return n


# --------------------------------------------------------------------------------------------- registry

def config_dir() -> Path:
    env = os.environ.get("NAPARI_VIT3D_CONFIG_DIR")
    if env:
        return Path(env)
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "napari-vit3d"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "napari-vit3d"


def bundled_models_dir() -> Path:
    return Path(str(resources.files("napari_vit3d") / "resources" / "models"))


@dataclass
class ModelEntry:
    """One row of ``list_models()``."""

    name: str
    source: str  # "bundled" | "user"
    path: str  # spec json or bundle folder
    spec: ModelSpec | None = None
    error: str | None = None
    is_default: bool = False
    extra: dict = field(default_factory=dict)


def _bundled_specs() -> dict[str, Path]:
    d = bundled_models_dir()
    if not d.is_dir():
        return {}
    out = {}
    for p in sorted(d.glob("*.json")):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            out[p.stem] = p  # listed as broken
            continue
        if isinstance(data, dict) and "architecture" in data:  # other JSON (metrics, logs) is not a spec
            out[str(data.get("name") or p.stem)] = p
    return out


def _registry_path() -> Path:
    return config_dir() / REGISTRY_FILE


def _read_registry() -> dict[str, dict]:
    """The user-added models; a corrupt ``models.json`` is set aside (``models.json.corrupt-<time>``) with a
    :class:`~napari_vit3d.errors.ModelWarning`, so the bundled models are still listed."""
    from ..io.atomic import read_json_record

    data = read_json_record(_registry_path(), what="the model registry", warning=ModelWarning)
    models = data.get("models", {})
    if not isinstance(models, dict):
        return {}
    return {str(k): v for k, v in models.items() if isinstance(v, dict) and "path" in v}


def _write_registry(models: dict[str, dict]) -> None:
    p = _registry_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(p, {"version": 1, "models": models})


def _spec_from_path(path: Path) -> ModelSpec:
    from .bundle import bundle_spec, is_bundle

    if path.is_dir():
        if is_bundle(path):
            return bundle_spec(path)
        raise ModelError(f"{path}: a folder is only accepted as a MONAI bundle (configs/inference.json missing)")
    suffix = path.suffix.lower()
    if suffix == ".json":
        if path.parent.name == "configs" and is_bundle(path.parent.parent):  # a bundle's inference.json
            return bundle_spec(path.parent.parent)
        spec = ModelSpec.from_json(path)
        spec.root = str(path.resolve().parent)
        return spec
    if suffix in CHECKPOINT_SUFFIXES:
        beside = path.with_suffix(".json")
        if not beside.is_file():
            raise ModelError(f"{path}: a checkpoint needs a model spec beside it ({beside.name}); "
                             "see docs/models.md for the format")
        spec = ModelSpec.from_json(beside)
        spec.root = str(beside.resolve().parent)
        spec.weights = str(path.resolve())
        return spec
    raise ModelError(f"{path}: not a model spec (.json), checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) "
                     "or MONAI bundle folder")


def _looks_like_path(s: str) -> bool:
    return os.sep in s or "/" in s or s.lower().endswith((".json",) + CHECKPOINT_SUFFIXES)


def get_spec(name_or_path) -> ModelSpec:
    """A spec from a registered name, a spec ``.json``, a checkpoint with a spec beside it, or a bundle folder."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    s = str(name_or_path)
    path = Path(s).expanduser()
    if path.exists():
        return _spec_from_path(path)
    bundled = _bundled_specs()
    if s in bundled:
        return _spec_from_path(bundled[s])
    user = _read_registry()
    if s in user:
        p = Path(user[s]["path"])
        if not p.exists():
            raise ModelError(f"model {s!r} was added from {p}, which no longer exists; "
                             f"re-add it or remove it from {_registry_path()}")
        spec = _spec_from_path(p)
        spec.name = s
        return spec
    if isinstance(name_or_path, Path) or _looks_like_path(s):
        raise ModelError(f"{s}: no such file or folder")
    known = sorted(set(bundled) | set(user))
    raise ModelError(f"unknown model {s!r}; known: {', '.join(known) if known else 'none'} "
                     "(or pass a spec .json, checkpoint or bundle folder)")


def default_model_name() -> str:
    """The bundled model whose spec has ``"extra": {"default": true}``."""
    for name, path in _bundled_specs().items():
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("extra", {}).get("default") is True:
                return name
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            continue
    raise ModelError("no bundled default model yet; pass --model (a registered name, a spec .json, a checkpoint "
                     "or a MONAI bundle folder; `napari-vit3d models` lists what is registered)")


def list_models() -> list[ModelEntry]:
    """Bundled then user-added models. A broken entry is listed with its ``error`` instead of raising."""
    try:
        default = default_model_name()
    except ModelError:
        default = None
    entries = []
    for name, path in _bundled_specs().items():
        entries.append(_entry(name, "bundled", path, default))
    for name, rec in sorted(_read_registry().items()):
        entries.append(_entry(name, "user", Path(rec["path"]), None))
    return entries


def _entry(name: str, source: str, path: Path, default: str | None) -> ModelEntry:
    try:
        spec = _spec_from_path(path)
        if source == "user":
            spec.name = name
        return ModelEntry(name, source, str(path), spec=spec, is_default=(name == default))
    except Exception as exc:  # noqa: BLE001 - listing must show broken entries, not crash
        return ModelEntry(name, source, str(path), error=str(exc), is_default=(name == default))


def add_model(path, name: str | None = None, *, replace: bool = False, trust_bundle: bool = False) -> ModelSpec:
    """Register a spec file, a checkpoint with a spec beside it, or a bundle folder under ``name``.

    The model is test-loaded first (built and its weights loaded, on the CPU); one that does not load is
    refused with the reason. A MONAI bundle's config is code, so adding one needs ``trust_bundle=True``
    (which records its content hash as trusted, :func:`napari_vit3d.models.trust.trust_bundle`) unless
    its current content is trusted already."""
    path = Path(path).expanduser()
    try:
        path = path.resolve()
        exists = path.exists()
    except (OSError, RuntimeError) as exc:  # a link loop
        raise ModelError(f"{path}: cannot be resolved ({exc})") from None
    if not exists:
        raise ModelError(f"{path}: no such file or folder")
    spec = _spec_from_path(path)
    if spec.weights_path is not None and not spec.weights_path.is_file():
        raise ModelError(f"model {spec.name!r}: weights file {spec.weights_path} not found")
    name = name or spec.name
    if not name or any(c in name for c in "/\\") or name.strip() != name:
        raise ModelError(f"invalid model name {name!r}: no slashes or surrounding spaces")
    if name in _bundled_specs():
        raise ModelError(f"model name {name!r} is taken by a bundled model; pass --name")
    models = _read_registry()
    if name in models and not replace and Path(models[name]["path"]) != path:
        raise ModelError(f"a model named {name!r} is already registered ({models[name]['path']}); pass --name")
    _test_load(spec, path, trust_bundle)
    if spec.architecture == "monai_bundle" and trust_bundle:
        from .trust import trust_bundle as record_trust

        record_trust(spec.root)
    models[name] = {"path": str(path), "architecture": spec.architecture}
    _write_registry(models)
    spec.name = name
    return spec


def _test_load(spec: ModelSpec, path: Path, trust_bundle: bool) -> None:
    """Build ``spec`` and load its weights on the CPU; refuse with one line when that fails."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no weights: using a random initialisation")
        try:
            load_model(spec, "cpu", trust_bundle=trust_bundle)
        except UntrustedCodeError:
            raise UntrustedCodeError(
                f"{path}: not added: adding a MONAI bundle test-loads it, and its config is code that has not been "
                f"trusted (nothing of it ran); review what it runs (napari-vit3d models --card {path}), then add it "
                "with --trust-bundle (docs/security.md)") from None
        except Vit3dError as exc:
            raise type(exc)(f"{path}: not added, it does not load: {exc}") from None
        except (RuntimeError, ValueError, TypeError, MemoryError) as exc:  # a builder's own failure: one line
            raise ModelError(f"{path}: not added, it does not load: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def remove_model(name: str) -> None:
    models = _read_registry()
    if name not in models:
        raise ModelError(f"no user-added model named {name!r}")
    del models[name]
    _write_registry(models)


# --------------------------------------------------------------------------------------------- loading

@dataclass
class LoadedModel:
    """A network ready for inference: eval mode, on ``device``, with its spec and weights' hash."""

    network: nn.Module
    spec: ModelSpec
    weights_sha256: str | None
    device: Any = "cpu"
    #: for MONAI bundles: the :class:`~napari_vit3d.models.bundle.BundleModel` (preprocessing, inferer, ...)
    bundle: Any = None

    @property
    def name(self) -> str:
        return self.spec.name


def load_model(spec_or_name_or_path, device="cpu", *, trust_bundle: bool = False) -> LoadedModel:
    """Build the network for a spec / name / path and load its weights safely (strict).

    A MONAI bundle's config is code and is only evaluated when the bundle is trusted: ``trust_bundle=True``
    for this call (the CLI's ``--trust-bundle``) or its content hash recorded
    (:func:`napari_vit3d.models.trust.trust_bundle`); otherwise
    :class:`~napari_vit3d.errors.UntrustedCodeError` before anything runs. Our own architectures are
    checked against the memory available before they are built (:func:`check_model_memory`)."""
    from .checkpoints import apply_state_dict, file_sha256, load_state_dict

    spec = get_spec(spec_or_name_or_path)
    device = resolve_device(device)
    if spec.architecture == "monai_bundle":
        from .bundle import load_bundle

        if spec.root is None:
            raise ModelError(f"model {spec.name!r}: a monai_bundle spec needs its bundle folder")
        bundle = load_bundle(spec.root, device=device, trust=trust_bundle)
        wpath = bundle.spec.weights_path
        bundle.spec.name = spec.name
        return LoadedModel(bundle.network, bundle.spec, file_sha256(wpath) if wpath else None, device, bundle)
    check_model_memory(spec)
    network = build_network(spec)
    wpath = spec.weights_path
    digest = None
    if wpath is None:
        warnings.warn(f"model {spec.name!r} has no weights: using a random initialisation", stacklevel=2)
    else:
        apply_state_dict(network, load_state_dict(wpath), source=str(wpath))
        digest = file_sha256(wpath)
    network = network.to(device).eval()
    return LoadedModel(network, spec, digest, device)
