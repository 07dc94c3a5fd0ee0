"""napari_vit3d.models: model specs and registry, our architectures (SegFormer3D, ViT-CLS segmentation,
DINO head), MONAI builders, safe checkpoint loading and MONAI bundles.

Public API::

    from napari_vit3d.models import ModelSpec, LabelInfo, load_model, LoadedModel, build_network,
        get_spec, list_models, add_model, default_model_name

Heavier pieces are imported from their modules (``segformer3d``, ``vit_seg``, ``checkpoints``, ``bundle``,
``cost``); ``trust`` holds the trust of MONAI bundles (their configs are code: ``describe_bundle_code``,
``is_trusted``, ``trust_bundle``, ``require_trust``; see docs/security.md).
"""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    **dict.fromkeys(("LoadedModel", "add_model", "build_network", "default_model_name", "get_spec", "list_models",
                     "load_model", "remove_model"), "registry"),
    **dict.fromkeys(("LabelInfo", "ModelSpec"), "spec"),
    **dict.fromkeys(("Architecture", "get_architecture", "register_architecture"), "architectures"),
    "resolve_device": "devices",
})
