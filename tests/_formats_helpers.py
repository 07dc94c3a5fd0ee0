"""What the format tests (``test_formats_*.py``) share: DICOM series written with pydicom alone (not by
our code), the Colin27 crop they hold, and LPS→RAS for hand computations.

The DICOM writer here is deliberately independent of ``napari_vit3d.io.dicom``: it only knows the
DICOM standard's pixel layout (``pixel[row, column]``; a column step moves along the first three
values of ImageOrientationPatient by PixelSpacing[1], a row step along the last three by
PixelSpacing[0]) and writes the tags a scanner would.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from conftest import COLIN27

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@lru_cache(maxsize=1)
def _colin() -> np.ndarray:
    return np.asarray(nib.load(str(COLIN27)).dataobj)  # read once per test session (it is gzip-compressed)


def colin_crop(shape=(40, 48, 36), start=(70, 85, 70)) -> np.ndarray:
    """A crop of the real Colin27 T1 (uint8 values), as int16."""
    sl = tuple(slice(s, s + n) for s, n in zip(start, shape))
    return _colin()[sl].astype(np.int16)


def rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _ds(pydicom_mod, *, sop_class, modality, study_uid, series_uid, frame_uid, series_description, series_number):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName, ds.PatientID = "Doe^Jane^Secret", "PAT-SECRET-123"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "1", "20240101", "120000", "A1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesDescription, ds.SeriesNumber = modality, series_description, series_number
    ds.Manufacturer = "pydicom test writer"
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def write_dicom_series(folder, volume, *, row_dir, col_dir, origin_lps, pixel_spacing, slice_step,
                       positions=None, orientations=None, slope=1.0, intercept=0.0, modality="MR",
                       series_description="test series", series_number=3, study_uid=None, series_uid=None,
                       shuffle=True, seed=0, skip=(), suffix="") -> dict:
    """Write ``volume[i, j, k]`` as one DICOM file per k: pixel[row j, column i] = volume[i, j, k].

    ``row_dir``/``col_dir`` are ImageOrientationPatient's two unit vectors (LPS), ``pixel_spacing`` is
    (row spacing, column spacing) as in PixelSpacing, slice k sits at ``origin_lps + k * slice_step *
    normal`` unless ``positions`` (k → IPP) is given. Stored values are ``(volume - intercept) / slope``
    (so the rescaled values equal ``volume``). Files get random names, random InstanceNumbers and, with
    ``shuffle``, are written in random order; slices in ``skip`` are not written.
    Returns {"files": [paths in k order], "series_uid", "study_uid", "sop_uids": [k order], "ipp": [k order]}.
    """
    import pydicom
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(row_dir, col_dir)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    nk = volume.shape[2]
    order = rng.permutation(nk) if shuffle else np.arange(nk)
    instance_numbers = rng.permutation(nk) + 1
    out = {"files": [None] * nk, "sop_uids": [None] * nk, "ipp": [None] * nk, "series_uid": series_uid,
           "study_uid": study_uid}
    for k in order:
        k = int(k)
        if k in skip:
            continue
        ds = _ds(pydicom, sop_class=sop_class, modality=modality, study_uid=study_uid, series_uid=series_uid,
                 frame_uid=frame_uid, series_description=series_description, series_number=series_number)
        ipp = np.asarray(positions[k], float) if positions is not None else \
            np.asarray(origin_lps, float) + k * slice_step * normal
        r, c = (orientations[k] if orientations is not None else (row_dir, col_dir))
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*r, *c)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.PixelSpacing = [f"{pixel_spacing[0]:.6f}", f"{pixel_spacing[1]:.6f}"]
        ds.SliceThickness = f"{abs(slice_step):.6f}"
        ds.InstanceNumber = int(instance_numbers[k])
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[0])
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        stored = np.round((volume[:, :, k].T.astype(np.float64) - intercept) / slope).astype("<i2")
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
        name = folder / f"{rng.integers(0, 16**8):08x}{suffix}"  # random names, no extension (as many scanners)
        ds.save_as(name, enforce_file_format=True)
        out["files"][k], out["sop_uids"][k], out["ipp"][k] = name, ds.SOPInstanceUID, ipp
    return out


def oblique_orientation():
    """Row and column directions (LPS) of an oblique, mostly sagittal acquisition."""
    rot = rotation((0.3, 1.0, 0.2), 17)
    sagittal_row, sagittal_col = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
    return rot @ sagittal_row, rot @ sagittal_col
