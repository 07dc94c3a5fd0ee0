"""DICOM series and multi-frame files → :class:`Volume`, with pydicom (imported lazily).

What opens:

* a **folder** (searched recursively; files that are not DICOM, and DICOM objects that are not
  images — DICOMDIR, SEG, RTSTRUCT, SR, presentation states — are skipped), holding one image
  series or, with ``series=UID``, several;
* a **single file**: a multi-frame image (enhanced CT/MR/PET with per-frame positions, or a legacy
  multi-frame file with ``GridFrameOffsetVector`` such as RT dose). A single 2D slice is refused;
* a **.zip** of a series. Members are read into memory one at a time, never extracted to disk, so
  member names cannot escape a folder; the total uncompressed size the archive declares is checked
  against ``max_bytes`` first and no member may inflate past its declared size (zip bombs).

Array axes (the file's own voxel order, like every ``Volume``): **i = column index** (along
ImageOrientationPatient's first vector, the row direction), **j = row index** (along its second
vector), **k = slice** in order of position along the slice normal ``row × column``. Slices are
sorted by that position, never by file name or InstanceNumber. The affine maps (i, j, k) to
``IPP₀ + i·Δcol·row_dir + j·Δrow·col_dir + k·step·normal`` in LPS (DICOM patient coordinates),
then the first two world axes change sign (RAS). Δrow, Δcol are PixelSpacing[0], PixelSpacing[1].

Refused with one line (never resampled): mixed orientations or matrix sizes, gantry tilt (slice
positions not along the normal), duplicate positions, missing slices (a step > 1.5 × the median),
uneven spacing (> 1 % from the median), colour images, compressed pixel data pydicom cannot decode.

Values: RescaleSlope/Intercept are applied (CT in Hounsfield units); the result stays an integer
type when slopes are 1 and intercepts whole numbers, else float32.

Privacy: patient name, ID, birth date and other identifying attributes are never copied into
``metadata`` (nor into provenance or logs); ``metadata["dicom"]`` holds UIDs, modality, series
description, and the files of the series (in k order) so that a DICOM SEG can reference them.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import VolumeError
from ._scan_common import LPS_TO_RAS, check_claim, fail, finish_volume, require
from .volume import Volume

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: DICOM objects in a folder that are not images of the patient: skipped when gathering series
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG", "DOC", "FID", "RWV"}
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: the most files gathered from one folder or archive (a typo'd folder like ``/`` must not hang)
MAX_FILES = 200_000
GAP_FACTOR = 1.5
SPACING_TOLERANCE = 0.01
#: slice positions may stray from the normal line by this fraction of a pixel before it is a tilt
TILT_TOLERANCE_PIXELS = 0.05
_LIST_SHOWN = 6


def _pydicom():
    return require("pydicom", "reading DICOM")


def _line(text: str, limit: int = 1200) -> VolumeError:
    text = " ".join(text.split())
    return VolumeError(text if len(text) <= limit else text[: limit - 3] + "...")


# -- where DICOM files come from --------------------------------------------------------------------


@dataclass
class _Source:
    """One DICOM file: a path on disk, or a member of a zip archive (read into memory)."""

    label: str
    path: Path | None = None
    archive: zipfile.ZipFile | None = None
    member: zipfile.ZipInfo | None = None

    def open(self):
        if self.path is not None:
            return open(self.path, "rb")
        with self.archive.open(self.member) as fh:
            data = fh.read(self.member.file_size + 1)
        if len(data) > self.member.file_size:
            raise VolumeError(f"{self.label}: inflates past its declared size (a zip bomb?); refusing")
        return io.BytesIO(data)


def _has_dicm_magic(fh) -> bool:
    head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def looks_like_dicom_file(path) -> bool:
    """A cheap test: the ``DICM`` marker at byte 128 (files without the preamble need a .dcm name)."""
    try:
        with open(path, "rb") as fh:
            if _has_dicm_magic(fh):
                return True
    except OSError:
        return False
    return str(path).lower().endswith(DICOM_SUFFIXES)


def folder_has_dicom(folder, *, max_probe: int = 2000) -> bool:
    """Whether ``folder`` (searched recursively, at most ``max_probe`` files looked at) holds a DICOM file."""
    seen = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            seen += 1
            if seen > max_probe:
                return False
            try:
                with open(os.path.join(dirpath, name), "rb") as fh:
                    if _has_dicm_magic(fh):
                        return True
            except OSError:
                continue
    return False


def zip_has_dicom(path, *, max_probe: int = 50) -> bool:
    """Whether the zip archive ``path`` holds a DICOM file among its first ``max_probe`` members."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()][:max_probe]
            for m in members:
                if m.flag_bits & 0x1:
                    continue
                with zf.open(m) as fh:
                    if _has_dicm_magic(fh):
                        return True
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, EOFError):
        return False
    return False


def _folder_sources(folder: Path) -> list[_Source]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if p.is_file():
                out.append(_Source(label=str(p), path=p))
                if len(out) > MAX_FILES:
                    raise fail(folder, f"holds more than {MAX_FILES} files; open the folder of one series")
    return out


def _zip_sources(path: Path, zf: zipfile.ZipFile, max_bytes: int) -> list[_Source]:
    members = [m for m in zf.infolist() if not m.is_dir()]
    if len(members) > MAX_FILES:
        raise fail(path, f"holds more than {MAX_FILES} files; refusing")
    total = sum(m.file_size for m in members)
    if total > max_bytes:
        raise fail(path, f"declares {total / 1024**3:.1f} GiB uncompressed, over the {max_bytes / 1024**3:.1f} GiB "
                         "limit; refusing to read it")
    out = []
    for m in members:
        base = m.filename.rsplit("/", 1)[-1]
        if not base or base.startswith(".") or m.filename.startswith("__MACOSX/"):
            continue
        if m.flag_bits & 0x1:
            raise fail(path, f"member {m.filename} is encrypted; unpack the archive yourself")
        out.append(_Source(label=f"{path}!{m.filename}", archive=zf, member=m))
    return out


# -- headers ---------------------------------------------------------------------------------------------


@dataclass
class _Header:
    source: _Source
    ds: object  # pydicom Dataset without pixel data


def _read_header(pydicom, src: _Source, *, strict: bool):
    """The header dataset of ``src``, or None when it is not DICOM (``strict``: a corrupt file raises)."""
    from pydicom.errors import InvalidDicomError

    try:
        with src.open() as fh:
            try:
                return pydicom.dcmread(fh, stop_before_pixels=True)
            except InvalidDicomError:
                if not src.label.lower().endswith(DICOM_SUFFIXES):
                    return None
                fh.seek(0)
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
                return ds if "SOPClassUID" in ds and "Rows" in ds else None
    except VolumeError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, AttributeError, InvalidDicomError) as exc:
        if strict:
            raise fail(src.label, f"is truncated or corrupt DICOM ({type(exc).__name__}: {exc})") from None
        return None


def _is_image(ds) -> bool:
    if str(ds.get("SOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY:
        return False
    if str(ds.get("Modality", "")).upper() in NON_IMAGE_MODALITIES:
        return False
    return "Rows" in ds and "Columns" in ds and "SeriesInstanceUID" in ds


def _incomplete(ds) -> bool:
    """pydicom stops quietly where a file ends: a header that lacks what its SOP class must have was cut short."""
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
    if not sop_class or sop_class == MEDIA_STORAGE_DIRECTORY:
        return False
    if "SOPClassUID" not in ds or "SeriesInstanceUID" not in ds:
        return True
    name = str(getattr(ds.SOPClassUID, "name", ""))
    return ("Image Storage" in name or name == "RT Dose Storage") and ("Rows" not in ds or "Columns" not in ds)


def _headers(pydicom, sources: list[_Source], where) -> list[_Header]:
    out = []
    for src in sources:
        ds = _read_header(pydicom, src, strict=False)
        if ds is None:
            # a file that starts like DICOM but cannot be parsed is an error, not something to skip
            try:
                with src.open() as fh:
                    magic = _has_dicm_magic(fh)
            except OSError:
                magic = False
            if magic:
                _read_header(pydicom, src, strict=True)
                raise fail(src.label, "is truncated or corrupt DICOM")
            continue
        if _incomplete(ds):
            raise fail(src.label, "is truncated or corrupt DICOM (its header ends before the attributes every "
                                  "image has)")
        if _is_image(ds):
            out.append(_Header(src, ds))
    if not out:
        raise fail(where, "holds no DICOM images (no file with a DICOM image header was found)")
    return out


# -- series listing ----------------------------------------------------------------------------------------


@dataclass
class SeriesInfo:
    """One DICOM series in a folder or archive (no patient-identifying attributes)."""

    uid: str
    modality: str
    description: str
    number: int | None
    n_files: int
    n_frames: int
    rows: int
    columns: int
    study_uid: str = ""
    headers: list = field(default_factory=list, repr=False)

    def summary(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        if self.n_files == 1 and self.n_frames > 1:
            count = f"{self.n_frames} frames"
        else:
            count = f"{self.n_files} slice{'s' if self.n_files != 1 else ''}"
        return f"{self.uid} ({self.modality or '?'}{desc}, {count})"


def _group(headers: list[_Header]) -> list[SeriesInfo]:
    groups: dict[str, list[_Header]] = {}
    for h in headers:
        groups.setdefault(str(h.ds.SeriesInstanceUID), []).append(h)
    out = []
    for uid, hs in groups.items():
        ds = hs[0].ds
        try:
            number = int(ds.get("SeriesNumber")) if ds.get("SeriesNumber") not in (None, "") else None
        except (TypeError, ValueError):
            number = None
        frames = sum(int(h.ds.get("NumberOfFrames", 1) or 1) for h in hs)
        out.append(SeriesInfo(uid=uid, modality=str(ds.get("Modality", "")), number=number,
                              description=str(ds.get("SeriesDescription", "")).strip(), n_files=len(hs),
                              n_frames=frames, rows=int(ds.Rows), columns=int(ds.Columns),
                              study_uid=str(ds.get("StudyInstanceUID", "")), headers=hs))
    out.sort(key=lambda s: (s.number is None, s.number or 0, s.uid))
    return out


class _Opened:
    """The sources of a path (folder, zip or file), closing a zip archive afterwards."""

    def __init__(self, path: Path, max_bytes: int):
        self.path, self.max_bytes, self.zip = path, max_bytes, None

    def __enter__(self) -> list[_Source]:
        p = self.path
        try:
            if p.is_dir():
                return _folder_sources(p)
            if not p.exists():
                raise fail(p, "no such file or folder")
            if p.name.lower().endswith(".zip"):
                try:
                    self.zip = zipfile.ZipFile(p)
                except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
                    raise fail(p, f"is not a readable zip archive ({exc})") from None
                return _zip_sources(p, self.zip, self.max_bytes)
            if not p.is_file():
                raise fail(p, "is not a regular file")
            return [_Source(label=str(p), path=p)]
        except OSError as exc:
            raise fail(p, f"cannot be read ({exc.strerror or exc})") from None

    def __exit__(self, *exc):
        if self.zip is not None:
            self.zip.close()


def list_dicom_series(path, *, max_bytes: int = 4 * 1024**3) -> list[SeriesInfo]:
    """The image series in a DICOM folder, zip archive or file, ordered by SeriesNumber (for a chooser).

    Each :class:`SeriesInfo` has the SeriesInstanceUID (what ``read_scan(series=...)`` and
    ``--series`` take), modality, description, number of files/frames and matrix size.
    """
    pydicom = _pydicom()
    path = Path(path)
    with _Opened(path, max_bytes) as sources:
        series = _group(_headers(pydicom, sources, path))
    for s in series:
        s.headers = []
    return series


def _pick(path, series: list[SeriesInfo], uid: str | None) -> SeriesInfo:
    if uid is not None:
        for s in series:
            if s.uid == str(uid).strip():
                return s
        shown = "; ".join(s.summary() for s in series[:_LIST_SHOWN])
        more = f"; … {len(series) - _LIST_SHOWN} more" if len(series) > _LIST_SHOWN else ""
        raise _line(f"{path}: no series {uid}; it holds {len(series)}: {shown}{more}")
    if len(series) == 1:
        return series[0]
    shown = "; ".join(s.summary() for s in series[:_LIST_SHOWN])
    more = f"; … {len(series) - _LIST_SHOWN} more" if len(series) > _LIST_SHOWN else ""
    raise _line(f"{path}: holds {len(series)} DICOM series; choose one with --series UID (series= in Python): "
                f"{shown}{more}")


# -- geometry ----------------------------------------------------------------------------------------------


@dataclass
class _Plane:
    """One 2D image: a slice file, or one frame of a multi-frame file."""

    ipp: np.ndarray
    iop: np.ndarray
    spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns)
    slope: float
    intercept: float
    source: int  # index into the series' headers
    frame: int | None = None  # 0-based frame of a multi-frame file
    sop_uid: str = ""


def _floats(value, n, what, where) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        raise fail(where, f"has an unreadable {what}") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise fail(where, f"has an unusable {what} ({list(value) if value is not None else None})")
    return arr


def _rescale(ds) -> tuple[float, float]:
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        inter = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return 1.0, 0.0
    return slope, inter


def _plane_of(ds, where, index: int) -> _Plane:
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        raise fail(where, "has no ImagePositionPatient/ImageOrientationPatient: it cannot be placed in the patient "
                          "(a localizer, secondary capture or a scanned film?)")
    if "PixelSpacing" not in ds:
        raise fail(where, "has no PixelSpacing: the pixel size in mm is unknown")
    spacing = _floats(ds.PixelSpacing, 2, "PixelSpacing", where)
    slope, inter = _rescale(ds)
    return _Plane(ipp=_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", where),
                  iop=_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", where),
                  spacing=(float(spacing[0]), float(spacing[1])), slope=slope, intercept=inter, source=index,
                  sop_uid=str(ds.get("SOPInstanceUID", "")))


def _frame_planes(ds, where) -> list[_Plane]:
    """The planes of a multi-frame file: enhanced (per-frame functional groups) or GridFrameOffsetVector."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    sop = str(ds.get("SOPInstanceUID", ""))
    if per_frame:
        if len(per_frame) != n:
            raise fail(where, f"declares {n} frames but describes {len(per_frame)}")

        def item(group, seq):
            for g in (group, shared):
                if g is not None and seq in g and len(g[seq].value):
                    return g[seq][0]
            return None

        planes = []
        for f, g in enumerate(per_frame):
            pos, ori, meas = item(g, "PlanePositionSequence"), item(g, "PlaneOrientationSequence"), \
                item(g, "PixelMeasuresSequence")
            if pos is None or ori is None or "ImagePositionPatient" not in pos or \
                    "ImageOrientationPatient" not in ori:
                raise fail(where, f"frame {f + 1} has no plane position/orientation: it cannot be placed in the "
                                  "patient")
            if meas is None or "PixelSpacing" not in meas:
                raise fail(where, f"frame {f + 1} has no PixelSpacing: the pixel size in mm is unknown")
            tr = item(g, "PixelValueTransformationSequence")
            slope, inter = _rescale(tr) if tr is not None else _rescale(ds)
            sp = _floats(meas.PixelSpacing, 2, "PixelSpacing", where)
            planes.append(_Plane(ipp=_floats(pos.ImagePositionPatient, 3, "ImagePositionPatient", where),
                                 iop=_floats(ori.ImageOrientationPatient, 6, "ImageOrientationPatient", where),
                                 spacing=(float(sp[0]), float(sp[1])), slope=slope, intercept=inter, source=0,
                                 frame=f, sop_uid=sop))
        return planes
    if "GridFrameOffsetVector" in ds:
        base = _plane_of(ds, where, 0)
        offsets = _floats(ds.GridFrameOffsetVector, n, "GridFrameOffsetVector", where)
        r, c = base.iop[:3], base.iop[3:]
        normal = np.cross(r, c)
        normal /= np.linalg.norm(normal)
        if offsets[0] != 0:  # type b: positions along the normal, the first one at IPP; make them relative
            offsets = offsets - offsets[0]
        slope = base.slope
        if "DoseGridScaling" in ds:  # RT dose: Gy per stored value
            try:
                slope = float(ds.DoseGridScaling)
            except (TypeError, ValueError):
                raise fail(where, "has an unreadable DoseGridScaling") from None
        return [_Plane(ipp=base.ipp + o * normal, iop=base.iop, spacing=base.spacing, slope=slope,
                       intercept=base.intercept, source=0, frame=f, sop_uid=sop) for f, o in enumerate(offsets)]
    raise fail(where, f"is a multi-frame file ({n} frames) without per-frame positions; it cannot be placed "
                      "in the patient")


def _unit_frame(iop, where):
    r, c = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if nr < 1e-6 or nc < 1e-6:
        raise fail(where, "has a zero ImageOrientationPatient vector")
    r, c = r / nr, c / nc
    if abs(r @ c) > 1e-3 or abs(nr - 1) > 1e-2 or abs(nc - 1) > 1e-2:
        raise fail(where, "has an ImageOrientationPatient that is not two unit vectors at right angles")
    n = np.cross(r, c)
    return r, c, n / np.linalg.norm(n)


def _stack_geometry(planes: list[_Plane], where) -> tuple[list[_Plane], np.ndarray]:
    """The planes in order along the normal and the voxel → LPS affine; refuses what is not one regular stack."""
    iop0 = planes[0].iop
    odd = [p for p in planes if np.max(np.abs(p.iop - iop0)) > 1e-4]
    if odd:
        n_orient = len({tuple(np.round(p.iop, 4)) for p in planes})
        raise fail(where, f"mixes {n_orient} slice orientations (ImageOrientationPatient differs between slices: a "
                          "localizer or several stacks in one series?); napari-vit3d needs one regular stack")
    sp0 = planes[0].spacing
    if any(abs(p.spacing[0] - sp0[0]) > 1e-4 * max(sp0[0], 1) or abs(p.spacing[1] - sp0[1]) > 1e-4 * max(sp0[1], 1)
           for p in planes):
        raise fail(where, "mixes pixel spacings between slices; napari-vit3d needs one regular stack")
    r, c, n = _unit_frame(iop0, where)
    pos = np.array([p.ipp @ n for p in planes])
    order = np.argsort(pos, kind="stable")
    planes = [planes[i] for i in order]
    pos = pos[order]
    if len(planes) < 2:
        raise fail(where, "is a single 2D slice; napari-vit3d needs a 3D volume (open the folder that holds the whole "
                          "series, or a multi-frame file)")
    steps = np.diff(pos)
    dup = np.nonzero(steps < 1e-3)[0]
    if dup.size:
        raise fail(where, f"has {dup.size + 1 if dup.size == 1 else dup.size} slices at the same position "
                          f"(e.g. {pos[dup[0]]:.3f} mm along the normal): several echoes, time points or repeated "
                          "slices in one series; napari-vit3d needs one slice per position")
    median = float(np.median(steps))
    gaps = np.nonzero(steps > GAP_FACTOR * median)[0]
    if gaps.size:
        g = gaps[0]
        raise fail(where, f"has missing slices: a gap of {steps[g]:.3f} mm between slice positions {pos[g]:.3f} and "
                          f"{pos[g + 1]:.3f} mm along the normal (the usual step is {median:.3f} mm; "
                          f"{gaps.size} gap(s) in all); napari-vit3d does not fill gaps")
    uneven = np.nonzero(np.abs(steps - median) > SPACING_TOLERANCE * median)[0]
    if uneven.size:
        g = uneven[0]
        raise fail(where, f"has uneven slice spacing: steps from {steps.min():.4f} to {steps.max():.4f} mm (first "
                          f"off step between positions {pos[g]:.3f} and {pos[g + 1]:.3f} mm, median {median:.4f} mm); "
                          "napari-vit3d needs evenly spaced slices")
    ipp = np.array([p.ipp for p in planes])
    along = ipp - ipp[0]
    lateral = along - np.outer(along @ n, n)
    drift = float(np.max(np.linalg.norm(lateral, axis=1)))
    if drift > TILT_TOLERANCE_PIXELS * min(sp0):
        span = float(pos[-1] - pos[0])
        angle = float(np.degrees(np.arctan2(drift, span))) if span > 0 else 90.0
        raise fail(where, f"is tilted or sheared: slice positions drift {drift:.2f} mm sideways from the slice normal "
                          f"over {span:.1f} mm (about {angle:.1f}°, gantry tilt?); napari-vit3d does not resample it. "
                          "Correct the tilt first (e.g. dcm2niix or 3D Slicer's acquisition-geometry regularization)")
    step = (pos[-1] - pos[0]) / (len(planes) - 1)
    lps = np.eye(4)
    lps[:3, 0] = r * sp0[1]
    lps[:3, 1] = c * sp0[0]
    lps[:3, 2] = n * step
    lps[:3, 3] = planes[0].ipp
    return planes, lps


# -- pixel data --------------------------------------------------------------------------------------------


def _stored_range(ds) -> tuple[int, int]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _output_dtype(ds, planes: list[_Plane]):
    if all(p.slope == 1 and float(p.intercept).is_integer() for p in planes):
        lo, hi = _stored_range(ds)
        inters = [p.intercept for p in planes]
        lo, hi = lo + min(inters), hi + max(inters)
        for dt in (np.uint8, np.int16, np.uint16, np.int32):
            info = np.iinfo(dt)
            if info.min <= lo and hi <= info.max:
                if dt is np.uint8 and int(ds.get("BitsAllocated", 16)) > 8:
                    continue
                return np.dtype(dt)
        return np.dtype(np.float32)
    return np.dtype(np.float32)


def _check_pixel_format(ds, where):
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if spp != 1 or not photometric.startswith("MONOCHROME"):
        raise fail(where, f"is a colour image ({photometric}, {spp} samples per pixel), not a scan")


def _pixels(ds, where):
    try:
        return ds.pixel_array
    except MemoryError:
        raise fail(where, "does not fit in memory") from None
    except (NotImplementedError, RuntimeError) as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", ts) or "unknown"
        raise fail(where, f"has compressed pixel data ({name}) that cannot be decoded here "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                          "install pylibjpeg / pylibjpeg-libjpeg / pylibjpeg-openjpeg, or convert the series first") \
            from None
    except (ValueError, AttributeError, KeyError, TypeError, EOFError, OSError) as exc:
        raise fail(where, "is truncated or corrupt DICOM: its pixel data cannot be read "
                          f"({type(exc).__name__}: {exc})") from None


def _read_full(pydicom, src: _Source):
    from pydicom.errors import InvalidDicomError

    try:
        with src.open() as fh:
            return pydicom.dcmread(fh, force=src.label.lower().endswith(DICOM_SUFFIXES))
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, AttributeError, InvalidDicomError) as exc:
        raise fail(src.label, f"is truncated or corrupt DICOM ({type(exc).__name__}: {exc})") from None


def _fill(out, plane_index: int, frame2d: np.ndarray, plane: _Plane, where):
    frame2d = np.asarray(frame2d)
    if frame2d.shape != (out.shape[1], out.shape[0]):
        raise fail(where, f"has a {frame2d.shape[1]}×{frame2d.shape[0]} image where the series is "
                          f"{out.shape[0]}×{out.shape[1]}")
    vals = frame2d.T
    if plane.slope != 1 or plane.intercept != 0:
        if out.dtype.kind == "f":
            vals = vals.astype(np.float64) * plane.slope + plane.intercept
        else:
            vals = vals.astype(np.int64) + int(plane.intercept)
    out[:, :, plane_index] = vals


# -- reading -----------------------------------------------------------------------------------------------


def read_dicom(path, *, as_labels: bool | None = None, series: str | None = None,
               max_bytes: int = 4 * 1024**3) -> Volume:
    """Read a DICOM series (folder or zip) or a multi-frame DICOM file into a :class:`Volume` (RAS affine)."""
    pydicom = _pydicom()
    path = Path(path)
    with _Opened(path, max_bytes) as sources:
        single = len(sources) == 1 and path.is_file() and not path.name.lower().endswith(".zip")
        if single:
            ds = _read_header(pydicom, sources[0], strict=True)
            if ds is None:
                raise fail(path, "is not a DICOM file (no DICOM header found)")
            if _incomplete(ds):
                raise fail(path, "is truncated or corrupt DICOM (its header ends before the attributes every image "
                                 "has)")
            if not _is_image(ds):
                raise fail(path, f"is a DICOM {ds.get('Modality', 'non-image')} object, not an image")
            chosen = _group([_Header(sources[0], ds)])[0]
            if series is not None and chosen.uid != str(series).strip():
                raise fail(path, f"holds series {chosen.uid}, not {series}")
        else:
            chosen = _pick(path, _group(_headers(pydicom, sources, path)), series)
        return _read_series(pydicom, path, chosen, as_labels=as_labels, max_bytes=max_bytes)


def _read_series(pydicom, path: Path, s: SeriesInfo, *, as_labels, max_bytes) -> Volume:
    hs = s.headers
    multi = [h for h in hs if int(h.ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi and len(hs) > 1:
        raise fail(path, f"series {s.uid} mixes {len(multi)} multi-frame file(s) with other files; open one "
                         "multi-frame file at a time")
    where = hs[0].source.label if len(hs) == 1 else f"{path} (series {s.uid})"
    ds0 = hs[0].ds
    _check_pixel_format(ds0, where)
    if multi:
        planes = _frame_planes(ds0, where)
    else:
        for h in hs:
            if int(h.ds.Rows) != s.rows or int(h.ds.Columns) != s.columns:
                raise fail(where, f"mixes image sizes ({s.columns}×{s.rows} and {h.ds.Columns}×{h.ds.Rows}); "
                                  "napari-vit3d needs one regular stack")
        planes = [_plane_of(h.ds, h.source.label, i) for i, h in enumerate(hs)]
    planes, lps = _stack_geometry(planes, where)
    dtype = _output_dtype(ds0, planes)
    shape = (s.columns, s.rows, len(planes))
    check_claim(where, shape, dtype.itemsize, max_bytes)
    try:
        out = np.empty(shape, dtype=dtype)
    except MemoryError:
        raise fail(where, "does not fit in memory") from None
    if multi:
        full = _read_full(pydicom, hs[0].source)
        pix = _pixels(full, where)
        if pix.ndim != 3 or pix.shape[0] != len(planes):
            raise fail(where, f"has pixel data of shape {pix.shape}, not {len(planes)} frames")
        for k, p in enumerate(planes):
            _fill(out, k, pix[p.frame], p, where)
    else:
        for k, p in enumerate(planes):
            src = hs[p.source].source
            full = _read_full(pydicom, src)
            _check_pixel_format(full, src.label)
            _fill(out, k, _pixels(full, src.label), p, src.label)
    if out.dtype.kind in "iu" and out.dtype.itemsize > 2 and out.size:  # the declared range was wider than the data
        lo, hi = int(out.min()), int(out.max())
        for dt in (np.int16, np.uint16):
            if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
                out = out.astype(dt)
                break
    ras = LPS_TO_RAS @ lps
    files = [hs[p.source].source for p in planes] if not multi else [hs[0].source]
    archive = str(path.resolve()) if path.name.lower().endswith(".zip") and path.is_file() else None
    meta = {"dicom": {
        "SeriesInstanceUID": s.uid,
        "StudyInstanceUID": str(ds0.get("StudyInstanceUID", "")),
        "FrameOfReferenceUID": str(ds0.get("FrameOfReferenceUID", "")),
        "Modality": s.modality,
        "SeriesDescription": s.description,
        "SeriesNumber": s.number,
        "SOPClassUID": str(ds0.get("SOPClassUID", "")),
        "SOPInstanceUIDs": [p.sop_uid for p in planes],
        "frames": [p.frame for p in planes] if multi else None,
        "archive": archive,
        "files": [f.member.filename if f.member is not None else str(f.path.resolve()) for f in files],
        "units": "HU" if s.modality.upper() == "CT" and all(p.slope != 0 for p in planes) else None,
    }}
    name = path.name[: -len(".zip")] if archive else (path.stem if path.is_file() else path.name)
    return finish_volume(path, out, ras, as_labels=bool(as_labels), fmt="dicom",
                         name=name or "dicom", source_path=str(path.resolve()), metadata=meta, labels_by_name=False)


def source_datasets(meta: dict) -> list:
    """The header datasets (no pixel data) a DICOM-read volume came from, in ``metadata['dicom']['files']`` order.

    Used by the DICOM SEG writer to reference the source images. Refuses (one line) when a file is gone
    or no longer holds the instance it held when the scan was opened.
    """
    pydicom = _pydicom()
    files, archive = meta.get("files") or [], meta.get("archive")
    zf = None
    try:
        if archive:
            try:
                zf = zipfile.ZipFile(archive)
            except (OSError, zipfile.BadZipFile) as exc:
                raise fail(archive, f"cannot be opened again to reference its images ({exc})") from None
        out = []
        for f in files:
            if zf is not None:
                try:
                    member = zf.getinfo(f)
                except KeyError:
                    raise fail(archive, f"no longer holds {f}") from None
                src = _Source(label=f"{archive}!{f}", archive=zf, member=member)
            else:
                if not os.path.isfile(f):
                    raise fail(f, "the source DICOM file is gone; the segmentation cannot reference it")
                src = _Source(label=f, path=Path(f))
            ds = _read_header(pydicom, src, strict=True)
            if ds is None:
                raise fail(src.label, "is no longer a DICOM file")
            out.append(ds)
    finally:
        if zf is not None:
            zf.close()
    uids = {str(d.get("SOPInstanceUID", "")) for d in out}
    if not set(u for u in (meta.get("SOPInstanceUIDs") or []) if u) <= uids:
        raise VolumeError("the source DICOM files changed since the scan was opened (SOPInstanceUIDs differ); "
                          "open the scan again")
    return out


__all__ = ["DICOM_SUFFIXES", "SeriesInfo", "folder_has_dicom", "list_dicom_series", "looks_like_dicom_file",
           "read_dicom", "source_datasets", "zip_has_dicom"]
