"""The npe2 manifest is valid, importable and lists what napari should offer."""

from __future__ import annotations

from fnmatch import fnmatch

from npe2 import PluginManifest


def test_manifest_validates_with_imports():
    # what `npe2 validate napari_vit3d --imports` does, in-process
    mf = PluginManifest._from_package_or_name("napari_vit3d")
    assert mf.name == "napari-vit3d"
    mf.validate_imports()
    for cmd in mf.contributions.commands:
        assert cmd.id.startswith("napari-vit3d.")
        assert callable(cmd.python_name and _resolve(cmd.python_name))


def _resolve(python_name):
    import importlib

    module, _, attr = python_name.partition(":")
    return getattr(importlib.import_module(module), attr)


def test_manifest_contributions():
    mf = PluginManifest.from_distribution("napari-vit3d")
    readers = mf.contributions.readers
    assert len(readers) == 1  # two readers for one pattern would be tried in random order
    for name in ("scan.nii", "scan.nii.gz", "SCAN.NII.GZ"):
        assert any(fnmatch(name.lower(), p) for p in readers[0].filename_patterns)
    writers = sorted((tuple(w.layer_types), tuple(w.filename_extensions)) for w in mf.contributions.writers)
    assert writers == [(("image",), (".nii.gz", ".nii")), (("labels",), (".nii.gz", ".nii")),
                       (("labels",), (".seg.nrrd", ".nrrd", ".mha", ".dcm"))]
    for name in ("scan.nrrd", "scan.mha", "scan.mgz", "series.zip", "slice.dcm"):
        assert any(fnmatch(name, p) for p in readers[0].filename_patterns), name
    assert readers[0].accepts_directories  # DICOM folders
    samples = {s.key: s.display_name for s in mf.contributions.sample_data}
    assert samples == {"colin27_t1": "Colin27 head T1 (1 mm)", "mni152_2009a_t1": "MNI152 2009a T1"}
