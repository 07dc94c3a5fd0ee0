"""``napari-vit3d prompt``: click-prompted segmentation of one structure; the mask lands on the scan.

::

    napari-vit3d prompt SCAN -o MASK.nii.gz --point-world X,Y,Z [--point-world …]
                        [--negative-world X,Y,Z …] [--point-voxel I,J,K …] [--negative-voxel I,J,K …]
                        [--box-world X0,Y0,Z0,X1,Y1,Z1] [--previous MASK] [--model NAME|SPEC.json]

The clicks are applied one at a time in the order given (positive points first, then negative
ones), each a prediction of the promptable model on a crop around the clicks, as a user clicking in
the viewer would. MASK has SCAN's shape, affine and voxel order, uint8 0/1, written atomically and
never over SCAN. A JSON sidecar ``MASK.json`` records the clicks, crop and model (an existing one that
is not a prompt sidecar is only replaced with ``--overwrite``); both are checked before the model runs
and written together at the end, or neither. Exit codes: 0
done, 2 a user error (a point outside the scan, a box with no volume, no positive point, …), 130
cancelled.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import GeometryError
from ._common import check_output_paths, outputs_transaction


def _triple(text: str, what: str) -> tuple[float, float, float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise GeometryError(f"{what} {text!r}: expected three comma-separated numbers") from None
    if len(vals) != 3:
        raise GeometryError(f"{what} {text!r}: expected three comma-separated numbers, got {len(vals)}")
    return tuple(vals)


def _is_prompt_sidecar(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("method") == "prompt"
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prompt", help="click-prompted segmentation of one structure (positive/negative points, box)",
        description="Segment the structure under the given points with the bundled promptable model and write its "
                    "mask on SCAN's own grid. Exit codes: 0 done, 2 user error, 130 cancelled.")
    p.add_argument("input", metavar="SCAN", help="scan (NIfTI, NRRD, MHA, MGZ or DICOM)")
    p.add_argument("--series", metavar="UID", help="the DICOM series to use when the scan (a DICOM folder or "
                                                   "zip) holds several")
    p.add_argument("-o", "--output", required=True, metavar="MASK", help="mask to write (.nii or .nii.gz), uint8 0/1")
    p.add_argument("--point-world", action="append", default=[], metavar="X,Y,Z",
                   help="positive click in world RAS mm (repeatable)")
    p.add_argument("--point-voxel", action="append", default=[], metavar="I,J,K",
                   help="positive click as a voxel index of SCAN (repeatable)")
    p.add_argument("--negative-world", action="append", default=[], metavar="X,Y,Z",
                   help="negative click in world RAS mm: not the object (repeatable)")
    p.add_argument("--negative-voxel", action="append", default=[], metavar="I,J,K",
                   help="negative click as a voxel index (repeatable)")
    p.add_argument("--box-world", metavar="X0,Y0,Z0,X1,Y1,Z1",
                   help="two opposite corners (mm) of a box that bounds the object: nothing outside it is labelled")
    p.add_argument("--previous", metavar="MASK", help="an existing mask on SCAN's grid to correct")
    p.add_argument("--model", metavar="MODEL", help="promptable model name or spec .json (default segformer3d-prompt)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"), help="default cpu")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing MASK.json that is not a prompt sidecar")
    p.set_defaults(func=run)


def _sidecar(output) -> Path:
    out = str(output)
    return Path((out[:-7] if out.lower().endswith(".nii.gz") else out[:-4]) + ".json")


def run(args) -> int:
    from ..io.atomic import write_json_atomic
    from ..io.formats import read_scan
    from ..io.nifti import write_labels
    from ..models.devices import resolve_device
    from ..prompt.session import PromptSession, load_prompt_model

    outs = check_output_paths(args.input, (args.output,), inputs=(args.previous,),
                              sidecars=[(_sidecar(args.output), _is_prompt_sidecar)], overwrite=args.overwrite)
    positives = ([("world", _triple(t, "--point-world")) for t in args.point_world]
                 + [("voxel", _triple(t, "--point-voxel")) for t in args.point_voxel])
    negatives = ([("world", _triple(t, "--negative-world")) for t in args.negative_world]
                 + [("voxel", _triple(t, "--negative-voxel")) for t in args.negative_voxel])
    if not positives and not (args.previous and negatives):
        raise GeometryError("give at least one positive point on the object (--point-world X,Y,Z or "
                            "--point-voxel I,J,K), or --previous MASK with negative points to correct it")
    box = None
    if args.box_world:
        try:
            vals = [float(v) for v in args.box_world.split(",")]
        except ValueError:
            raise GeometryError(f"--box-world {args.box_world!r}: expected six comma-separated numbers") from None
        if len(vals) != 6:
            raise GeometryError(f"--box-world {args.box_world!r}: expected six comma-separated numbers, got "
                                f"{len(vals)}")
        box = (vals[:3], vals[3:])
    sidecar = _sidecar(outs[0])
    scan = read_scan(args.input, as_labels=False, series=args.series)
    model = load_prompt_model(args.model, device=resolve_device(args.device))
    session = PromptSession(model, scan)
    # validate every prompt before the first (slow) prediction
    checked = [(session.add_point(**{kind: p}, positive=True)) for kind, p in positives]
    checked_neg = [(session.add_point(**{kind: p}, positive=False)) for kind, p in negatives]
    if box is not None:
        session.set_box(*box)
    if args.previous:
        session.set_previous(read_scan(args.previous, as_labels=True))
    session.clicks = []
    result = None
    for w in checked:
        session.add_point(world=w, positive=True)
        result = session.predict()
    for w in checked_neg:
        session.add_point(world=w, positive=False)
        result = session.predict()
    mask = result.mask
    with outputs_transaction():  # the mask and its sidecar replace their targets together, or neither
        write_labels(outs[0], mask.data, scan.affine, header=scan.header, source_path=scan.source_path)
        write_json_atomic(sidecar, {**mask.metadata, "voxels": int(mask.data.sum()),
                                    "volume_ml": float(mask.data.sum() * scan.voxel_volume_ml)})
    print(f"wrote {outs[0]}  ({int(mask.data.sum())} voxels, {mask.data.sum() * scan.voxel_volume_ml:.2f} mL, "
          f"crop {result.crop.spacing:g} mm)", file=sys.stderr)
    return 0
