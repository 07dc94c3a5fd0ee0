"""NRRD (``.nrrd``, ``.nhdr``) and 3D Slicer segmentations (``.seg.nrrd``) with pynrrd.

Geometry: voxel (i, j, k) → ``space origin + Σ index_a · space_directions[a]`` in the file's
``space``. ``left-posterior-superior`` (LPS, what Slicer and ITK write), ``right-anterior-superior``
and ``left-anterior-superior`` are converted to RAS by changing the sign of the flipped world axes;
a file without ``space`` is taken as LPS, as ITK and Slicer read it; ``scanner-xyz`` and the
``3D-*-handed`` spaces name no anatomical direction and are refused. Without ``space directions``
the axes are ``spacings`` mm apart along the LPS axes. One non-spatial axis (``kinds`` list/vector,
a ``none`` direction) becomes the trailing channel axis.

A Slicer segmentation (``.seg.nrrd``, or a file with ``Segment0_*`` fields) opens as a label map:
a 4D file (one layer per segment, or several layers with several segments each) is reduced to one
3D map; segment names and colours (``Segment{N}_Name``/``_Color``/``_LabelValue``/``_Layer``) go
into ``metadata["label_table"]`` (:class:`~napari_vit3d.io.labels.LabelTable` dict) and
``metadata["label_names"]``.

Writing: :func:`write_nrrd` writes a 3D label map or image (gzip, LPS) and, with ``segmentation``,
the fields Slicer reads for a ``.seg.nrrd``. Atomic, through :func:`.atomic.atomic_write`.
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np

from ..errors import VolumeError, VolumeWarning
from ._scan_common import LPS_TO_RAS, check_claim, check_file, fail, finish_volume, require
from .atomic import atomic_write
from .labels import LabelEntry, LabelTable
from .volume import Volume

NRRD_SUFFIXES = (".nrrd", ".nhdr")
#: space name → sign of each world axis relative to RAS
_SPACES = {"right-anterior-superior": (1, 1, 1), "ras": (1, 1, 1),
           "left-anterior-superior": (-1, 1, 1), "las": (-1, 1, 1),
           "left-posterior-superior": (-1, -1, 1), "lps": (-1, -1, 1)}
_NON_SPATIAL_KINDS = {"list", "point", "vector", "covariant-vector", "normal", "stub", "scalar", "complex",
                      "2-vector", "3-color", "rgb-color", "hsv-color", "xyz-color", "4-color", "rgba-color",
                      "3-vector", "3-gradient", "3-normal", "4-vector", "quaternion", "2d-symmetric-matrix",
                      "2d-masked-symmetric-matrix", "2d-matrix", "2d-masked-matrix", "3d-symmetric-matrix",
                      "3d-masked-symmetric-matrix", "3d-matrix", "3d-masked-matrix", "time"}
_TYPE_SIZES = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8,
               "float": 4, "double": 8}
_TYPE_NAMES = {
    "signed char": "int8", "int8": "int8", "int8_t": "int8",
    "uchar": "uint8", "unsigned char": "uint8", "uint8": "uint8", "uint8_t": "uint8",
    "short": "int16", "short int": "int16", "signed short": "int16", "signed short int": "int16", "int16": "int16",
    "int16_t": "int16", "ushort": "uint16", "unsigned short": "uint16", "unsigned short int": "uint16",
    "uint16": "uint16", "uint16_t": "uint16", "int": "int32", "signed int": "int32", "int32": "int32",
    "int32_t": "int32", "uint": "uint32", "unsigned int": "uint32", "uint32": "uint32", "uint32_t": "uint32",
    "longlong": "int64", "long long": "int64", "long long int": "int64", "signed long long": "int64",
    "signed long long int": "int64", "int64": "int64", "int64_t": "int64", "ulonglong": "uint64",
    "unsigned long long": "uint64", "unsigned long long int": "uint64", "uint64": "uint64", "uint64_t": "uint64",
    "float": "float", "double": "double",
}


def is_nrrd_path(path) -> bool:
    return str(path).lower().endswith(NRRD_SUFFIXES)


def is_seg_nrrd_path(path) -> bool:
    return str(path).lower().endswith(".seg.nrrd")


def nrrd_stem(path) -> str:
    """The name without ``.seg.nrrd`` / ``.nrrd`` / ``.nhdr`` (any case)."""
    name = Path(path).name
    for suf in (".seg.nrrd", ".nrrd", ".nhdr"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(path).stem


def _nrrd():
    return require("nrrd", "reading or writing NRRD")


def _read_header(path: Path):
    nrrd = _nrrd()
    try:
        return nrrd.read_header(str(path))
    except (nrrd.NRRDError, ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError) as exc:
        raise fail(path, f"is not a valid NRRD file ({exc})") from None
    except OSError as exc:
        raise fail(path, f"cannot be read ({exc.strerror or exc})") from None


def nrrd_geometry(path, header) -> tuple[np.ndarray, list[int], int | None]:
    """(voxel → RAS 4×4 of the spatial axes, indices of the 3 spatial axes, the non-spatial axis or None)."""
    dim = int(header.get("dimension", 0))
    sizes = [int(s) for s in np.atleast_1d(header.get("sizes", []))]
    if dim != len(sizes) or dim < 3:
        raise fail(path, f"is {dim}D (sizes {sizes}); napari-vit3d needs a 3D volume")
    space = str(header.get("space", "")).strip().lower()
    if space and space not in _SPACES:
        raise fail(path, f"is in space '{space}', which names no patient direction; only LPS, RAS and LAS "
                         "spaces can be placed on a patient")
    signs = np.array(_SPACES.get(space, _SPACES["lps"]), dtype=float)
    units = header.get("space units")
    if units is not None and any(str(u).strip().lower() not in ("mm", "") for u in units):
        raise fail(path, f"has space units {list(units)}; only millimetres are supported")
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * dim)]
    directions = header.get("space directions")
    if directions is not None:
        directions = np.asarray(directions, dtype=float)
        if directions.shape[0] != dim or directions.shape[1] != 3:
            raise fail(path, f"has 'space directions' of shape {directions.shape}; a 3D space needs one 3-vector "
                             "(or none) per axis")
        spatial = [a for a in range(dim) if np.all(np.isfinite(directions[a]))]
        columns = directions[spatial].T if len(spatial) == 3 else None
    else:
        spatial = [a for a in range(dim) if kinds[a] not in _NON_SPATIAL_KINDS] if dim > 3 else [0, 1, 2]
        spacings = header.get("spacings")
        sp = np.ones(len(spatial)) if spacings is None else np.asarray(spacings, dtype=float)[spatial]
        columns = np.diag(np.where(np.isfinite(sp), sp, 1.0)) if len(spatial) == 3 else None
    if len(spatial) != 3 or columns is None:
        raise fail(path, f"has {len(spatial)} spatial axes (sizes {sizes}); napari-vit3d needs exactly 3")
    other = [a for a in range(dim) if a not in spatial]
    if len(other) > 1:
        raise fail(path, f"is {dim}D {tuple(sizes)}; only 3D volumes and 4D multi-channel volumes are supported")
    origin = header.get("space origin")
    origin = np.zeros(3) if origin is None else np.asarray(origin, dtype=float)
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        raise fail(path, f"has an unusable 'space origin' {origin.tolist()}")
    affine = np.eye(4)
    affine[:3, :3] = signs[:, None] * columns
    affine[:3, 3] = signs * origin
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise fail(path, "has no usable voxel-to-world geometry ('space directions' singular or not finite)")
    return affine, spatial, (other[0] if other else None)


def _segments(path, header, n_layers: int) -> list[dict]:
    """Slicer's ``Segment{N}_*`` fields: [{name, color, value, layer}] in segment order."""
    out, i = [], 0
    while any(f"Segment{i}_{key}" in header for key in ("ID", "Name", "LabelValue")):
        def get(key, default=None, n=i):
            return header.get(f"Segment{n}_{key}", default)

        try:
            color = tuple(float(c) for c in str(get("Color", "")).split())
            color = color[:3] if len(color) >= 3 and all(0 <= c <= 1 for c in color[:3]) else None
            value = int(float(get("LabelValue"))) if get("LabelValue") is not None else (1 if n_layers > 1 else i + 1)
            layer = int(float(get("Layer"))) if get("Layer") is not None else (i if n_layers > 1 else 0)
        except ValueError:
            raise fail(path, f"segment {i} has unreadable LabelValue/Layer/Color fields") from None
        out.append({"name": str(get("Name", get("ID", f"Segment_{i + 1}"))), "color": color, "value": value,
                    "layer": layer})
        i += 1
    return out


def _to_label_map(path, data: np.ndarray, segments: list[dict]) -> tuple[np.ndarray, LabelTable]:
    """A 3D label map and its table from a Slicer segmentation's data (layers on the last axis if 4D)."""
    layers = data.shape[3] if data.ndim == 4 else 1
    if layers == 1:
        lab = data if data.ndim == 3 else data[..., 0]
        entries = {}
        for s in segments:
            if s["value"] > 0 and s["value"] not in entries:
                entries[s["value"]] = LabelEntry(s["value"], s["name"], s["color"] or (1.0, 1.0, 1.0))
        return lab, LabelTable([LabelEntry(0, "background", (0, 0, 0, 0), False, False), *entries.values()])
    if not segments:  # a 4D file without segment fields: one segment per layer, value 1
        segments = [{"name": f"Segment_{i + 1}", "color": None, "value": 1, "layer": i} for i in range(layers)]
    out = np.zeros(data.shape[:3], dtype=np.uint16 if len(segments) > 255 else np.uint8)
    overlap = 0
    entries = [LabelEntry(0, "background", (0, 0, 0, 0), False, False)]
    for n, s in enumerate(segments, 1):
        if not 0 <= s["layer"] < layers:
            raise fail(path, f"segment '{s['name']}' is on layer {s['layer']}, but the file has {layers} layers")
        mask = data[..., s["layer"]] == s["value"]
        overlap += int(np.count_nonzero(out[mask]))
        out[mask] = n
        entries.append(LabelEntry(n, s["name"], s["color"] or (1.0, 1.0, 1.0)))
    if overlap:
        warnings.warn(f"{Path(path).name}: {overlap} voxels belong to several segments; each keeps the last one "
                      "(a label map holds one label per voxel)", VolumeWarning, stacklevel=3)
    return out, LabelTable(entries)


def read_nrrd(path, *, as_labels: bool | None = None, max_bytes: int) -> Volume:
    """Read an NRRD scan, label map or Slicer segmentation into a :class:`Volume` (RAS affine)."""
    path = Path(path)
    check_file(path, "NRRD")
    if not is_nrrd_path(path):
        raise fail(path, "is not an NRRD file (expected .nrrd, .seg.nrrd or .nhdr)")
    nrrd = _nrrd()
    header = _read_header(path)
    affine, spatial, other = nrrd_geometry(path, header)
    sizes = [int(s) for s in header["sizes"]]
    type_name = _TYPE_NAMES.get(str(header.get("type", "")).strip().lower())
    if type_name is None:
        raise fail(path, f"has data type '{header.get('type')}', which is not a number type")
    is_seg = is_seg_nrrd_path(path) or any(k.startswith("Segment0_") for k in header)
    itemsize = 4 if type_name in ("float", "double") else _TYPE_SIZES[type_name]
    check_claim(path, sizes, itemsize, max_bytes)
    if other is not None and not is_seg and sizes[other] > 8:
        raise fail(path, f"has {sizes[other]} volumes along its non-spatial axis (a time series?); at most 8 "
                         "channels are supported")
    try:
        data, header = nrrd.read(str(path), index_order="F")
    except MemoryError:
        raise fail(path, "does not fit in memory") from None
    except (nrrd.NRRDError, ValueError, EOFError, zlib.error, OSError, IndexError) as exc:
        detail = getattr(exc, "strerror", None) or exc
        raise fail(path, f"is truncated or corrupt ({type(exc).__name__}: {detail})") from None
    data = np.asarray(data)
    order = [*spatial, *([other] if other is not None else [])]
    data = np.transpose(data, order) if order != list(range(data.ndim)) else data
    meta = {"nrrd_space": str(header.get("space", "")) or None}
    name = nrrd_stem(path)
    if is_seg:
        if as_labels is False:
            raise fail(path, "is a 3D Slicer segmentation; it opens as a label map only")
        if data.dtype.kind not in "iub":
            raise fail(path, f"is a segmentation with data type {data.dtype}; expected integers")
        lab, table = _to_label_map(path, data, _segments(path, header, data.shape[3] if data.ndim == 4 else 1))
        table = table.with_missing(np.unique(lab).tolist())
        meta.update(label_table=table.to_dict(), label_names={e.index: e.name for e in table})
        return finish_volume(path, lab, affine, as_labels=True, fmt="seg.nrrd", name=name,
                             source_path=str(path.resolve()), metadata=meta)
    return finish_volume(path, data, affine, as_labels=as_labels, fmt="nrrd", name=name,
                         source_path=str(path.resolve()), metadata=meta)


def _extent(mask: np.ndarray) -> str:
    """Slicer's ``_Extent`` of a segment: ``i0 i1 j0 j1 k0 k1`` (inclusive), ``0 -1 ...`` when empty."""
    if not mask.any():
        return "0 -1 0 -1 0 -1"
    parts = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        hit = np.nonzero(mask.any(axis=other))[0]
        parts += [int(hit[0]), int(hit[-1])]
    return " ".join(str(p) for p in parts)


def _rgb_text(color) -> str:
    return " ".join(f"{float(c):.6g}" for c in color[:3])


def nrrd_header(data: np.ndarray, affine: np.ndarray, *, channels_first: bool = False) -> dict:
    """The pynrrd header of ``data`` (3D, or 4D with the channel axis first) on ``affine`` (RAS), in LPS."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
    directions = lps[:3, :3].T  # one row per array axis
    header = {"space": "left-posterior-superior", "space origin": lps[:3, 3], "encoding": "gzip", "endian": "little"}
    if channels_first:
        header["space directions"] = np.vstack([np.full((1, 3), np.nan), directions])
        header["kinds"] = ["list", "domain", "domain", "domain"]
    else:
        header["space directions"] = directions
        header["kinds"] = ["domain", "domain", "domain"]
    return header


def write_nrrd(path, data: np.ndarray, affine, *, segmentation: bool = False, label_table: LabelTable | None = None):
    """Write ``data`` (file voxel order; 3D, or 4D channels last) on ``affine`` (voxel → RAS) as NRRD, LPS space.

    With ``segmentation`` (a ``.seg.nrrd``): ``data`` must be a 3D label map, written as one layer with
    one Slicer segment per label of ``label_table`` other than 0 (labels present in ``data`` but not
    in the table get default names), so 3D Slicer opens it as a segmentation with names and colours.
    """
    nrrd = _nrrd()
    path = Path(path)
    arr = np.asarray(data)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.ndim == 4:
        arr = np.moveaxis(arr, 3, 0)
    header = nrrd_header(arr, affine, channels_first=arr.ndim == 4)
    if segmentation:
        if arr.ndim != 3:
            raise VolumeError(f"{path}: a segmentation must be a 3D label map, got shape {arr.shape}")
        present = [int(v) for v in np.unique(arr)]
        table = (label_table or LabelTable.from_array(arr)).with_missing(present)
        n = 0
        for e in table:
            if e.index == 0:
                continue
            mask = arr == e.index
            header.update({
                f"Segment{n}_ID": f"Segment_{e.index}",
                f"Segment{n}_Name": e.name,
                f"Segment{n}_NameAutoGenerated": "0",
                f"Segment{n}_Color": _rgb_text(e.color),
                f"Segment{n}_ColorAutoGenerated": "0",
                f"Segment{n}_LabelValue": str(e.index),
                f"Segment{n}_Layer": "0",
                f"Segment{n}_Extent": _extent(mask),
                f"Segment{n}_Tags": "|",
            })
            n += 1
        header.update({
            "Segmentation_MasterRepresentation": "Binary labelmap",
            "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
            "Segmentation_ReferenceImageExtentOffset": "0 0 0",
            "Segmentation_ConversionParameters": "",
        })
    return atomic_write(path, lambda tmp: nrrd.write(tmp, np.asarray(arr), header, index_order="F"), suffix=".nrrd")


__all__ = ["NRRD_SUFFIXES", "is_nrrd_path", "is_seg_nrrd_path", "nrrd_geometry", "nrrd_header", "nrrd_stem",
           "read_nrrd", "write_nrrd"]
