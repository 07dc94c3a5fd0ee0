"""A real wheel works, not only the editable checkout: build it, install it into a fresh virtual
environment and open the bundled sample from there.

The fresh venv gets no dependencies of its own: a ``.pth`` file adds the dev venv's site-packages to
its path. Lines of a ``.pth`` file only extend ``sys.path``; ``.pth`` files inside a folder added that
way are not processed, so the dev venv's editable-install finder is never activated and
``napari_vit3d`` can only come from the wheel.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


def _copy_source(dest: Path) -> Path:
    """The package's sources in a scratch folder, so the build never writes into the checkout."""
    src = dest / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "napari_vit3d", src / "napari_vit3d", ignore=_IGNORE)  # resources/ included
    return src


def _can_build_offline() -> bool:
    """setuptools ≥ 77 (the SPDX ``license`` expression in pyproject.toml) builds wheels by itself."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name):
        try:
            return tuple(int(p) for p in version(name).split(".")[:2] if p.isdigit())
        except PackageNotFoundError:
            return None

    st = ver("setuptools")
    return st is not None and st >= (77, 0)


def _run(cmd, **kw):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_wheel_installs_and_opens_sample_in_fresh_venv(tmp_path):
    src = _copy_source(tmp_path)
    wheels = tmp_path / "wheels"
    if _can_build_offline():  # the dev venv's setuptools can build the wheel: no download needed
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
              "-q", "-w", wheels, src])
    else:  # an old setuptools (e.g. the one python3.11 -m venv brings): pip fetches the build backend
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, src])
    (wheel,) = wheels.glob("napari_vit3d-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    licences = {n.split(".dist-info/licenses/", 1)[1] for n in names if ".dist-info/licenses/" in n}
    assert {"LICENSE", "napari_vit3d/resources/NOTICE.txt"} <= licences, licences
    for required in ("napari_vit3d/napari.yaml", "napari_vit3d/resources/NOTICE.txt",
                     "napari_vit3d/resources/samples/colin27_t1.nii.gz",
                     "napari_vit3d/resources/samples/colin27_brainmask.nii.gz",
                     "napari_vit3d/resources/samples/mni152_2009a_t1.nii.gz"):
        assert required in names, required

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    vpy = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", vpy, "install", "--no-deps", "--no-index", "-q", wheel])
    site = Path(_run([vpy, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    (site / "zz_dev_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    script = textwrap.dedent("""
        import json, sys
        import napari_vit3d
        from napari_vit3d.io import read_nifti
        from napari_vit3d.io.samples import sample_path
        from npe2 import PluginManifest
        path = sample_path("colin27_t1")
        vol = read_nifti(path)
        mf = PluginManifest.from_distribution("napari-vit3d")
        print(json.dumps({"package": napari_vit3d.__file__, "sample": str(path), "shape": list(vol.data.shape),
                          "affine": vol.affine.tolist(), "manifest": mf.name,
                          "sample_keys": [s.key for s in mf.contributions.sample_data]}))
    """)
    out = json.loads(_run([vpy, "-c", script], cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert Path(out["package"]).resolve().is_relative_to(venv.resolve())
    assert Path(out["sample"]).resolve().is_relative_to(venv.resolve())
    ref = nib.load(str(REPO / "napari_vit3d" / "resources" / "samples" / "colin27_t1.nii.gz"))
    assert tuple(out["shape"]) == ref.shape
    np.testing.assert_allclose(out["affine"], ref.affine)
    assert out["manifest"] == "napari-vit3d"
    assert out["sample_keys"] == ["colin27_t1", "mni152_2009a_t1"]
