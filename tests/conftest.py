"""Shared fixtures: small NIfTI files of odd geometry, nibabel's own test files, the shared data.

Nothing here imports napari or torch, so engine tests stay light.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

# napari keeps its preferences in the user's config folder, and make_napari_viewer resets and saves
# them: point napari at a scratch settings file for the test session (read when napari.settings is
# first imported, which is after this module).
os.environ.setdefault("NAPARI_CONFIG", os.path.join(tempfile.mkdtemp(prefix="napari_vit3d_tests_"), "settings.yaml"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _rot(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _affine(columns, spacing, origin) -> np.ndarray:
    """4×4 whose i-th column is ``columns[i] * spacing[i]`` (columns: unit RAS directions)."""
    a = np.eye(4)
    a[:3, :3] = np.asarray(columns, float).T * np.asarray(spacing, float)
    a[:3, 3] = origin
    return a


#: name → (affine, spatial shape, n_channels, (qform_code, sform_code))
ODD_GEOMETRIES = {
    # anisotropic 0.7 × 0.7 × 3 mm, RAS, scanner codes
    "ras_aniso": (_affine(np.eye(3), (0.7, 0.7, 3.0), (-3.5, 10.0, 20.0)), (13, 11, 6), 1, (1, 1)),
    # DICOM-style LPS
    "lps": (_affine([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], (0.9, 1.1, 1.3), (12.0, 8.0, -30.0)), (9, 12, 7), 1, (1, 1)),
    # sagittal-style LSA: i → left, j → superior, k → anterior
    "lsa": (_affine([[-1, 0, 0], [0, 0, 1], [0, 1, 0]], (1.2, 0.8, 1.0), (5.0, -20.0, 7.0)), (8, 10, 12), 1, (2, 2)),
    # oblique by 20° about a tilted axis, on top of an LPS-like grid with anisotropic voxels
    "oblique20": (_affine((_rot((1, 1, 0.3), 20) @ np.diag([-1, -1, 1])).T, (1.0, 0.9, 2.5), (-4.0, 3.0, 9.0)),
                  (10, 9, 7), 1, (1, 1)),
    # qform only (sform code 0), PIR orientation
    "qform_only_pir": (_affine([[0, -1, 0], [0, 0, -1], [1, 0, 0]], (1.0, 1.5, 0.8), (30.0, 40.0, -10.0)),
                       (11, 8, 9), 1, (1, 0)),
    # 4D multi-channel (3 channels), LIP, anisotropic
    "multichannel_lip": (_affine([[-1, 0, 0], [0, 0, -1], [0, -1, 0]], (1.1, 2.0, 0.9), (0.0, 5.0, -5.0)),
                         (9, 7, 10), 3, (1, 1)),
}


def write_odd_geometry(folder: Path, name: str, *, seed: int = 0) -> dict[str, Path]:
    """Write ``<name>.nii.gz`` (float32 image) and, for 3D geometries, ``<name>_seg.nii.gz`` (uint8
    labels 0–4) on the same grid. Returns {"image": path, "labels": path or None}."""
    affine, shape, n_channels, (qcode, scode) = ODD_GEOMETRIES[name]
    rng = np.random.default_rng(seed)
    full = shape if n_channels == 1 else (*shape, n_channels)
    image = rng.normal(100, 30, full).astype(np.float32)
    img = nib.Nifti1Image(image, affine)
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    out = {"image": folder / f"{name}.nii.gz", "labels": None}
    nib.save(img, out["image"])
    if n_channels == 1:
        labels = rng.integers(0, 5, shape).astype(np.uint8)
        seg = nib.Nifti1Image(labels, affine)
        seg.set_qform(affine, code=qcode)
        seg.set_sform(affine, code=scode)
        out["labels"] = folder / f"{name}_seg.nii.gz"
        nib.save(seg, out["labels"])
    return out


@pytest.fixture(scope="session")
def odd_geometry_files(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """{geometry name: {"image": path, "labels": path or None}} for every entry of ODD_GEOMETRIES."""
    folder = tmp_path_factory.mktemp("odd_geometry")
    return {name: write_odd_geometry(folder, name, seed=i) for i, name in enumerate(ODD_GEOMETRIES)}


#: nibabel's own test files that are valid scans for us (3D, or 4D with ≤ 8 volumes)
NIBABEL_FILES = ("anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz", "reoriented_anat_moved.nii",
                 "resampled_anat_moved.nii", "standard.nii.gz")


def nibabel_test_file(name: str) -> Path:
    from nibabel.testing import data_path

    return Path(data_path) / name


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real scans of ../shared/data (tests only; product code never reads them)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing; the tests need the shared real scans")
    return SHARED_DATA



COLIN27 = SHARED_DATA / "colin27" / "ch2.nii.gz"
#: file voxel order flipped along x and y: an LPS-like file of a RAS scan
LPS_FROM_RAS = np.array([[0, -1], [1, -1], [2, 1]])


def colin27_crop(folder: Path, slices: tuple, name: str = "colin_crop.nii.gz") -> Path:
    """Write the Colin27 crop ``slices`` (a tuple of 3 ``slice``) re-oriented LPS-like (x and y flipped)."""
    img = nib.load(str(COLIN27))
    out = Path(folder) / name
    nib.save(img.slicer[slices].as_reoriented(LPS_FROM_RAS), str(out))
    return out


def write_spec(folder: Path, spec: dict, name: str | None = None) -> Path:
    """Write a model spec dict as ``<name or spec['name']>.json`` in ``folder``; returns the path."""
    import json

    p = Path(folder) / f"{name or spec['name']}.json"
    p.write_text(json.dumps(spec))
    return p
