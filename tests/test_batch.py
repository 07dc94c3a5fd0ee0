"""Cohorts on Dask with real processes: a scheduler and two workers started here on 127.0.0.1, and the
LocalCluster default. Outputs are checked on their scans' grids with nibabel, not with our reader."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("distributed")

from conftest import COLIN27  # noqa: E402


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three small real scans (crops of Colin27, one LPS-like, one anisotropic) and one corrupt file,
    and a tiny SegFormer3D with saved weights."""
    import torch

    from napari_vit3d.models.checkpoints import save_safetensors
    from napari_vit3d.models.registry import build_network
    from napari_vit3d.models.spec import ModelSpec

    d = tmp_path_factory.mktemp("cohort")
    scans = d / "scans"
    (scans / "sub").mkdir(parents=True)
    img = nib.load(str(COLIN27))
    nib.save(img.slicer[40:100, 50:120, 50:110], str(scans / "a.nii.gz"))
    nib.save(img.slicer[60:120, 60:130, 40:100].as_reoriented(np.array([[0, -1], [1, -1], [2, 1]])),
             str(scans / "sub" / "b_lps.nii.gz"))
    c = img.slicer[50:110, 40:110, 60:120:2]
    nib.save(c, str(scans / "c_aniso.nii.gz"))
    raw = gzip.compress(b"\x5c\x01\x00\x00" + b"\x00" * 200)[:60]
    (scans / "broken.nii.gz").write_bytes(raw)
    spec = {"name": "tiny-batch", "architecture": "segformer3d",
            "arch_kwargs": {"embed_dims": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
                            "sr_ratios": [2, 1, 1, 1], "decoder_dim": 16},
            "in_channels": 1, "channel_names": ["T1"], "spacing": [4.0, 4.0, 4.0], "roi_size": [32, 32, 32],
            "labels": [{"index": 0, "name": "background"}, {"index": 1, "name": "tissue A"},
                       {"index": 2, "name": "tissue B"}], "weights": "tiny-batch.safetensors"}
    torch.manual_seed(0)
    net = build_network(ModelSpec.from_dict({k: v for k, v in spec.items() if k != "weights"}))
    save_safetensors(net, d / "tiny-batch.safetensors")
    (d / "tiny-batch.json").write_text(json.dumps(spec))
    return {"dir": d, "scans": scans, "model": str(d / "tiny-batch.json")}


def _read_summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _check_outputs(rows, scans: Path):
    for r in rows:
        if r["status"] != "ok":
            continue
        src = nib.load(r["input"])
        lab = nib.load(r["output"])
        assert lab.shape == src.shape[:3]
        np.testing.assert_allclose(lab.affine, src.affine, atol=1e-5)
        assert np.issubdtype(lab.get_data_dtype(), np.integer)


@pytest.fixture
def cluster(tmp_path):
    """``dask scheduler`` + ``dask worker --nworkers 2`` as real processes on 127.0.0.1."""
    exe = Path(sys.executable).parent / "dask"
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([str(exe), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(sched_file)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    t0 = time.time()
    while not sched_file.exists() and time.time() - t0 < 60:
        time.sleep(0.2)
    address = json.loads(sched_file.read_text())["address"]
    procs.append(subprocess.Popen([str(exe), "worker", address, "--nworkers", "2", "--nthreads", "1",
                                   "--no-dashboard", "--host", "127.0.0.1"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    client = Client(address, timeout="60s")
    client.wait_for_workers(2, timeout=120)
    workers = set(client.scheduler_info()["workers"])
    client.close()
    yield address, workers
    for p in procs[::-1]:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def test_batch_on_an_existing_cluster_isolates_failures_and_resumes(cohort, cluster, tmp_path):
    from napari_vit3d.cli import main

    address, workers = cluster
    out = tmp_path / "out"
    code = main(["batch", str(cohort["scans"]), "-o", str(out), "--model", cohort["model"], "--scheduler", address,
                 "--quiet"])
    assert code == 3                                  # one scan failed
    rows = _read_summary(out)
    assert len(rows) == 4
    by = {Path(r["input"]).name: r for r in rows}
    assert by["broken.nii.gz"]["status"] == "failed" and by["broken.nii.gz"]["message"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 3
    assert {r["worker"] for r in ok} <= workers        # the cluster's own workers did the work
    for r in ok:
        assert float(r["tissue A mL"]) >= 0 and float(r["tissue B mL"]) >= 0 and r["qc"]
        vols = nib.load(r["output"]).get_fdata()
        vox_ml = abs(np.linalg.det(nib.load(r["output"]).affine[:3, :3])) / 1000
        assert float(r["tissue A mL"]) == pytest.approx(float((vols == 1).sum() * vox_ml), abs=2e-3)
    _check_outputs(rows, cohort["scans"])
    # resume: nothing changed → every good scan is skipped; a changed scan is redone
    code = main(["batch", str(cohort["scans"]), "-o", str(out), "--model", cohort["model"], "--scheduler", address,
                 "--quiet"])
    assert code == 3
    rows2 = {Path(r["input"]).name: r for r in _read_summary(out)}
    assert all(rows2[n]["status"] == "skipped" for n in ("a.nii.gz", "b_lps.nii.gz", "c_aniso.nii.gz"))
    img = nib.load(str(cohort["scans"] / "a.nii.gz"))
    changed = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine), str(changed))
    shutil.copy(changed, cohort["scans"] / "a.nii.gz")
    main(["batch", str(cohort["scans"]), "-o", str(out), "--model", cohort["model"], "--scheduler", address, "--quiet"])
    rows3 = {Path(r["input"]).name: r for r in _read_summary(out)}
    assert rows3["a.nii.gz"]["status"] == "ok" and rows3["b_lps.nii.gz"]["status"] == "skipped"
    main(["batch", str(cohort["scans"]), "-o", str(out), "--model", cohort["model"], "--scheduler", address, "--quiet",
          "--overwrite"])
    assert all(r["status"] in ("ok", "failed") for r in _read_summary(out))


def test_local_cluster_default_and_list_file(cohort, tmp_path):
    from napari_vit3d.batch import run_batch

    lst = tmp_path / "scans.csv"
    lst.write_text("input,subject\n" + "\n".join(f"{p},{i}" for i, p in enumerate(
        [cohort["scans"] / "a.nii.gz", cohort["scans"] / "sub" / "b_lps.nii.gz", tmp_path / "missing.nii.gz"])))
    out = tmp_path / "out"
    seen = []
    rows = run_batch([], out, model=cohort["model"], list_file=lst, workers=1, save_uncertainty=True,
                     progress=lambda d, t, f: seen.append((d, t, f)))
    assert [r["status"] for r in rows].count("ok") == 2
    missing = [r for r in rows if r["input"].endswith("missing.nii.gz")][0]
    assert missing["status"] == "failed" and "missing.nii.gz" in missing["message"]
    assert seen[-1] == (3, 3, 1)
    assert len({r["worker"] for r in rows if r["status"] == "ok"}) == 1    # one LocalCluster worker
    assert (out / "a_uncertainty.nii.gz").exists()
    _check_outputs(rows, cohort["scans"])


def test_qc_flags():
    from napari_vit3d.batch.run import qc_flags

    rows = [{"status": "ok", "volumes_ml": {"brain": v}, "mean_uncertainty": u} for v, u in
            ((1000, 0.1), (1050, 0.1), (980, 0.5), (400, 0.1), (0, 0.0))] + [{"status": "failed"}]
    qc_flags(rows)
    assert [r["qc"] for r in rows] == ["ok", "ok", "uncertain", "volume_outlier", "empty", ""]


def test_explain_maps_and_cancel_keep_finished_rows(cohort, tmp_path):
    from napari_vit3d.batch import run_batch
    from napari_vit3d.errors import Cancelled

    out = tmp_path / "out"
    rows = run_batch([cohort["scans"] / "a.nii.gz"], out, model=cohort["model"], workers=1, explain=["erf"])
    assert rows[0]["status"] == "ok", rows
    erf = nib.load(str(out / "a_erf.nii.gz"))
    src = nib.load(str(cohort["scans"] / "a.nii.gz"))
    assert erf.shape == src.shape and np.allclose(erf.affine, src.affine, atol=1e-5)
    assert np.asarray(erf.dataobj).max() > 0
    # a cancel after the first finished scan: Cancelled, and summary.csv keeps that scan's row
    out2 = tmp_path / "out2"
    with pytest.raises(Cancelled):
        run_batch([cohort["scans"]], out2, model=cohort["model"], workers=1, cancel=lambda: True)
    kept = _read_summary(out2)
    assert len(kept) >= 1 and all(r["status"] in ("ok", "failed") for r in kept)


def test_multiscale_labels_equal_the_api_and_plain_outputs_are_redone(cohort, tmp_path):
    """``multiscale``: the labels written are ``segment(scales=MULTISCALE)``'s on the scan's grid; a plain
    run's outputs are not "up to date" for a multi-scale run (redone), and a multi-scale rerun skips."""
    from napari_vit3d.batch import run_batch
    from napari_vit3d.inference import segment
    from napari_vit3d.inference.engine import MULTISCALE
    from napari_vit3d.io.nifti import read_nifti

    scan = cohort["scans"] / "a.nii.gz"
    out = tmp_path / "out"
    plain = run_batch([scan], out, model=cohort["model"], workers=1)
    assert [r["status"] for r in plain] == ["ok"]
    first = np.asarray(nib.load(str(out / "a_labels.nii.gz")).dataobj)
    rows = run_batch([scan], out, model=cohort["model"], workers=1, multiscale=True)
    assert [r["status"] for r in rows] == ["ok"]                    # redone, not skipped
    got = np.asarray(nib.load(str(out / "a_labels.nii.gz")).dataobj)
    ref = segment(read_nifti(scan), cohort["model"], device="cpu", use_cache=False, scales=MULTISCALE)
    np.testing.assert_array_equal(got, ref.labels.data)
    assert not np.array_equal(got, first)
    again = run_batch([scan], out, model=cohort["model"], workers=1, multiscale=True)
    assert [r["status"] for r in again] == ["skipped"]


def test_a_spec_that_gains_post_processing_redoes_its_outputs(cohort, tmp_path):
    """The model's label post-processing (``ModelSpec.postprocess``) changes the labels, so outputs written
    before the spec asked for it are redone (not skipped), with the API's labels; a rerun then skips."""
    import shutil

    from napari_vit3d.batch import run_batch
    from napari_vit3d.inference import segment
    from napari_vit3d.io.nifti import read_nifti

    mdir = tmp_path / "model"
    mdir.mkdir()
    shutil.copy(cohort["dir"] / "tiny-batch.safetensors", mdir)
    spec = json.loads((cohort["dir"] / "tiny-batch.json").read_text())
    (mdir / "tiny-batch.json").write_text(json.dumps(spec))
    scan, out = cohort["scans"] / "a.nii.gz", tmp_path / "out"
    assert [r["status"] for r in run_batch([scan], out, model=str(mdir / "tiny-batch.json"), workers=1)] == ["ok"]
    (mdir / "tiny-batch.json").write_text(json.dumps({**spec, "postprocess": {"tissue_em": {"labels": [1, 2]}}}))
    rows = run_batch([scan], out, model=str(mdir / "tiny-batch.json"), workers=1)
    assert [r["status"] for r in rows] == ["ok"]                     # redone
    ref = segment(read_nifti(scan), str(mdir / "tiny-batch.json"), device="cpu", use_cache=False)
    assert "postprocess" in ref.metadata["settings"]
    np.testing.assert_array_equal(np.asarray(nib.load(str(out / "a_labels.nii.gz")).dataobj), ref.labels.data)
    again = run_batch([scan], out, model=str(mdir / "tiny-batch.json"), workers=1)
    assert [r["status"] for r in again] == ["skipped"]
    # postprocess=False (batch --no-postprocess): redone, with segment(postprocess=False)'s labels; a rerun skips
    off = run_batch([scan], out, model=str(mdir / "tiny-batch.json"), workers=1, postprocess=False)
    assert [r["status"] for r in off] == ["ok"]
    plain = segment(read_nifti(scan), str(mdir / "tiny-batch.json"), device="cpu", use_cache=False, postprocess=False)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out / "a_labels.nii.gz")).dataobj), plain.labels.data)
    assert not np.array_equal(plain.labels.data, ref.labels.data)
    assert [r["status"] for r in run_batch([scan], out, model=str(mdir / "tiny-batch.json"), workers=1,
                                           postprocess=False)] == ["skipped"]
