"""``napari-vit3d explain``: attention, rollout, DINO head attention or ERF maps that overlay the scan.

::

    napari-vit3d explain INPUT --method attention|rollout|dino-heads|erf|similar
                         [--point-world X,Y,Z | --point-voxel I,J,K] [--layer L] [--head H|mean|all]
                         [--model MODEL] -o OUTPUT.nii.gz
                         [--head-fusion mean|max|min] [--discard-ratio F] [--start-layer L]   (rollout)
                         [--keep-mass F --masks-output LABELS.nii.gz]                           (dino-heads)
                         [--coverage scan|tiles|window]                             (dino-heads, similar)
                         [--class C] [--region MASK.nii.gz] [--log1p] [--stats STATS.json]      (erf)

OUTPUT lies on INPUT's grid (same first three axes, affine, qform/sform codes), float32;
``dino-heads`` and ``--head all`` write a 4D file with heads along the 4th axis. ``dino-heads`` and
``similar`` (cosine similarity of every patch's frozen feature to the queried patch's) cover the whole
scan by default, in one pass with the positional embedding resized (``explain.whole_scan``);
``--coverage tiles`` stitches native windows, ``--coverage window`` keeps one window. Beside OUTPUT a
JSON sidecar (``OUTPUT`` with ``.json`` instead of ``.nii[.gz]``) records the method, model, layer,
head, query, window and parameters; an existing ``.json`` there that is not this command's sidecar for
OUTPUT is never replaced without ``--overwrite``. All outputs are checked before the model runs and
written together at the end, or none. Without ``--model`` the first registered model that supports the
method is used (the default model when it does) and named on stderr and in the sidecar.
Exit codes: 0 done, 2 user error (one line on stderr), 130 cancelled.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import GeometryError, ModelError, VolumeError
from ..explain.methods import architectures_supporting, method_names
from ._common import add_trust_option, check_output_paths, model_files, outputs_transaction, safe_resolve

METHODS = method_names(cli=True)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explain", help="attention / rollout / DINO heads / ERF maps on the scan's grid",
        description="Explain a model's view of INPUT; the map is written on INPUT's own grid so it overlays "
                    "the scan in any viewer. Exit codes: 0 done, 2 user error, 130 cancelled.")
    p.add_argument("input", metavar="INPUT", help="scan (NIfTI, NRRD, MHA, MGZ or DICOM)")
    p.add_argument("--series", metavar="UID", help="the DICOM series to use when the scan (a DICOM folder or "
                                                   "zip) holds several")
    p.add_argument("--method", required=True, choices=METHODS)
    q = p.add_mutually_exclusive_group()
    q.add_argument("--point-world", metavar="X,Y,Z", help="query point in world RAS mm")
    q.add_argument("--point-voxel", metavar="I,J,K", help="query point as a voxel index of INPUT")
    p.add_argument("--layer", type=int, default=None, metavar="L",
                   help="attention layer (0-based over all attention blocks; negative counts from the end; "
                        "default: the last)")
    p.add_argument("--head", default="mean", metavar="H|mean|all", help="attention head number, mean or all "
                                                                        "(default mean)")
    p.add_argument("--model", metavar="MODEL", help="registered model name, spec .json or checkpoint "
                   "(default: a registered model that supports the method)")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="map to write (.nii or .nii.gz)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"), help="(default cpu)")
    p.add_argument("--head-fusion", default="mean", choices=("mean", "max", "min"), help="rollout: fuse heads by")
    p.add_argument("--discard-ratio", type=float, default=0.0, metavar="F",
                   help="rollout: drop this lowest fraction of each attention row (never the identity/CLS)")
    p.add_argument("--start-layer", type=int, default=0, metavar="L", help="rollout: first layer multiplied in")
    p.add_argument("--keep-mass", type=float, default=0.6, metavar="F",
                   help="dino-heads: share of each head's attention the masks keep (default 0.6)")
    p.add_argument("--masks-output", metavar="PATH",
                   help="dino-heads: also write a label map: h+1 where head h's top --keep-mass of attention lies "
                        "(where heads overlap, the head attending most)")
    p.add_argument("--coverage", default="scan", choices=("scan", "tiles", "window"),
                   help="dino-heads, similar: the whole scan in one pass (positional embedding resized; default), "
                        "native windows tiled and stitched, or one window")
    p.add_argument("--class", dest="target_class", type=int, default=None, metavar="C",
                   help="erf: output class (default 1, or 0 for one-class models)")
    p.add_argument("--region", metavar="MASK", help="erf: sum the class over this mask (on INPUT's grid) "
                                                    "instead of one voxel")
    p.add_argument("--log1p", action="store_true", help="erf: write log(1 + |gradient|)")
    p.add_argument("--stats", metavar="PATH", help="erf: write extent statistics (JSON)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUTPUT .json that is not this command's sidecar for OUTPUT")
    add_trust_option(p)
    p.set_defaults(func=run)


def _triple(text: str, what: str, as_int: bool) -> tuple:
    parts = [t for t in text.replace(" ", "").split(",") if t]
    try:
        vals = tuple(int(t) if as_int else float(t) for t in parts)
    except ValueError:
        raise GeometryError(f"{what} must be three {'integers' if as_int else 'numbers'} separated by commas, "
                            f"got {text!r}") from None
    if len(vals) != 3:
        raise GeometryError(f"{what} must be three values separated by commas, got {text!r}")
    return vals


def sidecar_path(output) -> Path:
    from ..io.nifti import nifti_stem

    out = Path(output)
    return out.with_name(nifti_stem(out) + ".json")


def choose_model(method: str) -> str:
    """A registered model name that supports ``method`` (the default model first)."""
    from ..models.registry import default_model_name, list_models

    ok = architectures_supporting(method)
    try:
        default = default_model_name()
    except ModelError:
        default = None
    entries = [e for e in list_models() if e.spec is not None and e.spec.architecture in ok]
    entries.sort(key=lambda e: (e.name != default, e.source != "bundled", e.name))
    if not entries:
        raise ModelError(f"no registered model supports {method} (needs one of: {', '.join(ok)}); pass --model")
    return entries[0].name


def _own_sidecar(output) -> Callable[[Path], bool]:
    """Whether an existing JSON file is the sidecar this command wrote for ``output`` (so it may be replaced)."""
    import json

    want = str(safe_resolve(output))

    def owned(path: Path) -> bool:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        return isinstance(d, dict) and d.get("output") == want and d.get("method") is not None

    return owned


def _check_outputs(args, model_ref=None) -> None:
    """Every output, and the sidecar, checked before the model runs (``cli._common.check_output_paths``)."""
    check_output_paths(args.input, (args.output, args.masks_output), extra=(args.stats,),
                       inputs=[args.region, *(model_files(model_ref) if model_ref else ())],
                       sidecars=[(sidecar_path(args.output), _own_sidecar(args.output))], overwrite=args.overwrite)


def run(args) -> int:
    from .. import explain as ex
    from ..inference.preflight import check_segmentation
    from ..io.atomic import to_json, write_text_atomic
    from ..io.formats import read_scan
    from ..io.nifti import write_image, write_labels
    from ..models.devices import resolve_device
    from ..models.registry import load_model

    model_ref = args.model or choose_model(args.method)
    _check_outputs(args, model_ref)
    if args.method != "dino-heads" and args.masks_output:
        raise VolumeError("--masks-output only goes with --method dino-heads")
    scan = read_scan(args.input, as_labels=False, series=args.series)
    point = {}
    if args.point_world:
        point["world"] = _triple(args.point_world, "--point-world", as_int=False)
    elif args.point_voxel:
        point["voxel"] = _triple(args.point_voxel, "--point-voxel", as_int=True)
    if point:
        ex.query_world(scan, **point)  # fail fast on a point outside the scan
    region = read_scan(args.region, as_labels=True) if args.region else None
    ex.methods.check_query(args.method, region=region, **point)
    head = args.head if args.head in ("mean", "all") else None
    if head is None:
        try:
            head = int(args.head)
        except ValueError:
            raise ModelError(f"--head must be a head number, mean or all; got {args.head!r}") from None

    model = load_model(model_ref, resolve_device(args.device), trust_bundle=args.trust_bundle)
    if not ex.supports(model.network, args.method):
        raise ModelError(f"model {model.spec.name!r} ({model.spec.architecture}) does not support {args.method}; "
                         f"models that do: {', '.join(architectures_supporting(args.method))}")
    print(f"explain: {args.method} with model {model.spec.name} ({model.spec.architecture})", file=sys.stderr)

    def progress(done, total):
        print(f"  {args.method}: {done}/{total}", file=sys.stderr)

    check_segmentation(scan, model.spec, network=model.network, probabilities=args.head == "all",
                       options={"probabilities": "--head all"})  # the prepared scan and the maps: refuse or warn
    sess = ex.ExplainSession(model, scan)
    masks = None
    stats = None
    options = {"attention": dict(layer=args.layer, head=head),
               "rollout": dict(head_fusion=args.head_fusion, discard_ratio=args.discard_ratio,
                               start_layer=args.start_layer),
               "dino-heads": dict(layer=args.layer, coverage=args.coverage),
               "similar": dict(layer=args.layer, coverage=args.coverage),
               "erf": dict(region=region, target_class=args.target_class, log1p=args.log1p)}[args.method]
    vol = ex.run_method(args.method, model, scan, session=sess, progress=progress, **options, **point)
    if args.masks_output:
        masks = ex.run_method("dino-masks", model, scan, keep_mass=args.keep_mass, layer=args.layer, session=sess,
                              coverage=args.coverage, **point)
    if args.method == "erf" and args.stats:
        stats = ex.erf_statistics(vol if not args.log1p else vol.with_data(np.expm1(vol.data)))

    import nibabel as nib

    header = scan.header.copy() if isinstance(scan.header, (nib.Nifti1Header, nib.Nifti2Header)) else None
    if header is not None:
        header["descrip"] = f"napari-vit3d {args.method} {model.spec.name}"[:79].encode()
        header["intent_name"] = b""
    meta = {k: v for k, v in vol.metadata.items() if k != "protect_path"}
    meta.update({"input": str(Path(args.input).resolve()), "output": str(Path(args.output).resolve()),
                 "model": model.spec.name, "model_chosen_automatically": not bool(args.model)})
    labels = masks
    if masks is not None:
        meta["masks"] = {"path": str(Path(args.masks_output).resolve()), "labels": "head + 1 (0 = no head keeps it)",
                         **masks.metadata.get("parameters", {})}
    if stats is not None:
        meta["statistics"] = stats
    # the JSON first: a value JSON cannot hold must not leave a map behind without its sidecar
    side = sidecar_path(args.output)
    side_text = to_json(meta) + "\n"
    stats_text = to_json(stats) + "\n" if stats is not None else None
    with outputs_transaction():  # the map, masks, statistics and sidecar replace their targets together, or none
        write_image(args.output, vol.data, scan.affine, header=header, source_path=scan.source_path)
        written = [str(args.output)]
        if labels is not None:
            write_labels(args.masks_output, labels.data, scan.affine, header=scan.header,
                         source_path=scan.source_path)
            written.append(str(args.masks_output))
        if stats_text is not None:
            write_text_atomic(args.stats, stats_text)
            written.append(str(args.stats))
        write_text_atomic(side, side_text)
        written.append(str(side))
    print(f"wrote {', '.join(written)}", file=sys.stderr)
    return 0
