"""MONAI bundle folders: the bundle's own network, preprocessing, inferer and postprocessing.

A bundle folder holds ``configs/inference.json`` (or ``.yaml``/``.yml``), ``configs/metadata.json`` and
``models/model.pt`` (or ``models/model.safetensors``). **A bundle's config is code** (``$`` expressions,
``_target_``): :func:`bundle_spec` (listing, ``models --card``) reads literal values only and evaluates
nothing, and :func:`load_bundle` first requires trust (:mod:`.trust`: ``trust=True`` for one call, or the
bundle's content hash recorded as trusted), then parses exactly the bytes it checked with MONAI's
``ConfigParser``. ``network_def`` is built from it and its weights are loaded through our safe loader
(:mod:`.checkpoints`: ``weights_only=True``, strict key check), never through the bundle's own
``torch.load`` expressions. ``preprocessing``, ``inferer`` and ``postprocessing`` are instantiated on
first access, exactly as the bundle defines them. ``%`` macros that read other files are refused (what
they read is outside the trusted content).

Known stale argument: bundles written for MONAI < 1.5 pass ``img_size`` to ``SwinUNETR``; it is removed
from the config with a warning.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ModelError
from .spec import LabelInfo, ModelSpec

__all__ = ["BundleModel", "load_bundle", "bundle_spec", "is_bundle", "find_bundle_config", "find_bundle_weights",
           "raw_bundle_config"]

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
WEIGHT_NAMES = ("model.safetensors", "model.pt", "model.pth", "model.ckpt")
_PALETTE = [(1.0, 0.0, 0.0, 1.0), (0.0, 1.0, 0.0, 1.0), (0.0, 0.4, 1.0, 1.0), (1.0, 1.0, 0.0, 1.0),
            (1.0, 0.0, 1.0, 1.0), (0.0, 1.0, 1.0, 1.0), (1.0, 0.5, 0.0, 1.0), (0.6, 0.3, 1.0, 1.0)]


def find_bundle_config(folder) -> Path | None:
    configs = Path(folder) / "configs"
    return next((configs / n for n in CONFIG_NAMES if (configs / n).is_file()), None)


def find_bundle_weights(folder) -> Path | None:
    models = Path(folder) / "models"
    return next((models / n for n in WEIGHT_NAMES if (models / n).is_file()), None)


def is_bundle(path) -> bool:
    p = Path(path)
    return p.is_dir() and find_bundle_config(p) is not None


def _read_metadata(folder: Path) -> dict:
    meta = folder / "configs" / "metadata.json"
    if not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{meta}: cannot read bundle metadata ({exc})") from None


def _spatial_shape(v) -> tuple[int, int, int] | None:
    """A literal three-int shape (an expression or a reference is not evaluated: None)."""
    if isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(s, int) and not isinstance(s, bool)
                                                          for s in v):
        return tuple(v)
    return None


def raw_bundle_config(folder, files: dict[str, bytes] | None = None) -> dict:
    """The bundle's inference config as plain data (JSON / safe YAML), nothing evaluated."""
    from .trust import parse_config_bytes

    folder = Path(folder)
    cfg = find_bundle_config(folder)
    if cfg is None:
        raise ModelError(f"{folder}: not a MONAI bundle (no configs/inference.json or .yaml)")
    rel = cfg.relative_to(folder).as_posix()
    if files is not None and rel in files:
        data = files[rel]
    else:
        try:
            data = cfg.read_bytes()
        except OSError as exc:
            raise ModelError(f"{cfg}: cannot read the bundle config ({exc.strerror or exc})") from None
    content = parse_config_bytes(str(cfg), data)
    if not isinstance(content, dict):
        raise ModelError(f"{cfg}: a bundle config must be a mapping, got a {type(content).__name__}")
    return content


def bundle_spec(folder, *, parser=None) -> ModelSpec:
    """A :class:`ModelSpec` describing a bundle (architecture ``"monai_bundle"``), without building it and
    without evaluating anything of its config (see the module docstring).

    Labels come from ``metadata.json`` (``network_data_format.outputs.pred.channel_def``), channel names
    from ``inputs.image.channel_def``, the ROI from ``inputs.image.spatial_shape`` or the inferer's
    ``roi_size`` when it is a literal. ``parser`` is accepted for compatibility and not used.
    """
    folder = Path(folder).resolve()
    if not is_bundle(folder):
        raise ModelError(f"{folder}: not a MONAI bundle (no configs/inference.json or .yaml)")
    meta = _read_metadata(folder)
    fmt = meta.get("network_data_format", {}) if isinstance(meta, dict) else {}
    image = (fmt.get("inputs") or {}).get("image", {})
    pred = (fmt.get("outputs") or {}).get("pred", {})
    n_in = int(image.get("num_channels", 1) or 1)
    ch_def = image.get("channel_def") or {}
    channel_names = tuple(str(ch_def.get(str(i), ch_def.get(i, f"channel {i}"))) for i in range(n_in))
    labels = []
    for k, name in sorted(((int(k), v) for k, v in (pred.get("channel_def") or {}).items()), key=lambda t: t[0]):
        labels.append(LabelInfo(k, str(name), (0.0, 0.0, 0.0, 0.0) if k == 0 else _PALETTE[(k - 1) % len(_PALETTE)]))
    if not labels and pred.get("num_channels"):
        labels = [LabelInfo(i, "background" if i == 0 else f"class {i}",
                            (0.0, 0.0, 0.0, 0.0) if i == 0 else _PALETTE[(i - 1) % len(_PALETTE)])
                  for i in range(int(pred["num_channels"]))]
    roi = _spatial_shape(image.get("spatial_shape"))
    if roi is None:
        inferer = raw_bundle_config(folder).get("inferer")
        roi = _spatial_shape(inferer.get("roi_size")) if isinstance(inferer, dict) else None
    weights = find_bundle_weights(folder)
    extra = {"bundle_version": meta.get("version"), "monai_version": meta.get("monai_version")}
    return ModelSpec(
        name=str(meta.get("name") or folder.name),
        architecture="monai_bundle",
        arch_kwargs={},
        in_channels=n_in,
        channel_names=channel_names,
        normalization={"kind": "bundle"},
        roi_size=roi or (96, 96, 96),
        labels=tuple(labels),
        weights=str(weights.relative_to(folder)) if weights else None,
        description=str(meta.get("description", "")),
        card="docs/README.md" if (folder / "docs" / "README.md").is_file() else None,
        root=str(folder),
        extra={k: v for k, v in extra.items() if v is not None},
    )


def _fix_stale_args(parser, source: Path) -> None:
    net = parser.get("network_def")
    if isinstance(net, dict) and str(net.get("_target_", "")).split(".")[-1] == "SwinUNETR" and "img_size" in net:
        warnings.warn(f"{source}: dropped the SwinUNETR argument img_size={net['img_size']!r} "
                      "(removed in MONAI 1.5; the network accepts any input divisible by 32)", stacklevel=3)
        parser.set({k: v for k, v in net.items() if k != "img_size"}, "network_def")


_FILE_MACRO = re.compile(r"\.(json|ya?ml)\b", re.IGNORECASE)


def _refuse_file_macros(node, cfg: Path, key: str = "") -> None:
    """``%path/other.json#id`` reads another file while parsing: its content would not be the trusted one."""
    if isinstance(node, dict):
        for k, v in node.items():
            _refuse_file_macros(v, cfg, f"{key}#{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _refuse_file_macros(v, cfg, f"{key}#{i}" if key else str(i))
    elif isinstance(node, str) and node.startswith("%") and _FILE_MACRO.search(node):
        raise ModelError(f"{cfg}: {key} is a macro that reads another file ({node[:120]}); bundles are loaded from "
                         "their own inference config only")


def _make_parser(folder: Path, files: dict[str, bytes]):
    """MONAI's parser on the config content already read (and trusted): never re-read from disk."""
    from monai.bundle import ConfigParser

    cfg = find_bundle_config(folder)
    config = raw_bundle_config(folder, files)
    _refuse_file_macros(config, cfg)
    parser = ConfigParser()
    try:
        parser.read_config(config)
        meta = files.get("configs/metadata.json")
        if meta is not None:
            from .trust import parse_config_bytes

            meta_content = parse_config_bytes(str(folder / "configs" / "metadata.json"), meta)
            if isinstance(meta_content, dict):
                parser.read_meta(meta_content)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - MONAI's parser raises many types: one line
        raise ModelError(f"{cfg}: cannot parse the bundle config ({exc})") from None
    parser["bundle_root"] = str(folder)
    if "network_def" not in parser:
        raise ModelError(f"{cfg}: the bundle config has no 'network_def'")
    _fix_stale_args(parser, cfg)
    return parser


@dataclass
class BundleModel:
    """A loaded MONAI bundle. ``network`` is in eval mode with the bundle's weights."""

    network: Any
    spec: ModelSpec
    parser: Any
    folder: Path
    _cache: dict = field(default_factory=dict, repr=False)

    def _component(self, key: str):
        if key not in self._cache:
            self._cache[key] = self.parser.get_parsed_content(key) if key in self.parser else None
        return self._cache[key]

    @property
    def preprocessing(self):
        """The bundle's ``preprocessing`` transform (or None)."""
        return self._component("preprocessing")

    @property
    def inferer(self):
        """The bundle's ``inferer`` (or None)."""
        return self._component("inferer")

    @property
    def postprocessing(self):
        """The bundle's ``postprocessing`` transform (or None)."""
        return self._component("postprocessing")


def load_bundle(folder, *, device="cpu", weights: bool = True, trust: bool = False) -> BundleModel:
    """Parse and build a MONAI bundle folder; weights through the safe loader (strict).

    The config runs code, so the bundle must be trusted first: ``trust=True`` for this call, or its content
    hash recorded (:func:`.trust.trust_bundle`); otherwise :class:`~napari_vit3d.errors.UntrustedCodeError`
    and nothing of the config is evaluated."""
    from .checkpoints import apply_state_dict, load_state_dict
    from .trust import read_bundle_files, require_trust

    folder = Path(folder).resolve()
    if not is_bundle(folder):
        raise ModelError(f"{folder}: not a MONAI bundle (expected configs/inference.json or .yaml)")
    files = read_bundle_files(folder)
    require_trust(folder, trust=trust, files=files)
    spec = bundle_spec(folder)
    parser = _make_parser(folder, files)
    try:
        network = parser.get_parsed_content("network_def")
    except Exception as exc:  # noqa: BLE001 - the bundle's network code may raise anything: one line
        raise ModelError(f"{folder}: cannot build the bundle's network_def ({str(exc).splitlines()[0]})") from None
    if weights:
        wpath = spec.weights_path
        if wpath is None:
            raise CheckpointError(f"{folder}: the bundle has no weights (models/model.pt or models/model.safetensors)")
        apply_state_dict(network, load_state_dict(wpath), source=str(wpath))
    network = network.to(device).eval()
    return BundleModel(network=network, spec=spec, parser=parser, folder=folder)
