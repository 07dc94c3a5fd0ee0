"""Running a MONAI bundle on a scan and mapping its output back onto the scan's voxels.

The bundle's own ``preprocessing``, ``inferer`` and ``postprocessing`` run unchanged, with two
exceptions that keep the run safe and in memory: file-saving transforms (``SaveImage``/``SaveImaged``)
are skipped, and a bundle whose preprocessing starts with ``LoadImage(d)`` reads a temporary NIfTI
copy of the scan (so an edited scan is what the bundle sees, and the source file is never touched).
Otherwise the bundle gets a :class:`monai.data.MetaTensor` of the scan (file voxel order) carrying the
scan's affine, so its ``Orientation``/``Spacing`` transforms see the true geometry.

The outputs are placed by their MetaTensor affines (RAS; an ``LPS`` space is converted): the raw
logits from the inferer live on the preprocessed image's grid, the postprocessed prediction on its own
(the scan grid when the bundle inverts its preprocessing with ``Invertd``). Both go back onto the scan
through world coordinates: logits linearly (→ probabilities), a discrete prediction by nearest neighbour.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import Cancelled, ModelError
from ..io.nifti import label_dtype, write_image
from ..io.resample import resample_array, resample_edge
from ..io.volume import Volume
from ..models.devices import autocast_dtype, resolve_device
from .predictor import CancelFn, Predictor, ProgressFn, count_windows
from .preprocess import ModelInput
from .results import SegmentationResult, output_volume, probabilities_from_logits

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _transforms(compose):
    return list(getattr(compose, "transforms", [compose])) if compose is not None else []


def _without_saving(compose):
    """The bundle's Compose with file-writing transforms removed (or the transform itself)."""
    from monai.transforms import Compose

    if compose is None:
        return None
    kept = [t for t in _transforms(compose) if not type(t).__name__.startswith("SaveImage")]
    if hasattr(compose, "transforms"):
        return Compose(kept)
    return kept[0] if kept else None


def _is_dict_pipeline(compose) -> bool:
    from monai.transforms import MapTransform

    return any(isinstance(t, MapTransform) for t in _transforms(compose))


def _reads_files(compose) -> bool:
    ts = _transforms(compose)
    return bool(ts) and type(ts[0]).__name__ in ("LoadImage", "LoadImaged")


def _affine_of(t, fallback=None) -> np.ndarray | None:
    aff = getattr(t, "affine", None)
    if aff is None:
        return fallback
    aff = np.asarray(aff.detach().cpu() if isinstance(aff, torch.Tensor) else aff, dtype=float)
    if aff.ndim == 3:
        aff = aff[0]
    space = str(getattr(t, "meta", {}).get("space", "RAS")) if hasattr(t, "meta") else "RAS"
    return _LPS @ aff if space.upper() == "LPS" else aff


def _scan_input(volume: Volume, pre, tmpdir: Path):
    if _reads_files(pre):
        path = tmpdir / "scan.nii"
        write_image(path, volume.data, volume.affine, header=volume.header)
        return str(path)
    from monai.data import MetaTensor

    data = torch.from_numpy(np.ascontiguousarray(volume.data, dtype=np.float32))
    if data.ndim == 4:
        data = data.movedim(-1, 0)  # channels first, as MONAI expects after EnsureChannelFirst
    return MetaTensor(data, affine=torch.as_tensor(volume.affine, dtype=torch.float64))


def segment_bundle(volume: Volume, bundle, spec, *, device="auto", weights_sha256=None,
                   progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                   return_probabilities: bool = True, amp: bool = True) -> SegmentationResult:
    """Run ``bundle`` (a :class:`~napari_vit3d.models.bundle.BundleModel`) on ``volume``; see the module docstring."""
    network = bundle.network
    pre = _without_saving(bundle.preprocessing)
    inferer = bundle.inferer
    post = _without_saving(bundle.postprocessing)
    if inferer is None:
        raise ModelError(f"bundle {spec.name!r} has no 'inferer' in its config")
    dev = resolve_device(device)
    amp_dtype = autocast_dtype(dev, amp)
    if cancel is not None and cancel():
        raise Cancelled("segmentation was cancelled; nothing was written")
    home = next(network.parameters()).device if any(True for _ in network.parameters()) else torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="napari_vit3d_bundle_") as tmp:
        item = _scan_input(volume, pre, Path(tmp))
        try:
            data = pre({"image": item}) if pre is not None else {"image": item}
        except Exception as exc:  # noqa: BLE001 - a bundle's own transforms may raise any type: one line
            raise ModelError(f"bundle {spec.name!r}: its preprocessing failed on {volume.name} "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    image = data["image"]
    if not isinstance(image, torch.Tensor):
        image = torch.as_tensor(np.asarray(image))
    image_affine = _affine_of(image)
    roi = getattr(inferer, "roi_size", None)
    overlap = getattr(inferer, "overlap", 0.25)
    overlap = float(overlap[0] if isinstance(overlap, (tuple, list)) else overlap)
    total = count_windows(image.shape[1:], roi, overlap) if roi is not None else 1
    predictor = Predictor(network, total, progress, cancel, amp_dtype, dev)
    network.to(dev).eval()
    try:
        with torch.inference_mode():
            logits = inferer(image[None].to(dev), predictor)
    finally:
        network.to(home)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    logits = logits[0].detach().float().cpu().as_subclass(torch.Tensor)
    if not bool(torch.isfinite(logits).all()):
        raise ModelError(f"bundle {spec.name!r} produced NaN/Inf outputs on {volume.name}; its labels would be "
                         "meaningless, so none are given")
    if cancel is not None and cancel():
        raise Cancelled("segmentation was cancelled; nothing was written")
    if image_affine is None:
        if tuple(image.shape[1:]) != volume.spatial_shape:
            raise ModelError(f"bundle {spec.name!r}: its preprocessing drops the image geometry (no affine) and "
                             "changes the grid, so its output cannot be placed on the scan")
        image_affine = volume.affine
    # the bundle's own postprocessing decides the labels
    from monai.data import MetaTensor

    pred_in = logits.clone()
    if isinstance(image, MetaTensor):
        pred_in = MetaTensor(pred_in, affine=torch.as_tensor(image_affine))
    if post is None:
        pred = pred_in
    elif _is_dict_pipeline(post):
        pred = post({**data, "pred": pred_in})["pred"]
    else:
        pred = post(pred_in)
    pred_affine = _affine_of(pred, image_affine)
    pred = torch.as_tensor(pred).detach().float().cpu().numpy()
    if pred.ndim == 3:
        pred = pred[None]
    mi = ModelInput(tensor=image[None].detach().float().cpu().as_subclass(torch.Tensor),
                    affine=image_affine, valid=tuple(slice(0, s) for s in image.shape[1:]), valid_affine=image_affine,
                    scan_affine=np.asarray(volume.affine, float), scan_shape=volume.spatial_shape,
                    ornt=np.array([[0, 1], [1, 1], [2, 1]], float), resampled=True,
                    spacing=tuple(float(v) for v in np.sqrt((image_affine[:3, :3] ** 2).sum(0))),
                    normalization={"kind": "bundle"})
    scan_logits = resample_edge(np.moveaxis(logits.numpy(), 0, -1), image_affine, volume.affine, volume.spatial_shape,
                                order=1)
    values = np.array([int(lab.index) for lab in spec.labels]) if spec.labels else None
    if pred.shape[0] == 1:  # discrete labels from the bundle: nearest neighbour (exact when the grids coincide)
        lab = resample_array(np.round(pred[0]).astype(np.int64), pred_affine, volume.affine, volume.spatial_shape,
                             order=0, cval=0)
    else:  # probabilities or logits: linear, then argmax
        lab_idx = np.argmax(resample_edge(np.moveaxis(pred, 0, -1), pred_affine, volume.affine, volume.spatial_shape,
                                          order=1), axis=-1)
        lab = values[lab_idx] if values is not None and len(values) == pred.shape[0] else lab_idx
    lab = lab.astype(label_dtype(max(int(lab.max()), 0) if lab.size else 0, signed=bool(lab.size and lab.min() < 0)))
    meta = {"model": spec.name, "architecture": "monai_bundle", "weights_sha256": weights_sha256,
            "source_path": volume.source_path, "scan": volume.name,
            "settings": {"device": dev.type, "roi_size": None if roi is None else [int(r) for r in roi],
                         "overlap": overlap, "bundle": str(getattr(bundle, "folder", ""))},
            "label_names": spec.label_names}
    labels_vol = output_volume(volume, lab, kind="labels", name="labels", vit3d=meta)
    probs_vol = None
    if return_probabilities:
        probs = probabilities_from_logits(scan_logits)
        classes = values if values is not None and len(values) == probs.shape[-1] else np.arange(probs.shape[-1])
        probs_vol = output_volume(volume, probs, kind="probabilities", name="probabilities", units="probability",
                                  classes=[int(v) for v in classes], vit3d=meta)
    return SegmentationResult(labels=labels_vol, probabilities=probs_vol, logits=logits, model_input=mi, metadata=meta)


__all__ = ["segment_bundle"]
