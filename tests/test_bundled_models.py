"""The bundled models load through the real registry and segment the bundled Colin27 sample.

Brain Dice ≥ 0.93 (the issue asks for ≥ 0.9; the model measures 0.950) against the sample's brain mask
is a floor against regressions (Colin27 was part of the training data), not a quality figure: those are in docs/models/*.md (benchmarks/eval_bundled.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_vit3d.inference.engine import segment
from napari_vit3d.io.nifti import read_nifti
from napari_vit3d.io.samples import sample_path
from napari_vit3d.models import load_model
from napari_vit3d.models.registry import bundled_models_dir, default_model_name, list_models

REPO = Path(__file__).resolve().parents[1]
BUNDLED = ("segformer3d-brain", "dino-vit-brain")
#: brain Dice floors on the sample. The default model must reach 0.9 (it measures 0.950; 0.93 leaves a margin). The DINO model is a
#: demonstration of DINO heads whose decoder sits on a frozen (and briefly pretrained) DINO encoder;
#: its card states its measured Dice (below 0.9), and this floor only guards against regressions.
FLOORS = {"segformer3d-brain": 0.93, "dino-vit-brain": 0.75}
EXPECTED_LABELS = {0: "background", 1: "CSF", 2: "gray matter", 3: "white matter"}


def _present():
    return [n for n in BUNDLED if (bundled_models_dir() / f"{n}.json").is_file()]


def test_default_model_is_the_bundled_segformer():
    assert (bundled_models_dir() / "segformer3d-brain.json").is_file()
    assert default_model_name() == "segformer3d-brain"
    names = {e.name for e in list_models()}
    assert "segformer3d-brain" in names


def test_bundled_weights_fit_the_size_budget():
    files = list(bundled_models_dir().glob("*.safetensors"))
    assert files
    assert sum(f.stat().st_size for f in files) <= 25 * 1024 * 1024
    for name in _present():
        spec = json.loads((bundled_models_dir() / f"{name}.json").read_text())
        assert (bundled_models_dir() / spec["weights"]).is_file()
        # the card ships beside the spec (a copy of docs/models/<name>.md) so `models --card` finds it
        card = bundled_models_dir() / spec["card"]
        assert card.is_file()
        assert card.read_text() == (REPO / "docs" / "models" / spec["card"]).read_text()


@pytest.fixture(scope="module")
def colin():
    return read_nifti(sample_path("colin27_t1.nii.gz")), read_nifti(sample_path("colin27_brainmask.nii.gz"))


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_segments_the_sample(name, colin):
    if name not in _present():
        pytest.fail(f"bundled model {name} is missing from {bundled_models_dir()}")
    model = load_model(name, device="cpu")
    assert {l.index: l.name for l in model.spec.labels} == EXPECTED_LABELS
    t1, mask = colin
    res = segment(t1, model, device="cpu", use_cache=False, return_probabilities=False)
    labels = res.labels.data
    assert labels.shape == t1.spatial_shape
    np.testing.assert_array_equal(res.labels.affine, t1.affine)
    ref = np.asarray(mask.data) > 0
    pred = labels > 0
    dice = 2 * np.sum(pred & ref) / (pred.sum() + ref.sum())
    assert dice >= FLOORS[name], f"{name}: brain Dice {dice:.3f} on the bundled sample"
    # (T1) the voxels called WM are brighter than those called GM (and GM than CSF, when CSF is found)
    x = np.asarray(t1.data, np.float32)
    found = [c for c in (1, 2, 3) if np.any(labels == c)]
    assert {2, 3} <= set(found)
    means = [x[labels == c].mean() for c in found]
    assert all(a < b for a, b in zip(means, means[1:])), means
    if name == "segformer3d-brain":
        assert found == [1, 2, 3]
