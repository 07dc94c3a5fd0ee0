"""The use cases both front ends offer, in one place: the CLI commands and the dock widgets gather inputs,
call one of these, and show or write what comes back. Nothing here imports Qt or napari.

=====================  ===========================================================================
use case               function (its home)
=====================  ===========================================================================
segment                :func:`segment_scan` (here): labels, probabilities, uncertainty and its
                       regions on the scan's grid, the labels present, provenance
explain                :func:`explain` = ``explain.methods.run`` (the explanation-method registry)
export with provenance :func:`export` = ``review.export.export_review`` (labels, label table,
                       provenance checked before anything is written)
label volumes          :func:`label_volumes` = ``review.corrections.label_volumes`` (mL per label)
compare                :func:`compare_labels` = ``review.compare.compare_labels``
cohorts                ``batch.run_batch`` (Dask)
=====================  ===========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .explain.methods import run as explain
from .io.volume import Volume
from .review.compare import compare_labels
from .review.corrections import label_volumes
from .review.export import export_review as export

__all__ = ["ScanSegmentation", "compare_labels", "explain", "export", "label_volumes", "segment_scan"]


@dataclass
class ScanSegmentation:
    """What one segmentation run gives, everything on the scan's own grid."""

    labels: Volume
    probabilities: Volume | None
    #: normalised softmax entropy in [0, 1] (a Volume on the scan grid), when asked for
    uncertainty: Volume | None
    #: ``review.uncertainty.UncertainRegion``s, most important first (when ``regions`` was asked for)
    regions: list = field(default_factory=list)
    #: label values present in ``labels`` (sorted)
    present: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: provenance of the run (model, weights hash, settings, label names)
    metadata: dict = field(default_factory=dict)
    #: the engine's ``SegmentationResult`` (model-space logits, model input)
    result: Any = None

    @property
    def label_names(self) -> dict[int, str]:
        return {int(k): v for k, v in (self.metadata.get("label_names") or {}).items()}


def segment_scan(volume: Volume, model, *, device="auto", overlap: float = 0.25, sw_batch_size: int | None = None,
                 roi_size=None, channels=None, probabilities: bool = False, uncertainty: bool = False,
                 regions: bool = False, uncertainty_threshold: float = 0.5, uncertainty_min_voxels: int = 20,
                 max_regions: int = 50, progress=None, cancel=None, use_cache: bool = True,
                 scales=None, postprocess: bool = True) -> ScanSegmentation:
    """Segment ``volume`` (``inference.segment``) and, when asked, keep the probabilities, compute the
    uncertainty map (``review.uncertainty.softmax_entropy``) and its connected regions above
    ``uncertainty_threshold`` (``review.uncertainty.uncertain_regions``). ``model`` is a loaded model or
    a name / spec / checkpoint for the registry; ``progress(done, total)``, ``cancel()``, ``scales``
    (multi-scale test-time augmentation) and ``postprocess`` (the spec's label post-processing) as in
    ``inference.segment``."""
    from .inference import segment
    from .review.uncertainty import softmax_entropy, uncertain_regions

    want_probs = bool(probabilities or uncertainty or regions)
    kwargs = dict(device=device, overlap=overlap, sw_batch_size=sw_batch_size, channels=channels,
                  progress=progress, cancel=cancel, return_probabilities=want_probs, use_cache=use_cache,
                  scales=scales, postprocess=postprocess)
    if roi_size:
        kwargs["roi_size"] = tuple(int(r) for r in roi_size)
    result = segment(volume, model, **kwargs)
    unc, found = None, []
    if (uncertainty or regions) and result.probabilities is not None:
        unc = softmax_entropy(result.probabilities)
        if regions:
            found = uncertain_regions(unc, threshold=float(uncertainty_threshold),
                                      min_voxels=int(uncertainty_min_voxels), max_regions=int(max_regions))
    return ScanSegmentation(labels=result.labels, probabilities=result.probabilities if probabilities else None,
                            uncertainty=unc, regions=list(found), present=np.unique(result.labels.data),
                            metadata=dict(result.metadata), result=result)
