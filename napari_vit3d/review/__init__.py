"""Review aids: metrics, uncertainty, model comparison, label corrections and provenance.

Nothing here imports Qt or napari; the Review & Export widgets and the ``evaluate``/``compare``
commands call these functions.
"""

from .compare import Comparison, compare_labels, disagreement_map
from .corrections import LabelDiff, diff, fill_holes, interpolate_slices, label_volumes, remove_small_components
from .export import export_review
from .metrics import average_precision, binary_metrics, evaluate
from .provenance import build_provenance, write_json_atomic
from .uncertainty import UncertainRegion, flip_tta, softmax_entropy, tta_uncertainty, uncertain_regions

__all__ = ["Comparison", "LabelDiff", "UncertainRegion", "average_precision", "binary_metrics",
           "build_provenance", "compare_labels", "diff", "disagreement_map", "evaluate", "export_review", "fill_holes",
           "flip_tta", "interpolate_slices", "label_volumes", "remove_small_components", "softmax_entropy",
           "tta_uncertainty", "uncertain_regions", "write_json_atomic"]
