"""Atomic writing (``io.atomic``): the one helper every file the package writes goes through."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from napari_vit3d.errors import FileWriteError, VolumeError
from napari_vit3d.io.atomic import atomic_write, sha256_file, write_json_atomic, write_text_atomic
from napari_vit3d.io.labels import LabelTable
from napari_vit3d.review.provenance import write_json_atomic as provenance_write_json


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_text_and_json_files_get_the_usual_permissions(tmp_path):
    """``mkstemp`` makes 0600 files: a label table or provenance record must be readable like any other file."""
    want = 0o666 & ~_umask()
    table = LabelTable.default([1, 2])
    assert _mode(table.write_json(tmp_path / "t.json")) == want
    assert _mode(table.write_itksnap(tmp_path / "t.txt")) == want
    assert _mode(write_json_atomic(tmp_path / "r.json", {"a": 1})) == want
    os.chmod(tmp_path / "r.json", 0o640)  # replacing a file keeps its mode
    assert _mode(write_json_atomic(tmp_path / "r.json", {"a": 2})) == 0o640
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 2}


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    p = write_text_atomic(tmp_path / "x.txt", "old")

    def boom(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_text() == "old"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["x.txt"]
    with pytest.raises(VolumeError, match="not a finite number"):
        write_json_atomic(p, {"x": float("nan")})
    assert p.read_text() == "old"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["x.txt"]


def test_suffix_reaches_the_writer_and_missing_folder_is_one_line(tmp_path):
    seen = []
    atomic_write(tmp_path / "a.npz", lambda tmp: (seen.append(tmp), np.savez(tmp, x=np.arange(3))), suffix=".npz")
    assert seen[0].endswith(".tmp.npz")
    assert np.load(tmp_path / "a.npz")["x"].tolist() == [0, 1, 2]
    with pytest.raises(VolumeError, match="does not exist"):
        write_text_atomic(tmp_path / "nope" / "a.txt", "x")


def test_one_home(tmp_path):
    import hashlib

    from napari_vit3d.models import checkpoints
    from napari_vit3d.review import provenance

    assert provenance_write_json is write_json_atomic
    assert checkpoints.file_sha256 is sha256_file is provenance.sha256_file
    p = write_text_atomic(tmp_path / "h.txt", "hello")
    assert sha256_file(p) == hashlib.sha256(b"hello").hexdigest()


def test_file_system_refusals_are_one_line_errors(tmp_path):
    """A name the file system refuses used to escape as a raw OSError (a traceback in the CLI); a legal
    name near the limit failed on the longer temporary name."""
    near_limit = tmp_path / ("b" * 245 + ".json")
    assert json.loads(write_json_atomic(near_limit, {"a": 1}).read_text()) == {"a": 1}
    too_long = tmp_path / ("a" * 300 + ".json")
    with pytest.raises(FileWriteError, match="cannot write") as info:
        write_json_atomic(too_long, {"a": 1})
    assert isinstance(info.value, OSError) and "\n" not in str(info.value)

    def refuse(tmp):
        raise PermissionError(13, "Permission denied", tmp)

    with pytest.raises(FileWriteError, match=r"x\.txt: cannot write \(Permission denied\)"):
        atomic_write(tmp_path / "x.txt", refuse)
    assert sorted(p.name for p in tmp_path.iterdir()) == [near_limit.name]


def test_reading_a_name_the_file_system_refuses(tmp_path):
    from napari_vit3d.io.nifti import read_nifti

    with pytest.raises(VolumeError, match="cannot be opened"):
        read_nifti(tmp_path / ("a" * 300 + ".nii.gz"))


def test_cli_turns_os_errors_into_one_line(monkeypatch, capsys, tmp_path):
    from napari_vit3d import cli
    from napari_vit3d.cli import info

    def boom(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out.nii.gz"))

    monkeypatch.setattr(info, "run", boom)
    assert cli.main(["info", "whatever.nii.gz"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'out.nii.gz'}: Permission denied"
