"""Compare two label maps of one scan (two models, or a model and a correction).

:func:`compare_labels` returns a disagreement map on the scan's grid and a per-label agreement
table. Disagreement codes (uint8):

* 0 – both say the same label (background included);
* 1 – only A labels the voxel (B says background);
* 2 – only B labels the voxel (A says background);
* 3 – both label the voxel, with different labels.

:func:`compare_with_model` runs a second model B (``inference.segment``) on the scan that gave label
map A and compares the two (the Review widget's "Compare with another model");
:func:`format_comparison` is the plain-text table the ``compare`` commands print and the widget shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import GeometryError
from ..io.geometry import same_grid
from ..io.volume import Volume

AGREE, ONLY_A, ONLY_B, DIFFERENT = 0, 1, 2, 3
CODE_NAMES = {AGREE: "agree", ONLY_A: "only A", ONLY_B: "only B", DIFFERENT: "different labels"}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty (perfect agreement on absence)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.count_nonzero(a & b)) / denom


def disagreement_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint8 codes (see module doc) for two label arrays of one shape."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise GeometryError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    out = np.zeros(a.shape, np.uint8)
    diff = a != b
    fa, fb = a != 0, b != 0
    out[diff & fa & ~fb] = ONLY_A
    out[diff & ~fa & fb] = ONLY_B
    out[diff & fa & fb] = DIFFERENT
    return out


@dataclass
class Comparison:
    map: Volume
    per_label: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"codes": {str(k): v for k, v in CODE_NAMES.items()}, "summary": self.summary,
                "labels": self.per_label}


def compare_labels(a: Volume, b: Volume, *, label_table=None, name_a: str = "A", name_b: str = "B") -> Comparison:
    """Disagreement map (a Volume on A's grid) and per-label agreement between label maps A and B."""
    if not same_grid(a.affine, a.spatial_shape, b.affine, b.spatial_shape):
        raise GeometryError(f"{name_a} ({a.name}) and {name_b} ({b.name}) are not on the same grid "
                            f"({a.spatial_shape} vs {b.spatial_shape}); compare outputs made on one scan")
    da, db = np.asarray(a.data), np.asarray(b.data)
    codes = disagreement_map(da, db)
    vox_ml = a.voxel_volume_ml
    labels = sorted((set(np.unique(da).tolist()) | set(np.unique(db).tolist())) - {0})
    per = {}
    for lab in labels:
        ma, mb = da == lab, db == lab
        na, nb = int(ma.sum()), int(mb.sum())
        per[str(int(lab))] = {
            "name": label_table.name(lab) if label_table is not None else f"label {int(lab)}",
            "dice": dice(ma, mb), "voxels_a": na, "voxels_b": nb,
            "volume_a_ml": na * vox_ml, "volume_b_ml": nb * vox_ml,
            "voxels_both": int(np.count_nonzero(ma & mb)),
        }
    counts = np.bincount(codes.ravel(), minlength=4)
    summary = {"name_a": name_a, "name_b": name_b, "voxels": int(codes.size),
               "agreement_fraction": float(counts[AGREE] / codes.size),
               "voxels_only_a": int(counts[ONLY_A]), "voxels_only_b": int(counts[ONLY_B]),
               "voxels_different_labels": int(counts[DIFFERENT]),
               "disagreement_ml": float((codes.size - counts[AGREE]) * vox_ml),
               "mean_dice": float(np.mean([v["dice"] for v in per.values()])) if per else 1.0}
    vol = a.with_data(codes, name=f"{a.name} · disagreement",
                      metadata={"kind": "labels", "method": "compare_labels", "codes": CODE_NAMES,
                                "a": name_a, "b": name_b})
    return Comparison(map=vol, per_label=per, summary=summary)


def compare_with_model(labels_a: Volume, scan: Volume, model_b, *, label_table=None, name_a: str = "A",
                       name_b: str | None = None, device="auto", overlap: float = 0.25,
                       sw_batch_size: int | None = None, progress=None, cancel=None) -> Comparison:
    """Segment ``scan`` with ``model_b`` (a loaded model, or a name / spec / checkpoint for the registry) and
    compare ``labels_a`` (a label map on the scan's grid, e.g. model A's output) with its labels.

    Label names: ``label_table`` (A's) first, then model B's own names for labels only B has.
    ``progress`` and ``cancel`` go to :func:`napari_vit3d.inference.segment` (a True ``cancel()``
    raises :class:`~napari_vit3d.errors.Cancelled`).
    """
    from ..inference import segment
    from ..io.labels import LabelTable

    result = segment(scan, model_b, device=device, overlap=overlap, sw_batch_size=sw_batch_size,
                     progress=progress, cancel=cancel, return_probabilities=False)
    meta = getattr(result, "metadata", None) or {}
    names = {int(k): str(v) for k, v in (meta.get("label_names") or {}).items()}
    if label_table is not None:
        names.update({int(e.index): e.name for e in label_table})
    table = LabelTable.default(names.keys(), names) if names else None
    return compare_labels(labels_a, result.labels, label_table=table, name_a=name_a,
                          name_b=name_b or str(meta.get("model") or model_b))


def format_comparison(result: dict) -> str:
    """A :meth:`Comparison.to_dict` as plain text: who A and B are, the summary, one row per label."""
    s = result["summary"]
    lines = [f"A = {s['name_a']}", f"B = {s['name_b']}",
             f"agreement {100 * s['agreement_fraction']:.2f}% of {s['voxels']} voxels; "
             f"only A {s['voxels_only_a']}, only B {s['voxels_only_b']}, different labels "
             f"{s['voxels_different_labels']} ({s['disagreement_ml']:.3f} mL disagree)"]
    header = ["label", "name", "Dice", "A mL", "B mL"]
    rows = [[k, e["name"], f"{e['dice']:.4f}", f"{e['volume_a_ml']:.3f}", f"{e['volume_b_ml']:.3f}"]
            for k, e in result["labels"].items()]
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header] + rows]
    return "\n".join(lines)


__all__ = ["AGREE", "CODE_NAMES", "Comparison", "DIFFERENT", "ONLY_A", "ONLY_B", "compare_labels",
           "compare_with_model", "dice", "disagreement_map", "format_comparison"]
