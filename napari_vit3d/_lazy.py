"""Lazy package exports (PEP 562): a package's public names are imported from their modules on first use,
so importing one light module of a package (a registry of names, a record type) does not import torch."""

from __future__ import annotations

from importlib import import_module


def lazy_exports(package: str, homes: dict[str, str]):
    """``(__getattr__, __dir__, __all__)`` for ``package``, whose public names live in ``homes``
    (public name → submodule, or ``"submodule:attribute"`` when the name differs)."""

    def __getattr__(name):
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = homes[name].partition(":")
        return getattr(import_module(f".{module}", package), attr or name)

    names = sorted(homes)

    def __dir__():
        return names

    return __getattr__, __dir__, names
