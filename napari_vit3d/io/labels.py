"""Label tables: index → name, colour, visibility; JSON and ITK-SNAP label description files.

A :class:`LabelTable` comes from a model spec's labels (:meth:`LabelTable.from_spec`), from the
values present in a label map (:meth:`LabelTable.default`), or from a file written by
:meth:`LabelTable.write_json` / :meth:`LabelTable.write_itksnap`. Colours are RGBA floats in [0, 1];
the ITK-SNAP file stores RGB as 0–255 integers and alpha as a 0–1 float, so colours survive a round
trip through it to 1/255.

ITK-SNAP label description format (one label per line, ``#`` starts a comment)::

    IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
      1   255    0    0  1.00   1   1   "Label 1"
"""

from __future__ import annotations

import colorsys
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import VolumeError
from .atomic import write_text_atomic

JSON_FORMAT = "napari-vit3d label table"
JSON_VERSION = 1

_ITK_LINE = re.compile(
    r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.eE+-]+)\s+([01])\s+([01])\s+"(.*)"\s*$')


def _palette(index: int) -> tuple[float, float, float, float]:
    """A fixed, distinct colour for a label index (golden-ratio hue steps); 0 is transparent black."""
    if index == 0:
        return (0.0, 0.0, 0.0, 0.0)
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75 if index % 2 else 0.95, 0.95 if index % 3 else 0.8)
    return (round(r, 4), round(g, 4), round(b, 4), 1.0)


@dataclass(frozen=True)
class LabelEntry:
    index: int
    name: str
    color: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    visible: bool = True
    mesh: bool = True

    def __post_init__(self):
        if int(self.index) < 0:
            raise VolumeError(f"label index must be >= 0, got {self.index}")
        col = tuple(float(c) for c in self.color)
        if len(col) == 3:
            col = col + (1.0,)
        if len(col) != 4 or not all(0.0 <= c <= 1.0 for c in col):
            raise VolumeError(f"label {self.index} ({self.name!r}): colour must be 3 or 4 values in [0, 1], "
                              f"got {self.color}")
        name = str(self.name)
        if "\n" in name or "\r" in name:
            raise VolumeError(f"label {self.index}: a name cannot contain a line break")
        object.__setattr__(self, "index", int(self.index))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "color", col)
        object.__setattr__(self, "visible", bool(self.visible))
        object.__setattr__(self, "mesh", bool(self.mesh))


@dataclass
class LabelTable:
    """An ordered set of :class:`LabelEntry`, unique by index."""

    entries: list[LabelEntry] = field(default_factory=list)

    def __post_init__(self):
        self.entries = sorted(self.entries, key=lambda e: e.index)
        seen = [e.index for e in self.entries]
        dup = {i for i in seen if seen.count(i) > 1}
        if dup:
            raise VolumeError(f"label table has duplicate indices: {sorted(dup)}")

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec) -> LabelTable:
        """From a :class:`~napari_vit3d.models.spec.ModelSpec` (or anything with ``.labels``)."""
        entries = [LabelEntry(lab.index, lab.name, tuple(lab.color)) for lab in spec.labels]
        if not any(e.index == 0 for e in entries):
            entries.append(LabelEntry(0, "background", _palette(0), visible=False, mesh=False))
        return cls(entries)

    @classmethod
    def default(cls, indices, names: dict | None = None) -> LabelTable:
        """Default names ("background", "label N") and palette colours for the given indices."""
        names = names or {}
        idx = sorted({int(i) for i in indices} | {0})
        return cls([LabelEntry(i, names.get(i, "background" if i == 0 else f"label {i}"), _palette(i),
                               visible=i != 0, mesh=i != 0) for i in idx])

    @classmethod
    def from_array(cls, labels: np.ndarray, names: dict | None = None) -> LabelTable:
        """Default table for the label values present in ``labels``."""
        return cls.default(np.unique(np.asarray(labels)).tolist(), names)

    # -- queries -------------------------------------------------------------------------------
    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)

    def __contains__(self, index) -> bool:
        return any(e.index == int(index) for e in self.entries)

    def __getitem__(self, index) -> LabelEntry:
        for e in self.entries:
            if e.index == int(index):
                return e
        raise KeyError(index)

    @property
    def indices(self) -> list[int]:
        return [e.index for e in self.entries]

    def name(self, index) -> str:
        return self[index].name if index in self else f"label {int(index)}"

    def color_dict(self) -> dict:
        """``{index: (r, g, b, a)}``, e.g. for a napari Labels layer colormap (plus ``None`` default)."""
        return {e.index: e.color for e in self.entries}

    def with_missing(self, indices) -> LabelTable:
        """This table plus default entries for any index in ``indices`` it lacks."""
        extra = sorted({int(i) for i in indices} - set(self.indices))
        added = [e for e in LabelTable.default(extra).entries if e.index in extra]
        return LabelTable(list(self.entries) + added)

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": JSON_FORMAT, "version": JSON_VERSION,
                "labels": [{"index": e.index, "name": e.name, "color": list(e.color),
                            "visible": e.visible, "mesh": e.mesh} for e in self.entries]}

    @classmethod
    def from_dict(cls, d) -> LabelTable:
        """From :meth:`to_dict` output, or a bare list of ``{"index", "name", "color"}`` (model spec style)."""
        items = d.get("labels") if isinstance(d, dict) else d
        if not isinstance(items, list):
            raise VolumeError("label table JSON must have a 'labels' list")
        try:
            return cls([LabelEntry(int(it["index"]), str(it["name"]), tuple(it.get("color", (1, 1, 1, 1))),
                                   bool(it.get("visible", True)), bool(it.get("mesh", True))) for it in items])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, VolumeError):
                raise
            raise VolumeError(f"label table JSON entry is invalid ({type(exc).__name__}: {exc})") from None

    def write_json(self, path) -> Path:
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read_json(cls, path) -> LabelTable:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise VolumeError(f"{path}: cannot read label table ({exc})") from None
        return cls.from_dict(d)

    # -- ITK-SNAP ------------------------------------------------------------------------------
    def to_itksnap(self) -> str:
        lines = ["################################################",
                 "# ITK-SnAP Label Description File",
                 "# written by napari-vit3d",
                 "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
                 "#   IDX: label value; -R- -G- -B-: colour 0..255; -A--: opacity 0..1;",
                 "#   VIS: visible (0/1); MSH: in mesh (0/1); LABEL: description in double quotes",
                 "################################################"]
        for e in self.entries:
            r, g, b = (int(round(c * 255)) for c in e.color[:3])
            name = e.name.replace('"', "'")
            lines.append(f"{e.index:5d} {r:5d} {g:4d} {b:4d} {e.color[3]:9.4g} {int(e.visible):2d} "
                         f"{int(e.mesh):2d}    \"{name}\"")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_itksnap(cls, text: str, source: str = "label description") -> LabelTable:
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            m = _ITK_LINE.match(line)
            if not m:
                raise VolumeError(f"{source}: line {n} is not an ITK-SNAP label line: {s[:60]!r}")
            idx, r, g, b, a, vis, msh, name = m.groups()
            rgb = [int(r), int(g), int(b)]
            if max(rgb) > 255:
                raise VolumeError(f"{source}: line {n}: colour components must be 0..255")
            alpha = float(a)
            if not 0.0 <= alpha <= 1.0:
                raise VolumeError(f"{source}: line {n}: opacity must be between 0 and 1, got {a}")
            entries.append(LabelEntry(int(idx), name, tuple(c / 255.0 for c in rgb) + (alpha,), vis == "1", msh == "1"))
        return cls(entries)

    def write_itksnap(self, path) -> Path:
        return write_text_atomic(path, self.to_itksnap())

    @classmethod
    def read_itksnap(cls, path) -> LabelTable:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise VolumeError(f"{path}: cannot read label description file ({exc})") from None
        return cls.from_itksnap(text, source=str(path))

    @classmethod
    def read(cls, path) -> LabelTable:
        """Read a label table, JSON (``.json``) or ITK-SNAP (anything else)."""
        return cls.read_json(path) if str(path).lower().endswith(".json") else cls.read_itksnap(path)


__all__ = ["LabelEntry", "LabelTable"]
