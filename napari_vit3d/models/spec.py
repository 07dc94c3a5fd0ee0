"""``ModelSpec``: everything inference needs to run a model on a scan, as plain data.

A spec is stored as JSON beside its weights (``<name>.json`` + ``<name>.safetensors``) and is what
``napari-vit3d models --card`` prints. Spacing and ROI are in the model's canonical orientation
(RAS: axis 0 = R, 1 = A, 2 = S).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ModelError

ARCHITECTURES = ("unetr", "swin_unetr", "segformer3d", "vit_seg", "monai_bundle", "identity")


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
    #: weights file, relative to the spec file's folder (or absolute); None = random init
    weights: str | None = None
    description: str = ""
    card: str | None = None
    #: filled in by the registry: the folder the spec was read from
    root: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ModelError(f"model {self.name!r}: unknown architecture {self.architecture!r}; known: {', '.join(ARCHITECTURES)}")
        self.channel_names = tuple(self.channel_names)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.roi_size = tuple(int(s) for s in self.roi_size)
        self.labels = tuple(l if isinstance(l, LabelInfo) else LabelInfo(int(l["index"]), str(l["name"]),
                                                                         tuple(float(c) for c in l.get("color", (1, 1, 1, 1))))
                            for l in self.labels)
        self.arch_kwargs = dict(self.arch_kwargs)
        if self.architecture == "segformer3d":
            # the attention scale changes the outputs of trained weights: always record it
            self.arch_kwargs.setdefault("attn_scale", "head_dim")
        if len(self.channel_names) != self.in_channels:
            raise ModelError(f"model {self.name!r}: {self.in_channels} input channels but {len(self.channel_names)} channel names")

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @property
    def weights_path(self) -> Path | None:
        if self.weights is None:
            return None
        p = Path(self.weights)
        return p if p.is_absolute() or self.root is None else Path(self.root) / p

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("root", None)
        return d

    @classmethod
    def from_dict(cls, d: dict, root: str | None = None) -> "ModelSpec":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ModelError(f"model spec has unknown keys: {', '.join(sorted(unknown))}")
        try:
            return cls(**{**d, "root": root})
        except TypeError as exc:
            raise ModelError(f"invalid model spec: {exc}") from None

    @classmethod
    def from_json(cls, path) -> "ModelSpec":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: cannot read model spec ({exc})") from None
        return cls.from_dict(d, root=str(path.parent))

    def to_json(self, path) -> Path:
        """Write the spec as JSON (atomically) to ``path``."""
        from ..io.atomic import write_json_atomic

        return write_json_atomic(path, self.to_dict())
