"""Explanations: attention for a clicked voxel, attention rollout, DINO per-head CLS attention and
effective receptive fields, as maps on the scan's own grid.

Public API (every function: ``(model, volume, query, options) → Volume`` with ``metadata`` holding
method, model, layer, head, query, window, parameters and units)::

    point_attention(model, volume, voxel=… | world=…, layer=None, head="mean" | "all" | h)
    attention_rollout(model, volume, [voxel/world], head_fusion="mean", discard_ratio=0, start_layer=0)
    dino_heads(model, volume, layer=None)            # 4D, heads last
    dino_head_masks(model, volume, keep_mass=0.6)    # 4D uint8, heads last; head_mask_labels → 3D labels
    erf_map(model, volume, voxel=… | world=… | region=mask, target_class=None, log1p=False)
    model_erf(model, volume, n_samples=8)            # kernel in offset mm
    erf_statistics(erf_volume)

``ExplainSession(model, volume)`` keeps the preprocessing and the captured windows, so a new click
in an already captured window costs no forward pass (pass ``session=`` to the functions above).
Lower level: :class:`~.capture.AttentionCapture`, :func:`~.attention.rollout_vector`,
:func:`~.erf.input_gradient`, :class:`~.tokens.TokenGrid`. Nothing here imports Qt or napari.
"""

from .attention import (attention_rollout, dino_head_masks, dino_heads, discard_lowest, fuse_heads,
                        head_mask_labels, point_attention, rollout_vector, top_mass_mask)
from .capture import AttentionCapture, attention_layers, family, has_cls_token
from .erf import erf_map, erf_statistics, input_gradient, model_erf
from .memory import check_memory, estimate_bytes
from .session import ExplainSession, query_world
from .tokens import TokenGrid

METHODS = ("attention", "rollout", "dino-heads", "erf")


def supports(network, method: str) -> bool:
    """Whether ``network`` can be explained by ``method`` (one of :data:`METHODS`)."""
    try:
        fam = family(network)
    except Exception:
        return method == "erf"
    if method == "rollout":
        return fam == "vit"
    if method == "dino-heads":
        return fam == "vit" and has_cls_token(network)
    return method in ("attention", "erf")


__all__ = ["AttentionCapture", "ExplainSession", "METHODS", "TokenGrid", "attention_layers", "attention_rollout",
           "check_memory", "dino_head_masks", "dino_heads", "discard_lowest", "erf_map", "erf_statistics",
           "estimate_bytes", "family", "fuse_heads", "has_cls_token", "head_mask_labels", "input_gradient",
           "model_erf", "point_attention", "query_world", "rollout_vector", "supports", "top_mass_mask"]
