"""``napari-vit3d evaluate`` and ``compare-labels`` on NIfTI files written with nibabel."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from napari_vit3d.cli import main


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def _ball(shape, c, r, spacing):
    g = np.indices(shape).astype(float)
    return np.sqrt(sum(((g[i] - c[i]) * spacing[i]) ** 2 for i in range(3))) <= r


def _surface_dists(pred, ref, spacing):
    def surf(m):
        return m & ~ndimage.binary_erosion(m, border_value=0)
    sp, sr = surf(pred), surf(ref)
    a = ndimage.distance_transform_edt(~sr, sampling=spacing)[sp]
    b = ndimage.distance_transform_edt(~sp, sampling=spacing)[sr]
    return max(np.quantile(a, 0.95), np.quantile(b, 0.95)), np.concatenate([a, b]).mean()


@pytest.fixture
def files(tmp_path):
    spacing = (0.9, 0.9, 2.5)
    affine = np.diag(spacing + (1.0,))
    affine[:3, 3] = (-20, -15, 4)
    shape = (30, 30, 12)
    ref = np.zeros(shape, np.uint8)
    ref[_ball(shape, (12, 15, 6), 9, spacing)] = 1
    ref[_ball(shape, (22, 15, 6), 5, spacing)] = 2
    pred = np.roll(ref, 1, axis=2)
    pred[pred == 2] = 0  # label 2 missed entirely
    probs = np.stack([pred == 0, pred == 1, pred == 2], -1).astype(np.float32) * 0.8 + 0.1
    return {"pred": _save(tmp_path / "pred_seg.nii.gz", pred, affine),
            "ref": _save(tmp_path / "ref_seg.nii.gz", ref, affine),
            "probs": _save(tmp_path / "probs.nii.gz", probs, affine),
            "pred_arr": pred, "ref_arr": ref, "spacing": spacing, "affine": affine, "tmp": tmp_path}


def test_evaluate_json_matches_numpy(files, capsys):
    rc = main(["evaluate", files["pred"], files["ref"], "--probabilities", files["probs"], "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    res = json.loads(out)  # one strict JSON object
    assert set(res["labels"]) == {"1", "2"}
    for key in ("dice", "hd95", "msd", "recall", "precision", "volume_diff_ml", "auc_pr"):
        assert key in res["labels"]["1"]
    p, r = files["pred_arr"] == 1, files["ref_arr"] == 1
    e = res["labels"]["1"]
    assert e["dice"] == pytest.approx(2 * np.sum(p & r) / (p.sum() + r.sum()), abs=1e-6)
    hd, msd = _surface_dists(p, r, files["spacing"])
    assert e["hd95"] == pytest.approx(hd, rel=1e-5) and e["msd"] == pytest.approx(msd, rel=1e-5)
    assert e["recall"] == pytest.approx(np.sum(p & r) / r.sum())
    assert e["volume_diff_ml"] == pytest.approx((p.sum() - r.sum()) * 0.9 * 0.9 * 2.5 / 1000)
    missed = res["labels"]["2"]
    assert missed["pred_empty"] and missed["dice"] == 0.0 and missed["hd95"] is None and missed["recall"] == 0.0
    assert "NaN" not in out and "Infinity" not in out
    bg = json.loads((main(["evaluate", files["pred"], files["ref"], "--json", "--include-background"]), capsys.readouterr().out)[1])
    assert "0" in bg["labels"]


def test_evaluate_table(files, capsys):
    assert main(["evaluate", files["pred"], files["ref"]]) == 0
    out = capsys.readouterr().out
    assert "Dice" in out and "HD95 mm" in out and "prediction empty" in out and "mean" in out


def test_evaluate_grid_mismatch_is_a_clear_error(files, capsys):
    other = files["affine"].copy()
    other[0, 3] += 1.8  # shifted by two voxels
    moved = _save(files["tmp"] / "moved_seg.nii.gz", files["ref_arr"], other)
    assert main(["evaluate", files["pred"], moved]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not on the same grid" in err and "--resample" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", files["pred"], moved, "--resample", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["resampled_reference"] is True
    # resampled reference = ref shifted by 2 voxels along axis 0 in pred's grid (zeros shifted in)
    shifted = np.zeros_like(files["ref_arr"])
    shifted[2:] = files["ref_arr"][:-2]
    p, r = files["pred_arr"] == 1, shifted == 1
    assert res["labels"]["1"]["dice"] == pytest.approx(2 * np.sum(p & r) / (p.sum() + r.sum()), abs=1e-6)
    assert main(["evaluate", files["pred"], str(files["tmp"] / "missing.nii.gz")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_compare_labels_writes_disagreement_map(files, capsys):
    out_path = files["tmp"] / "disagree.nii.gz"
    assert main(["compare-labels", files["pred"], files["ref"], "-o", str(out_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    img = nib.load(str(out_path))
    codes = np.asarray(img.dataobj)
    assert np.allclose(img.affine, files["affine"])
    a, b = files["pred_arr"], files["ref_arr"]
    assert np.array_equal(codes == 0, a == b)
    assert np.array_equal(codes == 1, (a != 0) & (b == 0))
    assert np.array_equal(codes == 2, (a == 0) & (b != 0))
    assert res["labels"]["2"]["dice"] == 0.0
    assert res["summary"]["agreement_fraction"] == pytest.approx(np.mean(a == b))


def test_compare_runs_two_models_on_one_scan(tmp_path, capsys):
    """Two pass-through ("identity") models that differ only in their number of classes: A clamps the
    scan's value 2 to label 1, B keeps it, so they disagree (code 3) exactly where the scan is 2."""
    for name, n in (("a", 2), ("b", 3)):
        spec = {"name": f"id{n}", "architecture": "identity", "spacing": [1, 1, 1], "normalization": {"kind": "none"},
                "roi_size": [16, 16, 16], "labels": [{"index": i, "name": f"class {i}"} for i in range(n)]}
        (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    scan = np.zeros((20, 18, 12), np.float32)
    scan[3:10, 3:10, 3:8] = 1
    scan[12:16, 5:9, 4:7] = 2
    scan_path = _save(tmp_path / "scan.nii.gz", scan, np.diag([1.0, 1.0, 1.0, 1.0]))
    out = tmp_path / "disagreement.nii.gz"
    rc = main(["compare", scan_path, "--model-a", str(tmp_path / "a.json"), "--model-b", str(tmp_path / "b.json"),
               "-o", str(out), "--device", "cpu", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    codes = np.asarray(nib.load(str(out)).dataobj)
    assert np.array_equal(codes == 3, scan == 2) and np.all(codes[scan != 2] == 0)
    assert res["summary"]["voxels_different_labels"] == int((scan == 2).sum())
    assert res["labels"]["2"]["voxels_a"] == 0 and res["labels"]["2"]["voxels_b"] == int((scan == 2).sum())
    assert res["labels"]["1"]["name"] == "class 1"


def test_compare_checks_both_models_and_the_output_before_running(tmp_path, capsys, monkeypatch):
    """A wrong model B, a bad output name or an unknown device used to surface only after model A had
    segmented the whole scan."""
    import napari_vit3d.inference as inference

    spec = {"name": "id2", "architecture": "identity", "spacing": [1, 1, 1], "normalization": {"kind": "none"},
            "roi_size": [16, 16, 16], "labels": [{"index": i, "name": f"class {i}"} for i in range(2)]}
    (tmp_path / "a.json").write_text(json.dumps(spec))
    scan_path = _save(tmp_path / "scan.nii.gz", np.zeros((20, 18, 12), np.float32), np.eye(4))
    calls = []
    monkeypatch.setattr(inference, "segment", lambda *a, **k: calls.append(1) or pytest.fail("segment ran"))
    base = ["compare", scan_path, "--model-a", str(tmp_path / "a.json"), "--device", "cpu"]
    cases = [(["--model-b", str(tmp_path / "missing.json"), "-o", str(tmp_path / "d.nii.gz")], "no such file"),
             (["--model-b", str(tmp_path / "a.json"), "-o", str(tmp_path / "d.txt")], "must end in .nii"),
             (["--model-b", str(tmp_path / "a.json"), "-o", str(tmp_path / "d.nii.gz"), "--device", "gpu7"],
              "unknown device")]
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert calls == []
