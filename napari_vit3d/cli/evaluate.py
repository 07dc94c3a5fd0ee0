"""``napari-vit3d evaluate PRED REF``: per-label Dice, HD95, MSD, recall, precision, volume difference.

Prints a table, or one JSON object with ``--json`` (the dict of :func:`napari_vit3d.review.metrics.evaluate`).
Exits 2 with a one-line message when the two files are not on the same grid, unless ``--resample``.
"""

from __future__ import annotations

import sys

from ..errors import VolumeError

_COLUMNS = (("dice", "Dice", "{:.4f}"), ("hd95", "HD95 mm", "{:.2f}"), ("msd", "MSD mm", "{:.2f}"),
            ("recall", "recall", "{:.4f}"), ("precision", "precision", "{:.4f}"),
            ("volume_diff_ml", "ΔV mL", "{:+.3f}"), ("auc_pr", "AUC-PR", "{:.4f}"))


def _parse_labels(text):
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise VolumeError(f"--labels must be comma-separated integers, got {text!r}") from None


def _fmt(v, pattern):
    return "n/a" if v is None else pattern.format(v)


def format_table(result: dict) -> str:
    has_auc = any("auc_pr" in e for e in result["labels"].values())
    cols = [c for c in _COLUMNS if c[0] != "auc_pr" or has_auc]
    header = ["label", "name"] + [c[1] for c in cols] + ["note"]
    rows = []
    for key, e in result["labels"].items():
        note = "both empty" if e["pred_empty"] and e["ref_empty"] else \
            "prediction empty" if e["pred_empty"] else "reference empty" if e["ref_empty"] else ""
        rows.append([key, e["name"]] + [_fmt(e.get(k), f) for k, _, f in cols] + [note])
    if result["labels"]:
        rows.append(["mean", ""] + [_fmt(result["mean"].get(k), f) for k, _, f in cols] + [""])
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header] + rows]
    sp = ", ".join(f"{s:.3g}" for s in result["spacing_mm"])
    resampled = result["resampled_reference"]
    extra = " (reference resampled onto the prediction grid, nearest neighbour)" if resampled else ""
    lines.insert(0, f"grid {tuple(result['shape'])}, spacing ({sp}) mm{extra}")
    if not result["labels"]:
        lines.append("(no labels to evaluate)")
    return "\n".join(lines)


def run(args) -> int:
    from ..io.formats import read_scan
    from ..io.labels import LabelTable
    from ..review.metrics import evaluate
    from ..review.provenance import to_json

    pred = read_scan(args.pred, as_labels=True)
    ref = read_scan(args.ref, as_labels=True)
    prob = read_scan(args.probabilities, as_labels=False) if args.probabilities else None
    table = LabelTable.read(args.label_table) if args.label_table else None
    result = evaluate(pred, ref, probabilities=prob, labels=_parse_labels(args.labels),
                      include_background=args.include_background, resample=args.resample, label_table=table)
    if args.json:
        sys.stdout.write(to_json(result, indent=None) + "\n")
    else:
        print(format_table(result))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="metrics of a predicted label map against a reference",
                              description="Per-label Dice, HD95 and mean surface distance (mm), recall, precision, "
                                          "volume difference (mL, prediction minus reference) and AUC-PR.")
    p.add_argument("pred", metavar="PRED", help="predicted label map (NIfTI, NRRD, .seg.nrrd, MHA or MGZ)")
    p.add_argument("ref", metavar="REF", help="reference label map (NIfTI, NRRD, .seg.nrrd, MHA or MGZ)")
    p.add_argument("--probabilities", metavar="P",
                   help="class probabilities on PRED's grid (4D, channel c = label c; 3D for a single label 1)")
    p.add_argument("--labels", metavar="L1,L2", help="labels to evaluate (default: all present)")
    p.add_argument("--label-table", metavar="FILE", help="label names from a JSON or ITK-SNAP label file")
    p.add_argument("--include-background", action="store_true", help="also evaluate label 0")
    p.add_argument("--resample", action="store_true",
                   help="if the grids differ, resample REF onto PRED's grid (nearest neighbour)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)
