"""``napari-vit3d compare``: where do two models disagree on one scan?

* ``compare SCAN --model-a A --model-b B -o DISAGREEMENT.nii.gz`` runs both models
  (``inference.segment``) and writes the disagreement map on the scan's grid;
* ``compare-labels A.nii.gz B.nii.gz [-o DISAGREEMENT.nii.gz]`` compares two label files already made
  on one scan.

Both print a per-label agreement table (Dice, volumes), or one JSON object with ``--json``.
Disagreement codes: 0 agree, 1 only A labels the voxel, 2 only B, 3 both with different labels.
"""

from __future__ import annotations

import sys

from ._common import add_trust_option, check_output_paths, model_files, outputs_transaction


def format_table(result: dict) -> str:
    from ..review.compare import format_comparison

    return format_comparison(result)


def _finish(args, comparison, scan_source=None) -> int:
    from ..io.nifti import write_labels
    from ..review.provenance import to_json

    result = comparison.to_dict()
    if args.output:
        vol = comparison.map
        protect = tuple(p for p in (scan_source, getattr(args, "a", None), getattr(args, "b", None)) if p)
        with outputs_transaction():
            write_labels(args.output, vol.data, vol.affine, header=vol.header, protect=protect)
        result["output"] = str(args.output)
    if args.json:
        sys.stdout.write(to_json(result, indent=None) + "\n")
    else:
        print(format_table(result))
        if args.output:
            print(f"disagreement map written to {args.output}")
    return 0


def run_labels(args) -> int:
    from ..io.formats import read_scan
    from ..io.labels import LabelTable
    from ..review.compare import compare_labels

    if args.output:
        check_output_paths(args.a, [args.output], inputs=(args.b, args.label_table))
    a = read_scan(args.a, as_labels=True)
    b = read_scan(args.b, as_labels=True)
    table = LabelTable.read(args.label_table) if args.label_table else None
    return _finish(args, compare_labels(a, b, label_table=table, name_a=args.a, name_b=args.b))


def run_models(args) -> int:
    from ..inference import resolve_device, segment
    from ..inference.preflight import check_segmentation
    from ..io.formats import read_scan
    from ..io.labels import LabelTable
    from ..models.registry import get_spec, load_model
    from ..review.compare import compare_labels

    # fail fast, before the first (slow) model run: output path, device, both models' specs, the scan, the
    # models themselves (a bundle needs --trust-bundle) and the memory both runs need
    check_output_paths(args.scan, [args.output], inputs=[*model_files(args.model_a), *model_files(args.model_b)])
    device = resolve_device(args.device)
    for ref in (args.model_a, args.model_b):
        get_spec(ref)
    scan = read_scan(args.scan, as_labels=False, series=args.series)
    loaded = [load_model(ref, device, trust_bundle=args.trust_bundle) for ref in (args.model_a, args.model_b)]
    for m in loaded:
        check_segmentation(scan, m.spec, network=None if m.bundle is not None else m.network, overlap=args.overlap,
                           probabilities=False)
    def show(done, total):
        print(f"\r  {done}/{total} windows", end="", file=sys.stderr)

    progress = None if args.json else show
    results = []
    for which, ref, model in (("A", args.model_a, loaded[0]), ("B", args.model_b, loaded[1])):
        if not args.json:
            print(f"model {which}: {ref}", file=sys.stderr)
        results.append(segment(scan, model, device=device, overlap=args.overlap, progress=progress,
                               return_probabilities=False, use_cache=False))  # one-shot: nothing to reuse
        if progress:
            print(file=sys.stderr)
    names = {}
    for res in reversed(results):  # A's names win where both models name a label
        names.update({int(k): v for k, v in (getattr(res, "metadata", {}).get("label_names") or {}).items()})
    table = LabelTable.default(names.keys(), names) if names else None
    comparison = compare_labels(results[0].labels, results[1].labels, label_table=table,
                                name_a=args.model_a, name_b=args.model_b)
    return _finish(args, comparison, scan_source=scan.source_path)


def register(subparsers) -> None:
    p = subparsers.add_parser("compare", help="run two models on one scan and map where they disagree",
                              description="Segment SCAN with two models and write a disagreement map "
                                          "(0 agree, 1 only A, 2 only B, 3 different labels) on the scan's grid.")
    p.add_argument("scan", metavar="SCAN", help="scan (NIfTI, NRRD, MHA, MGZ or DICOM)")
    p.add_argument("--series", metavar="UID", help="the DICOM series to use when the scan (a DICOM folder or "
                                                   "zip) holds several")
    p.add_argument("--model-a", required=True, metavar="A", help="model name, spec JSON or checkpoint")
    p.add_argument("--model-b", required=True, metavar="B", help="model name, spec JSON or checkpoint")
    p.add_argument("-o", "--output", required=True, metavar="DISAGREEMENT.nii.gz", help="disagreement map to write")
    p.add_argument("--device", default="auto", help="auto (CUDA > MPS > CPU), cpu, cuda, mps")
    p.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (0..1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_trust_option(p)
    p.set_defaults(func=run_models)

    q = subparsers.add_parser("compare-labels", help="map where two label files of one scan disagree",
                              description="Compare two label maps on one grid: per-label Dice and volumes, and "
                                          "optionally a disagreement map (0 agree, 1 only A, 2 only B, 3 "
                                          "different labels).")
    q.add_argument("a", metavar="A", help="first label map (NIfTI, NRRD, .seg.nrrd, MHA or MGZ)")
    q.add_argument("b", metavar="B", help="second label map, same grid")
    q.add_argument("-o", "--output", metavar="DISAGREEMENT.nii.gz", help="disagreement map to write")
    q.add_argument("--label-table", metavar="FILE", help="label names from a JSON or ITK-SNAP label file")
    q.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    q.set_defaults(func=run_labels)
