"""``ModelSpec``: everything inference needs to run a model on a scan, as plain data.

A spec is stored as JSON beside its weights (``<name>.json`` + ``<name>.safetensors``) and is what
``napari-vit3d models --card`` prints. Spacing and ROI are in the model's canonical orientation
(RAS: axis 0 = R, 1 = A, 2 = S).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ModelError
from .architectures import architecture_names, get_architecture


def _whole(v) -> int:
    """An integer from an int or a whole float (JSON has no integer type); anything else is refused."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v):
        raise ValueError(f"{v!r} is not an integer")
    return int(v)


#: spec fields that name files (relative to the spec's folder, and inside it)
FILE_FIELDS = ("weights", "card")


def _check_relative(name: str, key: str, value) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ModelError(f"model {name!r}: {key} must be a file name, got {value!r}")
    p = Path(value)
    if p.is_absolute() or p.drive or ".." in p.parts or "\\" in value:
        raise ModelError(f"model {name!r}: {key} {value!r} must name a file inside the spec's folder (no absolute "
                         "path, no '..')")


TISSUE_EM = "tissue_em"
TISSUE_EM_DEFAULTS = {"prior_power": 1.0, "iterations": 10, "sample": 200_000}


def _check_postprocess(name: str, postprocess: dict, label_indices, in_channels: int) -> dict:
    """Validate a spec's ``postprocess`` (``{}`` or ``{"tissue_em": {"labels": [...], ...}}``); returns it
    with defaults filled in. Any problem is one :class:`ModelError` line naming the model."""
    if not isinstance(postprocess, dict):
        raise ModelError(f"model {name!r}: postprocess must be an object such as "
                         '{"tissue_em": {"labels": [1, 2, 3]}}')
    unknown = set(postprocess) - {TISSUE_EM}
    if unknown:
        raise ModelError(f"model {name!r}: unknown postprocess step(s) {', '.join(sorted(map(str, unknown)))}; "
                         f"known: {TISSUE_EM}")
    if TISSUE_EM not in postprocess:
        return {}
    cfg = postprocess[TISSUE_EM]
    if not isinstance(cfg, dict) or "labels" not in cfg:
        raise ModelError(f"model {name!r}: postprocess.{TISSUE_EM} needs \"labels\" (the tissue label indices)")
    extra = set(cfg) - {"labels", *TISSUE_EM_DEFAULTS}
    if extra:
        raise ModelError(f"model {name!r}: postprocess.{TISSUE_EM} has unknown keys {', '.join(sorted(extra))}")
    try:
        labels = [int(v) for v in cfg["labels"]]
        out = {"labels": labels, **{k: type(v)(cfg.get(k, v)) for k, v in TISSUE_EM_DEFAULTS.items()}}
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {name!r}: invalid postprocess.{TISSUE_EM} ({exc})") from None
    known = {int(v) for v in label_indices}
    if len(labels) < 2 or len(set(labels)) != len(labels) or not set(labels) <= known:
        raise ModelError(f"model {name!r}: postprocess.{TISSUE_EM} labels {labels} must be two or more distinct "
                         f"label indices of the model ({sorted(known)})")
    if in_channels != 1:
        raise ModelError(f"model {name!r}: postprocess.{TISSUE_EM} works on one input channel, the model reads "
                         f"{in_channels}")
    if not (0 <= out["prior_power"] <= 10 and 1 <= out["iterations"] <= 100 and out["sample"] >= 1000):
        raise ModelError(f"model {name!r}: postprocess.{TISSUE_EM} needs 0 <= prior_power <= 10, "
                         "1 <= iterations <= 100, sample >= 1000")
    return {TISSUE_EM: out}


def _label(entry) -> LabelInfo:
    if not isinstance(entry, dict):
        raise ValueError(f"each label must be an object with index and name, got {entry!r}")
    color = tuple(float(c) for c in entry.get("color", (1, 1, 1, 1)))
    return LabelInfo(_whole(entry["index"]), str(entry["name"]), color)


@dataclass(frozen=True)
class LabelInfo:
    index: int
    name: str
    color: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)


@dataclass
class ModelSpec:
    name: str
    architecture: str
    arch_kwargs: dict = field(default_factory=dict)
    in_channels: int = 1
    channel_names: tuple[str, ...] = ("T1",)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    orientation: str = "RAS"
    #: {"kind": "zscore_nonzero" | "zscore" | "percentile" | "none", ...parameters}
    normalization: dict = field(default_factory=lambda: {"kind": "zscore_nonzero"})
    roi_size: tuple[int, int, int] = (96, 96, 96)
    labels: tuple[LabelInfo, ...] = ()
    #: weights file, relative to the spec file's folder and inside it (a spec read from a file may not name an
    #: absolute path, a ``..`` path or a link that leads out of its folder); None = random init
    weights: str | None = None
    description: str = ""
    #: model card (Markdown), relative to the spec's folder and inside it, like ``weights``
    card: str | None = None
    #: filled in by the registry: the folder the spec was read from
    root: str | None = None
    extra: dict = field(default_factory=dict)
    #: label post-processing on the scan grid (``inference.postprocess``): ``{}`` or
    #: ``{"tissue_em": {"labels": [1, 2, 3], "prior_power": 1.0, "iterations": 10, "sample": 200000}}``
    postprocess: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.architecture not in architecture_names():
            raise ModelError(f"model {self.name!r}: unknown architecture {self.architecture!r}; "
                             f"known: {', '.join(architecture_names())}")
        what = "channel_names"
        try:  # a hand-written spec can hold anything: every conversion failure is one plain line
            self.channel_names = tuple(str(c) for c in self.channel_names)
            what = "spacing"
            self.spacing = tuple(float(s) for s in self.spacing)
            if len(self.spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing):
                raise ValueError("expected three positive numbers (mm)")
            what = "roi_size"
            self.roi_size = tuple(_whole(s) for s in self.roi_size)
            if len(self.roi_size) != 3 or min(self.roi_size) <= 0:
                raise ValueError("expected three positive integers")
            what = "labels"
            self.labels = tuple(x if isinstance(x, LabelInfo) else _label(x) for x in self.labels)
            what = "arch_kwargs"
            self.arch_kwargs = dict(self.arch_kwargs)
            what = "normalization"
            if not isinstance(self.normalization, dict):
                raise ValueError("expected an object such as {\"kind\": \"zscore_nonzero\"}")
            what = "in_channels"
            self.in_channels = _whole(self.in_channels)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ModelError(f"model {self.name!r}: invalid {what} ({detail})") from None
        # e.g. SegFormer3D's attention scale: it changes the outputs of trained weights, so it is always recorded
        for key, value in get_architecture(self.architecture).spec_defaults.items():
            self.arch_kwargs.setdefault(key, value)
        if len(self.channel_names) != self.in_channels:
            raise ModelError(f"model {self.name!r}: {self.in_channels} input channels but "
                             f"{len(self.channel_names)} channel names")
        self.postprocess = _check_postprocess(self.name, self.postprocess, [lab.index for lab in self.labels],
                                              self.in_channels)

    @property
    def label_names(self) -> dict[int, str]:
        """``{index: name}`` of the model's labels."""
        return {int(lab.index): lab.name for lab in self.labels}

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def file_in_folder(self, field_name: str) -> Path | None:
        """The file a spec field (``weights``, ``card``) names, checked to lie inside the spec's folder.

        A relative name is taken in ``root`` and must stay there once links are followed (no ``..``, no
        link out); a :class:`ModelError` says so otherwise. An absolute path can only have been set by code
        (a spec read from a file may not hold one, see :meth:`from_dict`), e.g. the checkpoint a user
        passed on the command line, and is returned as it is.
        """
        value = getattr(self, field_name)
        if value is None:
            return None
        p = Path(value)
        if p.is_absolute() or self.root is None:
            return p
        _check_relative(self.name, field_name, value)
        root = Path(self.root)
        full = root / p
        try:
            inside = full.resolve().is_relative_to(root.resolve())
        except (OSError, RuntimeError) as exc:  # a link loop
            raise ModelError(f"model {self.name!r}: {field_name} {value!r} cannot be resolved ({exc})") from None
        if not inside:
            raise ModelError(f"model {self.name!r}: {field_name} {value!r} is a link that leads out of the spec's "
                             f"folder {root}; refused (copy the file into the folder)")
        return full

    @property
    def weights_path(self) -> Path | None:
        return self.file_in_folder("weights")

    @property
    def card_path(self) -> Path | None:
        """The model card file (inside the spec's folder), or None."""
        return self.file_in_folder("card")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("root", None)
        return d

    @classmethod
    def from_dict(cls, d: dict, root: str | None = None) -> ModelSpec:
        if not isinstance(d, dict):
            raise ModelError(f"a model spec must be a JSON object (name, architecture, labels, ...), "
                             f"got a {type(d).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = {str(k) for k in d} - known
        if unknown:
            raise ModelError(f"model spec has unknown keys: {', '.join(sorted(unknown))}")
        if root is not None:  # read from a file: the files it names must be inside its folder
            for key in FILE_FIELDS:
                if d.get(key) is not None:
                    _check_relative(str(d.get("name", "?")), key, d[key])
        try:
            return cls(**{**d, "root": root})
        except TypeError as exc:
            raise ModelError(f"invalid model spec: {exc}") from None

    @classmethod
    def from_json(cls, path) -> ModelSpec:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: cannot read model spec ({exc})") from None
        return cls.from_dict(d, root=str(path.parent))

    def to_json(self, path) -> Path:
        """Write the spec as JSON (atomically) to ``path``."""
        from ..io.atomic import write_json_atomic

        return write_json_atomic(path, self.to_dict())
