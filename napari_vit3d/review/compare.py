"""Compare two label maps of one scan (two models, or a model and a correction).

:func:`compare_labels` returns a disagreement map on the scan's grid and a per-label agreement
table. Disagreement codes (uint8):

* 0 – both say the same label (background included);
* 1 – only A labels the voxel (B says background);
* 2 – only B labels the voxel (A says background);
* 3 – both label the voxel, with different labels.
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


__all__ = ["AGREE", "CODE_NAMES", "Comparison", "DIFFERENT", "ONLY_A", "ONLY_B", "compare_labels", "dice",
           "disagreement_map"]
