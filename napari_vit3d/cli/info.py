"""``napari-vit3d info SCAN``: what a scan's geometry is (shape, spacing, orientation, affine, codes).

Useful before segmenting: the orientation code says how the file's axes run (``LPS``, ``RAS``, …), the
spacing what a model will resample, ``oblique`` whether a rotation remains after the exact axis
permutation, and ``model grid`` (with ``--model``) the grid the model will see.
"""

from __future__ import annotations

import json

import numpy as np


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="print a scan's shape, spacing, orientation and affine",
                              description="Print the geometry of a NIfTI scan: shape, voxel spacing, orientation "
                                          "codes, obliqueness, affine, qform/sform codes, data type and range.")
    p.add_argument("input", metavar="SCAN", help="scan or label map (NIfTI, NRRD, MHA, MGZ or DICOM)")
    p.add_argument("--series", metavar="UID", help="the DICOM series to use when the scan (a DICOM folder or "
                                                   "zip) holds several")
    p.add_argument("--model", metavar="MODEL", help="also show the model-space grid this model would use")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def scan_info(vol, model_spec=None) -> dict:
    from nibabel.orientations import aff2axcodes

    geom = vol.geometry
    data = vol.data
    finite = data[np.isfinite(data)] if data.dtype.kind == "f" else data
    info = {
        "path": vol.source_path,
        "shape": [int(s) for s in data.shape],
        "channels": vol.n_channels,
        "dtype": str(data.dtype),
        "spacing_mm": [round(float(s), 6) for s in vol.spacing],
        "orientation": "".join(aff2axcodes(vol.affine)),
        "oblique": bool(geom.is_oblique),
        "affine": np.round(vol.affine, 6).tolist(),
        "qform_code": int(vol.header["qform_code"]) if vol.header is not None else None,
        "sform_code": int(vol.header["sform_code"]) if vol.header is not None else None,
        "range": [float(finite.min()), float(finite.max())] if finite.size else None,
        "field_of_view_mm": [round(float(s) * float(n), 3) for s, n in zip(vol.spacing, data.shape[:3])],
    }
    if model_spec is not None:
        from ..inference.preprocess import model_grid

        affine, shape, resampled = model_grid(vol, model_spec)
        info["model_grid"] = {"model": model_spec.name, "shape": list(shape), "spacing_mm": list(model_spec.spacing),
                              "orientation": model_spec.orientation, "resampled": resampled,
                              "affine": np.round(affine, 6).tolist()}
    return info


def run(args) -> int:
    from ..io.formats import read_scan

    vol = read_scan(args.input, series=args.series)
    spec = None
    if args.model:
        from ..models.registry import get_spec

        spec = get_spec(args.model)
    info = scan_info(vol, spec)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.input}")
    print(f"  shape        {' × '.join(str(s) for s in info['shape'])}"
          + (f"  ({info['channels']} channels)" if info["channels"] > 1 else ""))
    print(f"  dtype        {info['dtype']}   range {info['range']}")
    print(f"  spacing      {' × '.join(f'{s:g}' for s in info['spacing_mm'])} mm   "
          f"field of view {' × '.join(f'{s:g}' for s in info['field_of_view_mm'])} mm")
    oblique = "  (oblique: a rotation remains after the axis permutation)" if info["oblique"] else ""
    print(f"  orientation  {info['orientation']}{oblique}")
    print(f"  codes        qform {info['qform_code']}  sform {info['sform_code']}")
    print("  affine       " + "\n               ".join("  ".join(f"{v:10.4f}" for v in row) for row in info["affine"]))
    if "model_grid" in info:
        g = info["model_grid"]
        print(f"  model grid   {g['model']}: {' × '.join(str(s) for s in g['shape'])} at "
              f"{' × '.join(f'{s:g}' for s in g['spacing_mm'])} mm {g['orientation']}"
              f"{' (resampled)' if g['resampled'] else ' (exact axis permutation, no resampling)'}")
    return 0
