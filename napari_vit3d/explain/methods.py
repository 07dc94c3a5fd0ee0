"""The explanation-method registry: one record per method, used by the Python API, the CLI, the Explain
widget and batch runs alike.

Each :class:`ExplainMethod` holds the function that computes it (``(model, volume, **options) →
Volume`` on the scan's grid), the options it takes, whether it needs a query point, the text the GUI
shows, the name its layer gets and its colormap, and which networks it applies to (through the
attention family of ``explain.capture``; the architecture registry ``models.architectures`` lists the
methods each architecture supports, for choosing a model before one is loaded).

::

    from napari_vit3d.explain import methods
    vol = methods.run("attention", model, scan, voxel=(40, 50, 30), layer=-1, head="mean")
    methods.supports(model.network, "rollout")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module

from ..errors import GeometryError, ModelError
from ..models.architectures import architecture_names, get_architecture

__all__ = ["ExplainMethod", "METHODS", "architectures_supporting", "check_query", "get_method", "method_names",
           "run", "supports"]

#: keywords every method takes besides its options
COMMON = ("voxel", "world", "session", "progress", "cancel")


@dataclass(frozen=True)
class ExplainMethod:
    name: str  # the CLI / API name
    title: str  # what the GUI's method list shows
    layer_name: str  # "<scan> · <layer_name>"
    #: "module:function" inside napari_vit3d.explain, imported on first use (so that listing methods,
    #: e.g. in a widget, does not import torch)
    function_path: str
    options: tuple[str, ...] = ()
    #: "required", "optional" (chooses the window / row when given) or "point or region" (ERF)
    query: str = "optional"
    #: the attention family it needs ("vit" for rollout / DINO heads), None = any explainable network
    family: str | None = None
    needs_cls: bool = False
    #: options the GUI always passes (the CLI exposes them as flags)
    gui_defaults: dict = field(default_factory=dict)
    colormap: str = "inferno"
    #: "map" (float image) or "labels"
    output: str = "map"
    #: listed as an ``explain --method`` choice (composite GUI methods are not)
    cli: bool = True

    @property
    def function(self) -> Callable:
        module, _, name = self.function_path.partition(":")
        return getattr(import_module(f"napari_vit3d.explain.{module}"), name)

    @property
    def uses_layer(self) -> bool:
        return "layer" in self.options

    @property
    def uses_head(self) -> bool:
        return "head" in self.options


METHODS: dict[str, ExplainMethod] = {m.name: m for m in (
    ExplainMethod("attention", "Point attention (clicked voxel)", "point attention", "attention:point_attention",
                  ("layer", "head", "reuse_window", "grid"), query="required"),
    ExplainMethod("rollout", "Attention rollout (clicked voxel; ViT/UNETR)", "rollout", "attention:attention_rollout",
                  ("head_fusion", "discard_ratio", "start_layer", "reuse_window"), family="vit"),
    ExplainMethod("dino-heads", "DINO heads (CLS attention per head; ViT)", "dino heads", "attention:dino_heads",
                  ("layer", "reuse_window", "coverage"), family="vit", needs_cls=True, colormap="turbo"),
    ExplainMethod("erf", "Effective receptive field (clicked voxel)", "erf", "erf:erf_map",
                  ("region", "target_class", "absolute", "log1p"), query="point or region",
                  gui_defaults={"log1p": True}, colormap="magma"),
    ExplainMethod("dino-masks", "DINO head masks (labels)", "dino head masks", "attention:dino_mask_labels",
                  ("keep_mass", "layer", "coverage"), family="vit", needs_cls=True, output="labels", cli=False),
    ExplainMethod("similar", "Similar tissue (feature similarity to the clicked voxel; ViT)", "similar tissue",
                  "similarity:feature_similarity", ("layer", "coverage"), query="required", family="vit",
                  colormap="viridis"),
)}


def method_names(*, cli: bool | None = None) -> tuple[str, ...]:
    return tuple(n for n, m in METHODS.items() if cli is None or m.cli == cli)


def get_method(name: str) -> ExplainMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ModelError(f"unknown explanation method {name!r}; known: {', '.join(METHODS)}") from None


def supports(network, name: str) -> bool:
    """Whether ``network`` can be explained by method ``name``."""
    from .capture import family, has_cls_token

    m = get_method(name)
    try:
        fam = family(network)
    except ModelError:  # no attention layers: only gradients (ERF) apply
        return m.family is None and m.query == "point or region"
    if m.family is not None and fam != m.family:
        return False
    return not m.needs_cls or has_cls_token(network)


def architectures_supporting(name: str) -> tuple[str, ...]:
    """The registered architectures whose record lists method ``name`` (DINO masks go with DINO heads)."""
    base = "dino-heads" if name == "dino-masks" else get_method(name).name
    return tuple(a for a in architecture_names() if base in get_architecture(a).explain_methods)


def check_query(name: str, *, voxel=None, world=None, region=None) -> None:
    """A one-line :class:`GeometryError` when method ``name`` needs a query it was not given."""
    m = get_method(name)
    has_point = voxel is not None or world is not None
    if m.query == "required" and not has_point:
        raise GeometryError(f"{name} needs a query point (--point-world X,Y,Z or --point-voxel I,J,K; in the "
                            f"viewer: a click)")
    if m.query == "point or region" and not has_point and region is None:
        raise GeometryError(f"{name} needs a query point (--point-world / --point-voxel) or a region mask (--region)")


def run(name: str, model, volume, **options):
    """Compute method ``name`` on ``volume`` with ``model``; ``options`` are the method's own (see
    :data:`METHODS`) plus ``voxel``/``world``/``session``/``progress``/``cancel``. Unknown options are
    refused in one line rather than passed on."""
    m = get_method(name)
    unknown = set(options) - set(m.options) - set(COMMON)
    if unknown:
        raise ModelError(f"{name} takes no option(s) {', '.join(sorted(unknown))}; "
                         f"its options: {', '.join(m.options) or 'none'}")
    check_query(name, voxel=options.get("voxel"), world=options.get("world"), region=options.get("region"))
    return m.function(model, volume, **options)

