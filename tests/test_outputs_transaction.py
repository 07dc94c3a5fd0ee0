"""Outputs as transactions: every output of a command is checked before the work starts (writable folder, not
an input by path, link or inode, no unrelated sidecar replaced without --overwrite), written to temporaries and
renamed together at the end; Ctrl-C, SIGTERM and SIGHUP while writing (real processes, real signals) leave
every target as it was and no temporary behind; symbolic-link loops are one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_vit3d.cli import main
from napari_vit3d.io.atomic import output_transaction, write_text_atomic
from napari_vit3d.models import registry

TINY = {"name": "tiny", "architecture": "segformer3d", "in_channels": 1, "channel_names": ["T1"],
        "spacing": [1.0, 1.0, 1.0], "roi_size": [32, 32, 32],
        "arch_kwargs": {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
                        "decoder_dim": 16},
        "labels": [{"index": 0, "name": "bg"}, {"index": 1, "name": "fg"}]}


@pytest.fixture
def files(tmp_path):
    scan = tmp_path / "scan.nii.gz"
    data = np.random.default_rng(0).normal(100, 20, (40, 36, 32)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(scan))
    spec = tmp_path / "models" / "tiny.json"
    spec.parent.mkdir()
    spec.write_text(json.dumps(TINY))
    identity = tmp_path / "models" / "identity.json"  # the whole pipeline, without a network's compute
    identity.write_text(json.dumps({**TINY, "name": "identity", "architecture": "identity", "arch_kwargs": {},
                                    "normalization": {"kind": "none"}}))
    return {"scan": scan, "spec": spec, "identity": identity, "dir": tmp_path}


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".napari-vit3d-probe")]


def _forbid_model_loading(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(registry, "load_model", boom)


def _erf(files, out, *extra):
    return ["explain", str(files["scan"]), "--method", "erf", "--point-voxel", "20,18,16", "--model",
            str(files["spec"]), "-o", str(out), *extra]


def test_explain_never_silently_replaces_an_unrelated_sidecar(files, capsys):
    out = files["dir"] / "X.nii.gz"
    unrelated = files["dir"] / "X.json"
    unrelated.write_text('{"precious": true}')
    assert main(_erf(files, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and "X.json" in err
    assert unrelated.read_text() == '{"precious": true}' and not out.exists()
    assert main(_erf(files, out, "--overwrite")) == 0
    assert json.loads(unrelated.read_text())["method"] == "erf" and out.exists()
    assert main(_erf(files, out)) == 0  # its own sidecar: replaced without asking
    # the model spec in use is an input: never replaced, not even with --overwrite (the lost spec)
    spec_named_out = files["spec"].with_suffix(".nii.gz")
    before = files["spec"].read_text()
    assert main(_erf(files, spec_named_out, "--overwrite")) == 2
    assert "refusing to overwrite an input" in capsys.readouterr().err
    assert files["spec"].read_text() == before and not spec_named_out.exists()
    assert _no_temporaries(files["dir"])


def test_prompt_sidecar_is_checked_before_the_model_runs(files, capsys, monkeypatch):
    import napari_vit3d.prompt.session as prompt_session

    monkeypatch.setattr(prompt_session, "load_prompt_model", lambda *a, **k: pytest.fail("model loaded"))
    (files["dir"] / "mask.json").write_text("{}")
    assert main(["prompt", str(files["scan"]), "-o", str(files["dir"] / "mask.nii.gz"), "--point-voxel",
                 "20,18,16"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_links_to_the_input_are_refused_before_the_run(files, capsys, monkeypatch):
    _forbid_model_loading(monkeypatch)
    hard = files["dir"] / "hard.nii.gz"
    os.link(files["scan"], hard)
    soft = files["dir"] / "soft.nii.gz"
    soft.symlink_to(files["scan"])
    for out, how in ((hard, "hard link"), (soft, "through a link")):
        for opt in ("-o", "--save-probabilities"):
            argv = ["segment", str(files["scan"]), "-o", str(files["dir"] / "l.nii.gz"), "--model", str(files["spec"])]
            argv[argv.index("-o") + 1 if opt == "-o" else len(argv):] = ([str(out), "--model", str(files["spec"])]
                                                                         if opt == "-o" else [opt, str(out)])
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and how in err, err
    assert nib.load(str(hard)).shape == (40, 36, 32)


def test_symlink_loops_are_one_line(files, capsys):
    loop = files["dir"] / "loop.nii.gz"
    loop.symlink_to(loop)
    for argv in (["segment", str(loop), "-o", str(files["dir"] / "l.nii.gz"), "--model", str(files["spec"])],
                 ["segment", str(files["scan"]), "-o", str(loop), "--model", str(files["spec"])],
                 _erf({**files, "scan": loop}, files["dir"] / "e.nii.gz"),
                 _erf(files, loop)):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "symbolic link loop" in err, err


@pytest.fixture
def read_only(tmp_path):
    """A folder nobody can create files in, root included (chattr +i; chmod for other users)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
            pytest.skip("running as root without chattr +i: cannot make a folder read-only")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)])
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def test_a_read_only_output_folder_is_found_before_the_run(files, read_only, capsys, monkeypatch):
    _forbid_model_loading(monkeypatch)
    labels = files["dir"] / "labels.nii.gz"
    assert main(["segment", str(files["scan"]), "-o", str(labels), "--model", str(files["spec"]),
                 "--save-probabilities", str(read_only / "p.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not writable" in err and not labels.exists()


#: runs each case in a forked child of one process (imports paid once): the CLI segments, and while the
#: probabilities are being written (a partial temporary on disk) the child sends itself the named signal
SIGNAL_DRIVER = r"""
import json, os, signal, sys, time
from pathlib import Path
import napari_vit3d.io.nifti as nifti
import napari_vit3d.inference, napari_vit3d.io.formats, napari_vit3d.models.registry, napari_vit3d.usecases
from napari_vit3d.cli import main
napari_vit3d.inference.preload()  # the children inherit the imports
import napari_vit3d.review.uncertainty, tqdm
results = {}
for name, argv, target in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        # a shell that starts this in the background ignores SIGINT, and Python then installs no handler: the
        # test is about what the CLI does when the signal arrives, so give the child Python's own handler back
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sig, original = getattr(signal, name), nifti._atomic_save
        def interrupted(img, path):
            if Path(path).name != target:
                return original(img, path)
            def writer(tmp):
                Path(tmp).write_bytes(b"half a file " * 100000)
                os.kill(os.getpid(), sig)
                time.sleep(20)
            return nifti.atomic_write(path, writer, suffix=".nii.gz")
        nifti._atomic_save = interrupted
        os._exit(main(argv))
    results[name] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(results))
"""


def test_interrupts_while_writing_leave_every_output_as_it_was(files):
    folder = files["dir"] / "out"
    folder.mkdir()
    cases = []
    for sig in ("SIGINT", "SIGTERM", "SIGHUP"):
        labels, probs = folder / f"{sig}_labels.nii.gz", folder / f"{sig}_probs.nii.gz"
        labels.write_bytes(b"the user's earlier labels")
        cases.append([sig, ["segment", str(files["scan"]), "-o", str(labels), "--model", str(files["identity"]),
                            "--quiet", "--device", "cpu", "--save-probabilities", str(probs)], probs.name])
    proc = subprocess.run([sys.executable, "-c", SIGNAL_DRIVER, json.dumps(cases)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert codes == {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}, proc.stderr[-2000:]
    for sig in codes:
        assert (folder / f"{sig}_labels.nii.gz").read_bytes() == b"the user's earlier labels"
        assert not (folder / f"{sig}_probs.nii.gz").exists()
    assert _no_temporaries(folder), sorted(p.name for p in folder.iterdir())
    cancelled = [line for line in proc.stderr.splitlines() if line.startswith("cancelled")]
    assert len(cancelled) == 3 and not any("Traceback" in line for line in proc.stderr.splitlines())


def test_output_transaction_commits_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    with pytest.raises(KeyboardInterrupt), output_transaction():
        write_text_atomic(a, "new a")
        assert a.read_text() == "old a"  # staged, not yet in place
        write_text_atomic(b, "new b")
        raise KeyboardInterrupt
    assert a.read_text() == "old a" and not b.exists() and _no_temporaries(tmp_path)
    with output_transaction():
        write_text_atomic(a, "first")
        write_text_atomic(a, "second")  # written twice: the second wins
        write_text_atomic(b, "new b")
    assert a.read_text() == "second" and b.read_text() == "new b" and _no_temporaries(tmp_path)
