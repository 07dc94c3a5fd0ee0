"""One entry point for every scan format: :func:`read_scan` reads, :func:`write_as` / :func:`write_labels_as` write.

Reading, chosen by the path (see ``docs/formats.md``):

==========================  ===================================  ============================
path                        read by                              library
==========================  ===================================  ============================
``.nii``, ``.nii.gz``       :func:`.nifti.read_nifti`            nibabel
``.mgz``, ``.mgh``          :func:`.mgh.read_mgh`                nibabel
``.nrrd``, ``.nhdr``,       :func:`.nrrd_io.read_nrrd`           pynrrd
``.seg.nrrd``
``.mha``, ``.mhd``          :func:`.itk_io.read_itk`             SimpleITK
folder, ``.zip``, ``.dcm``  :func:`.dicom.read_dicom`            pydicom
(or a file starting DICM)
==========================  ===================================  ============================

Every reader gives a :class:`Volume` with data in the file's own voxel order and a voxel → RAS mm
affine, checks the header-declared size against ``max_bytes`` before reading pixel data, and turns
every failure into one plain-line :class:`~napari_vit3d.errors.VolumeError`. pydicom, pynrrd and
SimpleITK are imported only when such a file is read (``pip install "napari-vit3d[formats]"``).

Writing, chosen by the output's extension: ``.nii``/``.nii.gz`` (nibabel), ``.nrrd`` (label map or
image, LPS), ``.seg.nrrd`` (3D Slicer segmentation with segment names and colours), ``.mha``
(SimpleITK) and ``.dcm`` (DICOM SEG, labels of a DICOM scan only). Every write is atomic and never
replaces the scan it belongs to; labels are written on the source scan's grid.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import GeometryError, VolumeError
from . import dicom as _dicom
from .dicom import SeriesInfo, list_dicom_series
from .itk_io import is_itk_path, read_itk, write_mha
from .labels import LabelTable
from .mgh import is_mgh_path, read_mgh
from .nifti import DEFAULT_MAX_BYTES, _guard_source, is_nifti_path, label_dtype, read_nifti, write_image, write_labels
from .nrrd_io import is_nrrd_path, is_seg_nrrd_path, read_nrrd, write_nrrd
from .volume import Volume

#: extensions :func:`read_scan` opens (plus folders holding DICOM and files that start like DICOM)
READ_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".zip")
#: extensions :func:`write_labels_as` writes, longest first (``.seg.nrrd`` before ``.nrrd``)
LABEL_WRITE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".dcm")
#: extensions :func:`write_as` writes an image (float map) to
IMAGE_WRITE_SUFFIXES = (".nii.gz", ".nrrd", ".nii", ".mha")


def scan_format(path, *, probe: bool = True) -> str | None:
    """``"nifti"``, ``"mgh"``, ``"nrrd"``, ``"metaimage"``, ``"dicom"`` or None (not something :func:`read_scan` reads).

    By extension; a folder is ``"dicom"`` when it holds a DICOM file, a ``.zip`` when one of its first
    members is DICOM, any other file when it has the DICOM marker (``DICM`` at byte 128). With
    ``probe=False`` nothing is opened: folders and ``.zip`` files count as DICOM, unknown files do not.
    """
    p = Path(os.fsdecode(path))
    name = p.name.lower()
    if is_nifti_path(name):
        return "nifti"
    if is_mgh_path(name):
        return "mgh"
    if is_nrrd_path(name):
        return "nrrd"
    if is_itk_path(name):
        return "metaimage"
    if name.endswith(".dcm"):
        return "dicom"
    if not probe:
        return "dicom" if (name.endswith(".zip") or p.is_dir()) else None
    try:
        if p.is_dir():
            return "dicom" if _dicom.folder_has_dicom(p) else None
        if name.endswith(".zip"):
            return "dicom" if _dicom.zip_has_dicom(p) else None
        if p.is_file():  # DICOM files often have no extension, or a UID with dots as their name
            return "dicom" if _dicom.looks_like_dicom_file(p) else None
    except OSError:
        return None
    return None


def is_scan_path(path, *, probe: bool = True) -> bool:
    """Whether :func:`read_scan` would try ``path`` (see :func:`scan_format`)."""
    return scan_format(path, probe=probe) is not None


def scan_stem(path) -> str:
    """The name of a scan without its format's extension (``x.seg.nrrd`` → ``x``, a folder → its name)."""
    name = Path(os.fsdecode(path)).name
    for suf in (".nii.gz", ".seg.nrrd", *READ_SUFFIXES):
        if name.lower().endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return name


def read_scan(path, *, as_labels: bool | None = None, series: str | None = None,
              max_bytes: int = DEFAULT_MAX_BYTES) -> Volume:
    """Read a scan or label map in any supported format into a :class:`Volume` (RAS mm affine).

    ``as_labels`` as in :func:`.nifti.read_nifti` (None: by file name and values; a ``.seg.nrrd``
    is always a label map, a DICOM series never unless asked). ``series`` picks one
    SeriesInstanceUID of a DICOM folder or archive holding several (:func:`list_dicom_series`).
    """
    p = Path(os.fsdecode(path))
    fmt = scan_format(p, probe=False)  # folders and .zip archives go to the DICOM reader, which says what is wrong
    if fmt is None:
        fmt = scan_format(p)
    if series is not None and fmt not in (None, "dicom"):
        raise VolumeError(f"{p}: a series can only be chosen in DICOM input, and this is {fmt}")
    if fmt == "nifti":
        return read_nifti(p, as_labels=as_labels, max_bytes=max_bytes)
    if fmt == "mgh":
        return read_mgh(p, as_labels=as_labels, max_bytes=max_bytes)
    if fmt == "nrrd":
        return read_nrrd(p, as_labels=as_labels, max_bytes=max_bytes)
    if fmt == "metaimage":
        return read_itk(p, as_labels=as_labels, max_bytes=max_bytes)
    if fmt == "dicom":
        return _dicom.read_dicom(p, as_labels=as_labels, series=series, max_bytes=max_bytes)
    if not os.path.lexists(p):
        raise VolumeError(f"{p}: no such file or folder")
    if p.is_dir():
        raise VolumeError(f"{p}: is a folder without DICOM files (napari-vit3d opens folders of DICOM series)")
    raise VolumeError(f"{p}: is not a scan format napari-vit3d reads (expected {', '.join(READ_SUFFIXES)}, "
                      "a DICOM file or a folder of DICOM files)")


def scan_sha256(path) -> str:
    """sha256 identifying a scan's content on disk: the file's bytes; for a folder (a DICOM series), every
    file under it with its relative path; for ``.mhd``/``.nhdr`` headers, the header and the data files
    beside it that share its stem. For batch records ("is this scan already done?")."""
    import hashlib

    from .atomic import sha256_file

    p = Path(os.fsdecode(path))
    if p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file())
    elif p.name.lower().endswith((".mhd", ".nhdr")):
        stem = p.name[: -len(p.suffix)]
        files = [p] + sorted(q for q in p.parent.glob(f"{stem}.*") if q.is_file() and q != p)
    else:
        return sha256_file(p)
    h = hashlib.sha256()
    for q in files:
        h.update(str(q.relative_to(p if p.is_dir() else p.parent)).encode("utf-8", "surrogateescape"))
        h.update(bytes.fromhex(sha256_file(q)))
    return h.hexdigest()


# -- writing ------------------------------------------------------------------------------------------------


def output_format(path, *, labels: bool = True) -> str:
    """The format an output path asks for: ``"nifti"``, ``"seg.nrrd"``, ``"nrrd"``, ``"mha"`` or ``"dicom-seg"``."""
    name = str(path).lower()
    if is_seg_nrrd_path(name):
        fmt = "seg.nrrd"
    elif is_nifti_path(name):
        fmt = "nifti"
    elif name.endswith(".nrrd"):
        fmt = "nrrd"
    elif name.endswith(".mha"):
        fmt = "mha"
    elif name.endswith(".dcm"):
        fmt = "dicom-seg"
    else:
        fmt = None
    allowed = LABEL_WRITE_SUFFIXES if labels else IMAGE_WRITE_SUFFIXES
    if fmt is None or (not labels and fmt not in ("nifti", "nrrd", "mha")):
        kind = "a label map" if labels else "an image"
        raise VolumeError(f"{path}: cannot write {kind} there; the name must end in {', '.join(allowed)}")
    return fmt


def _table(label_table, volume: Volume | None) -> LabelTable | None:
    if isinstance(label_table, LabelTable):
        return label_table
    if isinstance(label_table, dict):  # {index: name}
        return LabelTable.default(label_table.keys(), {int(k): str(v) for k, v in label_table.items()})
    meta = volume.metadata if volume is not None else {}
    if isinstance(meta.get("label_table"), dict):
        return LabelTable.from_dict(meta["label_table"])
    names = meta.get("label_names")
    if isinstance(names, dict) and names:
        return LabelTable.default(names.keys(), {int(k): str(v) for k, v in names.items()})
    return None


def _protected(volume: Volume, source: Volume | None, protect) -> tuple:
    paths = [volume.source_path, volume.metadata.get("protect_path")]
    if source is not None:
        paths += [source.source_path, source.metadata.get("protect_path")]
        dmeta = source.metadata.get("dicom") or {}
        if not dmeta.get("archive"):
            paths += list(dmeta.get("files") or [])
    return tuple(str(p) for p in (*paths, *protect) if p)


def _grid(path, volume: Volume, source: Volume | None) -> tuple[np.ndarray, object]:
    """The affine and header to write with: the source scan's when given (the labels must be on its grid)."""
    if source is None:
        return volume.affine, volume.header
    if volume.spatial_shape != source.spatial_shape:
        raise GeometryError(f"{path}: data of shape {volume.spatial_shape} are not on the source scan's grid "
                            f"{source.spatial_shape}")
    if not np.allclose(volume.affine, source.affine, atol=1e-4):
        raise GeometryError(f"{path}: the data's affine differs from the source scan's; they would not land on it")
    return source.affine, source.header


def _as_labels_array(path, data) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim != 3:
        raise VolumeError(f"{path}: labels must be 3D, got shape {data.shape}")
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise VolumeError(f"{path}: labels must be whole numbers")
    elif data.dtype.kind not in "iu":
        raise VolumeError(f"{path}: labels must be integers, got {data.dtype}")
    lo = int(data.min()) if data.size else 0
    hi = int(data.max()) if data.size else 0
    return data.astype(label_dtype(max(hi, -lo), signed=lo < 0), copy=False)


def write_labels_as(path, labels: Volume, *, source: Volume | None = None, label_table=None,
                    protect: tuple = (), segmentation_type: str = "BINARY") -> Path:
    """Write the label map ``labels`` in the format its extension names, on the source scan's grid.

    ``source`` is the scan the labels belong to (its affine/header are used and checked against the
    labels'; a DICOM SEG references its images; without it the labels' own grid is used, and a DICOM
    SEG needs the labels to carry the scan's ``metadata["dicom"]``). ``label_table``: a
    :class:`LabelTable`, ``{index: name}``, or None (the volume's ``metadata["label_table"]`` /
    ``["label_names"]``, else defaults); its names go into ``.seg.nrrd`` segments and DICOM SEG
    segment labels (NIfTI, plain NRRD and MetaImage hold no names: write the table beside them with
    :meth:`LabelTable.write_itksnap`). Atomic; never over the source scan or its files.
    """
    path = Path(os.fsdecode(path))
    fmt = output_format(path, labels=True)
    if not isinstance(labels, Volume):
        raise VolumeError("write_labels_as needs a Volume (data with its affine)")
    affine, header = _grid(path, labels, source)
    data = _as_labels_array(path, labels.data)
    table = _table(label_table, labels) or _table(None, source)
    _guard_source(path, None, _protected(labels, source, protect))
    if fmt == "nifti":
        return write_labels(path, data, affine, header=header)
    if fmt in ("nrrd", "seg.nrrd"):
        return write_nrrd(path, data, affine, segmentation=fmt == "seg.nrrd", label_table=table)
    if fmt == "mha":
        return write_mha(path, data, affine)
    from .dicom_seg import write_dicom_seg

    ref = source if source is not None and (source.metadata or {}).get("dicom") else labels
    return write_dicom_seg(path, data, ref, label_table=table, segmentation_type=segmentation_type)


def write_as(path, volume: Volume, *, as_labels: bool | None = None, source: Volume | None = None,
             label_table=None, protect: tuple = ()) -> Path:
    """Write ``volume`` in the format its extension names: labels (see :func:`write_labels_as`) when
    ``as_labels`` or the volume is a label map / integer, else a float32 image (NIfTI, NRRD, MetaImage)."""
    if as_labels is None:
        as_labels = volume.metadata.get("kind") == "labels" or np.issubdtype(volume.data.dtype, np.integer)
    if as_labels:
        return write_labels_as(path, volume, source=source, label_table=label_table, protect=protect)
    path = Path(os.fsdecode(path))
    fmt = output_format(path, labels=False)
    affine, header = _grid(path, volume, source)
    data = np.asarray(volume.data)
    if data.ndim not in (3, 4):
        raise VolumeError(f"{path}: an image must be 3D or 4D, got shape {data.shape}")
    _guard_source(path, None, _protected(volume, source, protect))
    if fmt == "nifti":
        return write_image(path, data, affine, header=header)
    data = data.astype(np.float32, copy=False)
    if fmt == "nrrd":
        return write_nrrd(path, data, affine)
    return write_mha(path, data, affine)


__all__ = ["IMAGE_WRITE_SUFFIXES", "LABEL_WRITE_SUFFIXES", "READ_SUFFIXES", "SeriesInfo", "is_scan_path",
           "list_dicom_series", "output_format", "read_scan", "scan_format", "scan_sha256", "scan_stem", "write_as",
           "write_labels_as"]
