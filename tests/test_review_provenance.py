"""Provenance record (hashes, edits per label) and label tables (JSON and ITK-SNAP round trips)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re

import numpy as np
import pytest

from napari_vit3d import __version__
from napari_vit3d.errors import GeometryError, VolumeError
from napari_vit3d.io.labels import LabelEntry, LabelTable
from napari_vit3d.io.volume import Volume
from napari_vit3d.models.spec import LabelInfo, ModelSpec
from napari_vit3d.review.provenance import build_provenance, write_json_atomic


def _scan():
    rng = np.random.default_rng(0)
    return Volume(rng.random((10, 12, 8)).astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), name="scan")


def test_provenance_records_hashes_and_edits(tmp_path):
    scan = _scan()
    model = np.zeros(scan.spatial_shape, np.uint8)
    model[2:6, 2:6, 2:6] = 1          # 64
    model[7:9, 7:9, 1:3] = 2          # 8
    corr = model.copy()
    corr[6, 2:6, 2:6] = 1             # +16 label 1
    corr[2, 2:4, 2] = 0               # -2 label 1
    corr[7:9, 7:9, 1:3] = 0           # label 2 removed entirely
    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(b"weights bytes")
    table = LabelTable([LabelEntry(0, "background"), LabelEntry(1, "brain"), LabelEntry(2, "lesion")])
    rec = build_provenance(scan, {"name": "tiny", "checkpoint": str(ckpt)}, {"overlap": 0.25, "device": "cpu"},
                           model, corr, table)
    assert rec["scan"]["content_sha256"] == scan.content_hash()
    assert rec["model"]["checkpoint_sha256"] == hashlib.sha256(b"weights bytes").hexdigest()
    assert rec["settings"] == {"overlap": 0.25, "device": "cpu"}
    assert rec["software"]["version"] == __version__
    when = dt.datetime.fromisoformat(rec["date"].replace("Z", "+00:00"))
    assert when.tzinfo is not None and when.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 3600
    edits = {e["label"]: e for e in rec["edits"]}
    assert edits[1]["name"] == "brain" and edits[1]["voxels_added"] == 16 and edits[1]["voxels_removed"] == 2
    m1, c1 = model == 1, corr == 1
    assert edits[1]["dice"] == pytest.approx(2 * np.sum(m1 & c1) / (m1.sum() + c1.sum()))
    assert edits[2]["voxels_removed"] == 8 and edits[2]["voxels_added"] == 0 and edits[2]["dice"] == 0.0
    assert edits[1]["ml_added"] == pytest.approx(16 * 2.0 / 1000)
    assert rec["edits_total"]["voxels_changed"] == 26
    out = write_json_atomic(tmp_path / "prov.json", rec)
    assert json.loads(out.read_text()) == json.loads(json.dumps(rec))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    with pytest.raises(GeometryError):
        build_provenance(scan, {}, {}, model[:5], corr[:5])
    with pytest.raises(VolumeError):
        write_json_atomic(tmp_path / "bad.json", {"x": float("nan")})
    assert not (tmp_path / "bad.json").exists()


def test_label_table_from_spec_and_json_round_trip(tmp_path):
    spec = ModelSpec(name="m", architecture="identity",
                     labels=(LabelInfo(0, "background", (0, 0, 0, 0)), LabelInfo(1, "grey matter", (0.2, 0.4, 0.6, 1.0)),
                             LabelInfo(3, 'white "matter"', (1.0, 1.0, 0.5, 0.5))))
    t = LabelTable.from_spec(spec)
    assert t.indices == [0, 1, 3] and t.name(1) == "grey matter" and t.color_dict()[3] == (1.0, 1.0, 0.5, 0.5)
    p = t.write_json(tmp_path / "labels.json")
    back = LabelTable.read(p)
    assert back == t
    assert LabelTable.from_spec(ModelSpec(name="n", architecture="identity", labels=(LabelInfo(1, "x"),))).indices == [0, 1]
    d = LabelTable.default([2, 5])
    assert d.indices == [0, 2, 5] and d.name(5) == "label 5" and len(set(d.color_dict()[i] for i in (2, 5))) == 2
    assert d.with_missing([5, 7]).indices == [0, 2, 5, 7]


def test_itksnap_round_trip_and_format(tmp_path):
    t = LabelTable([LabelEntry(0, "Clear Label", (0, 0, 0, 0), False, False),
                    LabelEntry(1, "left hippocampus", (1.0, 0.5, 0.0, 1.0)),
                    LabelEntry(17, "lesion core", (0.1, 0.9, 0.4, 0.45), True, False)])
    path = t.write_itksnap(tmp_path / "labels.txt")
    lines = [l for l in path.read_text().splitlines() if l and not l.startswith("#")]
    pattern = re.compile(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([01])\s+([01])\s+"([^"]*)"$')
    parsed = [pattern.match(l).groups() for l in lines]
    assert parsed[1] == ("1", "255", "128", "0", "1", "1", "1", "left hippocampus")
    assert parsed[2][:4] == ("17", "26", "230", "102") and float(parsed[2][4]) == pytest.approx(0.45)
    assert parsed[2][5:] == ("1", "0", "lesion core")
    back = LabelTable.read(path)
    assert back.indices == t.indices and [e.name for e in back] == [e.name for e in t]
    for a, b in zip(back, t):
        assert np.allclose(a.color, b.color, atol=1 / 255) and (a.visible, a.mesh) == (b.visible, b.mesh)
    # a file written by ITK-SNAP itself (comment header, tabs, spaces in names)
    snap = ('# ITK-SnAP Label Description File\n'
            '    0     0    0    0        0  0  0    "Clear Label"\n'
            '    1   255    0    0        1  1  1    "Label 1"\n'
            '\t2\t0\t255\t0\t0.5\t1\t0\t"white matter (left)"\n')
    tt = LabelTable.from_itksnap(snap)
    assert tt.indices == [0, 1, 2] and tt.name(2) == "white matter (left)" and tt[2].color == (0, 1.0, 0, 0.5)
    with pytest.raises(VolumeError, match="line 2"):
        LabelTable.from_itksnap('# c\n1 300 0 0 1 1 1 "x"\n')
    with pytest.raises(VolumeError, match="duplicate"):
        LabelTable.from_itksnap('1 0 0 0 1 1 1 "x"\n1 0 0 0 1 1 1 "y"\n')


def test_export_review_lands_on_the_source_scan(tmp_path):
    import nibabel as nib
    from nibabel.affines import apply_affine

    from napari_vit3d.io.nifti import read_nifti
    from napari_vit3d.review.corrections import label_volumes
    from napari_vit3d.review.export import export_review

    # an LPS-like, anisotropic scan with a translation; codes: scanner
    aff = np.array([[-0.9, 0, 0, 40.0], [0, -0.9, 0, 30.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.random.default_rng(2).random((12, 10, 6)).astype(np.float32), aff)
    img.set_sform(aff, code=1)
    img.set_qform(aff, code=1)
    scan_path = tmp_path / "scan.nii.gz"
    nib.save(img, str(scan_path))
    scan = read_nifti(scan_path)
    model = np.zeros(scan.spatial_shape, np.uint8)
    model[2:6, 2:6, 1:4] = 1
    corrected = model.copy()
    corrected[8, 7, 4] = 2                      # one painted voxel of a new label
    corrected[2, 2, 1] = 0
    vols = label_volumes(corrected, scan.affine)
    assert vols[1]["voxels"] == 47 and vols[2]["ml"] == pytest.approx(0.9 * 0.9 * 2.5 / 1000)
    table = LabelTable([LabelEntry(0, "background"), LabelEntry(1, "brain")])
    paths = export_review(tmp_path / "out_seg.nii.gz", scan, corrected, model_labels=model,
                          model_info={"name": "tiny"}, settings={"device": "cpu"}, label_table=table)
    back = nib.load(str(paths["labels"]))
    data = np.asarray(back.dataobj)
    assert np.array_equal(data, corrected) and data.dtype.kind in "iu"
    assert np.allclose(back.affine, aff) and int(back.header["sform_code"]) == 1
    painted = np.argwhere(data == 2)[0]
    assert np.allclose(apply_affine(back.affine, painted), apply_affine(aff, [8, 7, 4]))
    assert LabelTable.read(paths["label_table_json"]).name(2) == "label 2"   # missing label added
    assert LabelTable.read(paths["label_table_itksnap"]).name(1) == "brain"
    prov = json.loads(paths["provenance"].read_text())
    edits = {e["label"]: e for e in prov["edits"]}
    assert edits[2]["voxels_added"] == 1 and edits[1]["voxels_removed"] == 1
    assert prov["scan"]["content_sha256"] == scan.content_hash()
    with pytest.raises(VolumeError, match="overwrite the source scan"):
        export_review(scan_path, scan, corrected)


def test_export_review_writes_nothing_when_the_record_fails(tmp_path):
    """A provenance problem (model labels on another grid, a NaN setting) used to surface only after
    the label file and label tables were written, leaving labels without their provenance."""
    from napari_vit3d.errors import GeometryError
    from napari_vit3d.review.export import export_review

    aff = np.diag([1.2, 1.0, 2.0, 1.0])
    scan = Volume(data=np.zeros((8, 7, 5), np.float32), affine=aff, name="scan")
    corrected = np.zeros(scan.spatial_shape, np.uint8)
    corrected[2:5, 2:5, 1:3] = 1
    with pytest.raises(GeometryError):
        export_review(tmp_path / "a.nii.gz", scan, corrected, model_labels=np.zeros((8, 7, 4), np.uint8))
    with pytest.raises(VolumeError, match="finite"):
        export_review(tmp_path / "b.nii.gz", scan, corrected, settings={"overlap": float("nan")})
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    paths = export_review(tmp_path / "c.nii", scan, corrected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.itksnap.txt", "c.labels.json", "c.nii",
                                                          "c.provenance.json"]
    assert json.loads(paths["provenance"].read_text())["exported_labels"] == "c.nii"
