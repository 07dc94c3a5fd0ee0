"""``napari-vit3d segment``: segment a scan and write labels that land on it voxel for voxel.

::

    napari-vit3d segment INPUT -o OUTPUT [--model NAME|SPEC.json|CHECKPOINT|BUNDLE_DIR]
                         [--device auto|cpu|cuda|mps] [--overlap F] [--sw-batch-size N]
                         [--save-probabilities PATH] [--save-uncertainty PATH]

OUTPUT has INPUT's shape (first three axes), affine, qform/sform codes and voxel order, an integer
dtype; it is never written over INPUT. All outputs are checked before the run (names, folders writable,
none of them an input) and written together at the end, or none (``cli._common``). The run is checked
against the memory available first (``inference.preflight``). Exit codes: 0 done, 2 a user error (bad
file, unknown model, untrusted bundle, not enough memory, …; one line on stderr), 130 cancelled (Ctrl-C;
143/129 for SIGTERM/SIGHUP).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import add_trust_option, check_output_paths, model_files, outputs_transaction


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="segment a scan; the labels land on it voxel for voxel",
        description="Segment INPUT with a model and write the labels to OUTPUT on INPUT's own grid "
                    "(same shape, affine and voxel order). Exit codes: 0 done, 2 user error, 130 cancelled.")
    p.add_argument("input", metavar="INPUT", help="scan to segment (NIfTI, NRRD, MHA, MGZ, DICOM; 3D or 4D)")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                   help="label map to write: .nii.gz, .nii, .seg.nrrd (3D Slicer), .nrrd, .mha or .dcm "
                        "(DICOM SEG, for a DICOM INPUT)")
    p.add_argument("--series", metavar="UID", help="the DICOM series to segment when INPUT holds several")
    p.add_argument("--model", metavar="MODEL",
                   help="registered model name, spec .json, checkpoint (with its spec beside it) or MONAI bundle "
                        "folder (default: the bundled default model)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="auto picks CUDA > MPS > CPU (default auto)")
    p.add_argument("--overlap", type=float, default=0.25, metavar="F",
                   help="sliding-window overlap in [0, 1) (default 0.25)")
    p.add_argument("--sw-batch-size", type=int, default=None, metavar="N",
                   help="windows per forward pass (default: 1 on CPU, from free memory on CUDA)")
    p.add_argument("--channels", type=int, nargs="+", default=None, metavar="C",
                   help="which channels of a 4D INPUT the model reads (default: all, when the count matches)")
    p.add_argument("--save-probabilities", metavar="PATH",
                   help="also write per-class probabilities (float32, classes along the 4th axis)")
    p.add_argument("--save-uncertainty", metavar="PATH",
                   help="also write the normalised softmax entropy (0 = certain, 1 = all classes equally likely)")
    p.add_argument("--multiscale", action="store_true",
                   help="multi-scale test-time augmentation: average the model's probabilities over the scan seen "
                        "10 %% smaller, as it is and 10 %% larger (three passes: about 2-3x the time; slightly more "
                        "accurate, see docs/inference.md)")
    p.add_argument("--no-postprocess", action="store_true",
                   help="write the network's argmax as it is, without the model's label post-processing (the "
                        "default brain model re-decides CSF / gray / white matter inside the brain by the scan's "
                        "intensities; see docs/inference.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_trust_option(p)
    p.set_defaults(func=run)


def _check_outputs(args, model_ref=None) -> list[Path]:
    return check_output_paths(args.input, (args.output, args.save_probabilities, args.save_uncertainty),
                              inputs=model_files(model_ref) if model_ref else (), label_outputs=(args.output,))


def run(args) -> int:
    from ..errors import VolumeError
    from ..inference.engine import MULTISCALE
    from ..inference.preflight import check_segmentation
    from ..io.formats import output_format, read_scan, write_labels_as
    from ..io.nifti import write_image, write_labels
    from ..models.devices import resolve_device
    from ..models.registry import default_model_name, load_model
    from ..usecases import segment_scan

    model_ref = args.model if args.model else default_model_name()
    _check_outputs(args, model_ref)  # before the (slow) model run: fail fast on a bad output path
    scan = read_scan(args.input, as_labels=False, series=args.series)
    if output_format(args.output) == "dicom-seg" and not (scan.metadata or {}).get("dicom"):
        raise VolumeError(f"{args.output}: a DICOM SEG references the DICOM series it segments; INPUT was not read "
                          "from DICOM (write .nii.gz or .seg.nrrd)")
    device = resolve_device(args.device)
    model = load_model(model_ref, device, trust_bundle=args.trust_bundle)
    # the whole run, with the outputs asked for, against the memory available: refuse or warn before it starts
    check_segmentation(scan, model.spec, network=None if model.bundle is not None else model.network,
                       overlap=args.overlap, sw_batch_size=args.sw_batch_size,
                       probabilities=bool(args.save_probabilities), uncertainty=bool(args.save_uncertainty))

    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=None, unit="window", file=sys.stderr, desc="segment", dynamic_ncols=True)

    def progress(done, total):
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        out = segment_scan(scan, model, device=device, overlap=args.overlap, sw_batch_size=args.sw_batch_size,
                           channels=args.channels, progress=progress, probabilities=bool(args.save_probabilities),
                           uncertainty=bool(args.save_uncertainty), use_cache=False,
                           scales=MULTISCALE if args.multiscale else None, postprocess=not args.no_postprocess)
    finally:
        if bar is not None:
            bar.close()

    protect = (scan.source_path,)
    with outputs_transaction():  # all outputs replace their targets together at the end, or none does
        if output_format(args.output) == "nifti":
            write_labels(args.output, out.labels.data, scan.affine, header=scan.header, source_path=scan.source_path)
        else:  # .seg.nrrd / .nrrd / .mha / DICOM SEG, with the model's label names where the format holds them
            write_labels_as(args.output, out.labels, source=scan, label_table=out.label_names, protect=protect)
        written = [args.output]
        if args.save_probabilities:
            write_image(args.save_probabilities, out.probabilities.data, scan.affine, header=scan.header,
                        protect=protect)
            written.append(args.save_probabilities)
        if args.save_uncertainty:
            write_image(args.save_uncertainty, out.uncertainty.data, scan.affine, header=scan.header,
                        protect=protect)
            written.append(args.save_uncertainty)
    present = [int(v) for v in out.present]
    names = out.label_names
    present_txt = ", ".join(f"{v} {names.get(v, '')}".strip() for v in present[:20])
    if len(present) > 20:
        present_txt += f", … ({len(present)} labels)"
    print(f"wrote {', '.join(str(w) for w in written)}  (model {out.metadata['model']}, "
          f"labels present: {present_txt})", file=sys.stderr)
    return 0
