"""The architecture registry: one record per architecture, used by every layer of the package.

In the spirit of timm's ``register_model``: each architecture registers its builder together with the
facts other modules need about it, so nothing else branches on architecture names:

* ``build(spec, in_channels, out_channels, kwargs)`` → a fresh ``nn.Module`` (keywords only);
* ``roi_multiple(arch_kwargs)`` → the size every ROI axis must be a multiple of (``inference.preprocess``
  checks windows with it);
* ``fixed_window``: positional embeddings fix the window to ``img_size`` (ViT family);
* ``attention``: the attention family (``"vit"`` global self-attention, ``"swin"`` shifted windows,
  ``"segformer"`` spatially reduced; None = no attention) — ``explain.capture`` implements each family;
* ``explain_methods``: the explanation methods (``explain.methods`` names) the architecture supports;
* ``bytes_per_voxel``: measured peak memory growth per window voxel (forward, forward+backward) on CPU
  at the default sizes (``benchmarks/bench_explain.py``), used by ``explain.memory``;
* ``network_class()``: the class its networks are instances of (lazy: MONAI is imported on use);
* ``spec_defaults``: arch_kwargs a spec always records (they change what trained weights compute).

``register_architecture(Architecture(...))`` adds one (a plugin or a test may add its own).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ModelError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ALL_METHODS", "Architecture", "architecture_names", "architecture_of", "check_window", "get_architecture",
           "register_architecture"]

#: every explanation method name (the explain.methods registry holds how each runs)
ALL_METHODS = ("attention", "rollout", "dino-heads", "erf", "similar")
#: memory per window voxel for networks of no registered architecture (generous)
UNKNOWN_BYTES_PER_VOXEL = (1500, 6000)


def _fixed(multiple: int) -> Callable[[dict], int]:
    return lambda kwargs: multiple


def _patch_multiple(kwargs: dict) -> int:
    import numpy as np

    p = kwargs.get("patch_size", 16)
    return int(p) if isinstance(p, int) else int(np.lcm.reduce([int(v) for v in p]))


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable | None
    roi_multiple: Callable[[dict], int] = _fixed(1)
    fixed_window: bool = False
    attention: str | None = None
    explain_methods: tuple[str, ...] = ()
    bytes_per_voxel: tuple[int, int] = UNKNOWN_BYTES_PER_VOXEL
    network_class: Callable[[], type] | None = None
    spec_defaults: dict = field(default_factory=dict)
    #: True when the network comes from elsewhere (a MONAI bundle's own config), not from ``build``
    external: bool = False


_REGISTRY: dict[str, Architecture] = {}


def register_architecture(arch: Architecture, *, replace: bool = False) -> Architecture:
    if arch.name in _REGISTRY and not replace:
        raise ModelError(f"architecture {arch.name!r} is already registered")
    unknown = set(arch.explain_methods) - set(ALL_METHODS)
    if unknown:
        raise ModelError(f"architecture {arch.name!r}: unknown explanation methods {sorted(unknown)}")
    _REGISTRY[arch.name] = arch
    return arch


def architecture_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_architecture(name: str) -> Architecture:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown architecture {name!r}; known: {', '.join(_REGISTRY)}") from None


def architecture_of(network: nn.Module) -> Architecture | None:
    """The registered architecture ``network`` is an instance of (None if none)."""
    for arch in _REGISTRY.values():
        if arch.network_class is not None and isinstance(network, arch.network_class()):
            return arch
    return None


def check_window(spec, roi_size) -> tuple[int, int, int]:
    """``roi_size`` as three ints, checked against ``spec``'s architecture: positive, a multiple of the
    architecture's ``roi_multiple`` on every axis, and equal to ``img_size`` where positional
    embeddings fix the window. The one home of these rules (building, inference and explanations)."""
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != 3 or min(roi) <= 0:
        raise ModelError(f"model {spec.name!r}: ROI must be three positive sizes, got {roi_size}")
    arch = get_architecture(spec.architecture)
    m = int(arch.roi_multiple(spec.arch_kwargs))
    if m > 1 and any(r % m for r in roi):
        raise ModelError(f"model {spec.name!r} ({arch.name}): ROI {roi} must be a multiple of {m} on every axis")
    img = spec.arch_kwargs.get("img_size") if arch.fixed_window else None
    if img is not None:
        img = (int(img),) * 3 if isinstance(img, (int, float)) else tuple(int(v) for v in img)
        if img != roi:
            raise ModelError(f"model {spec.name!r}: {arch.name} only accepts windows of its img_size {img}, "
                             f"not ROI {roi} (its positional embedding fixes the window size)")
    return roi


# --------------------------------------------------------------------------------------------- builders

def _unetr(spec, in_ch, out_ch, kwargs):
    from monai.networks.nets import UNETR

    kwargs.setdefault("img_size", spec.roi_size)
    return UNETR(in_channels=in_ch, out_channels=out_ch, **kwargs)


def _swin_unetr(spec, in_ch, out_ch, kwargs):
    from monai.networks.nets import SwinUNETR

    if "img_size" in kwargs:
        warnings.warn(f"model {spec.name!r}: dropped the SwinUNETR argument img_size={kwargs['img_size']!r} "
                      "(removed in MONAI 1.5)", stacklevel=3)
        kwargs.pop("img_size")
    if kwargs.get("use_checkpoint"):
        warnings.warn(f"model {spec.name!r}: use_checkpoint=True ignored (inference and explanations need it off)",
                      stacklevel=3)
    kwargs["use_checkpoint"] = False
    return SwinUNETR(in_channels=in_ch, out_channels=out_ch, **kwargs)


def _vit_seg(spec, in_ch, out_ch, kwargs):
    from .vit_seg import ViTSeg

    kwargs.setdefault("img_size", spec.roi_size)
    return ViTSeg(in_channels=in_ch, out_channels=out_ch, **kwargs)


def _segformer3d(spec, in_ch, out_ch, kwargs):
    from .segformer3d import SegFormer3D

    return SegFormer3D(in_channels=in_ch, out_channels=out_ch, **kwargs)


def _identity(spec, in_ch, out_ch, kwargs):
    from .registry import IdentityNet

    return IdentityNet(in_channels=in_ch, out_channels=out_ch)


def _monai_class(name: str):
    def get():
        import monai.networks.nets as nets

        return getattr(nets, name)
    return get


def _own_class(module: str, name: str):
    def get():
        from importlib import import_module

        return getattr(import_module(f"napari_vit3d.models.{module}"), name)
    return get


register_architecture(Architecture(
    "unetr", _unetr, _patch_multiple, fixed_window=True, attention="vit",
    explain_methods=("attention", "rollout", "erf", "similar"), bytes_per_voxel=(560, 1500),
    network_class=_monai_class("UNETR")))
register_architecture(Architecture(
    "swin_unetr", _swin_unetr, _fixed(32), attention="swin", explain_methods=("attention", "erf"),
    bytes_per_voxel=(1500, 6000), network_class=_monai_class("SwinUNETR")))
register_architecture(Architecture(
    "segformer3d", _segformer3d, _fixed(32), attention="segformer", explain_methods=("attention", "erf"),
    bytes_per_voxel=(340, 1200), network_class=_own_class("segformer3d", "SegFormer3D"),
    spec_defaults={"attn_scale": "head_dim"}))
register_architecture(Architecture(
    "vit_seg", _vit_seg, _patch_multiple, fixed_window=True, attention="vit",
    explain_methods=("attention", "rollout", "dino-heads", "erf", "similar"), bytes_per_voxel=(380, 2100),
    network_class=_own_class("vit_seg", "ViTSeg")))
register_architecture(Architecture("monai_bundle", None, external=True))
register_architecture(Architecture("identity", _identity, network_class=_own_class("registry", "IdentityNet")))
