"""Explanations: attention for a clicked voxel, attention rollout, DINO per-head CLS attention and
effective receptive fields, as maps on the scan's own grid.

Public API (every function: ``(model, volume, query, options) → Volume`` with ``metadata`` holding
method, model, layer, head, query, window, parameters and units)::

    point_attention(model, volume, voxel=… | world=…, layer=None, head="mean" | "all" | h)
    attention_rollout(model, volume, [voxel/world], head_fusion="mean", discard_ratio=0, start_layer=0)
    dino_heads(model, volume, layer=None, coverage="scan" | "window")   # 4D, heads last; whole scan stitched
    dino_head_masks(model, volume, keep_mass=0.6)    # 4D uint8, heads last; head_mask_labels → 3D labels
    feature_similarity(model, volume, voxel=… | world=…, layer=None)  # "similar tissue": cosine to the click
    erf_map(model, volume, voxel=… | world=… | region=mask, target_class=None, log1p=False)
    model_erf(model, volume, n_samples=8)            # kernel in offset mm
    erf_statistics(erf_volume)

The method registry (:mod:`.methods`: ``METHODS``, ``run_method(name, model, volume, **options)``,
``supports(network, name)``) is what the CLI, the Explain widget and batch runs use.
``ExplainSession(model, volume)`` keeps the preprocessing and the captured windows, so a new click
in an already captured window costs no forward pass (pass ``session=`` to the functions above).
Lower level: :class:`~.capture.AttentionCapture`, :func:`~.attention.rollout_vector`,
:func:`~.erf.input_gradient`, :class:`~.tokens.TokenGrid`. Nothing here imports Qt or napari. Names are
imported from their modules on first use, so ``from napari_vit3d.explain import methods`` (listing methods
in a widget) does not import torch.
"""

from .._lazy import lazy_exports

#: public name -> submodule that defines it
_HOME = {
    **dict.fromkeys(("attention_rollout", "dino_head_masks", "dino_heads", "dino_mask_labels", "discard_lowest",
                     "fuse_heads", "head_mask_labels", "point_attention", "rollout_vector", "top_mass_mask"),
                    "attention"),
    **dict.fromkeys(("AttentionCapture", "attention_layers", "family", "has_cls_token"), "capture"),
    **dict.fromkeys(("erf_map", "erf_statistics", "input_gradient", "model_erf"), "erf"),
    **dict.fromkeys(("check_memory", "estimate_bytes"), "memory"),
    **dict.fromkeys(("METHODS", "ExplainMethod", "get_method", "method_names", "supports"), "methods"),
    **dict.fromkeys(("ExplainSession", "query_world"), "session"),
    **dict.fromkeys(("feature_similarity", "patch_features"), "similarity"),
    **dict.fromkeys(("blend_weights", "stitch", "tile_starts"), "whole_scan"),
    "TokenGrid": "tokens",
}


__getattr__, __dir__, __all__ = lazy_exports(__name__, {**_HOME, "run_method": "methods:run"})
