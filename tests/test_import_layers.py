"""The package's import direction and headless engine, checked from the source and in fresh interpreters.

Layers (docs/architecture.md): ``gui``/``_napari``/``cli`` → ``batch`` → ``review``/``explain``/``prompt`` → ``inference`` →
``models`` → ``io`` → ``errors``; ``training`` may use ``models``, ``inference`` and ``io``. Nothing
below ``gui``/``_napari`` may import napari or a Qt binding, so the engine runs without a display.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import napari_vit3d

PKG = Path(napari_vit3d.__file__).resolve().parent

#: rank of each top-level part: a module may import parts of lower or equal rank only
RANK = {"errors": 0, "_lazy": 0, "io": 1, "models": 2, "inference": 3, "explain": 4, "review": 4, "prompt": 4,
        "training": 5, "batch": 5, "usecases": 5, "cli": 6, "gui": 6, "_napari": 6, "demo": 7}
ENGINE = ("errors", "_lazy", "io", "models", "inference", "explain", "review", "prompt", "training", "batch",
          "usecases", "cli")
GUI_LIBS = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy")


def _part(module: str) -> str | None:
    """``napari_vit3d.X.…`` → ``X`` (None for the package root)."""
    bits = module.split(".")
    return bits[1] if len(bits) > 1 and bits[0] == "napari_vit3d" else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in ``path``, including those inside functions."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    package = parts if path.name == "__init__.py" else parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from .. import x, y: each name may be a module
                    out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
                    continue
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
    return out


def _engine_files():
    for part in ENGINE:
        target = PKG / part
        files = sorted(target.rglob("*.py")) if target.is_dir() else [PKG / f"{part}.py"]
        for f in files:
            yield part, f


def test_imports_point_down_the_layers():
    bad = []
    for part in list(RANK):
        target = PKG / part
        files = sorted(target.rglob("*.py")) if target.is_dir() else [PKG / f"{part}.py"]
        for f in files:
            if not f.is_file():
                continue
            for line, mod in _imports(f):
                other = _part(mod)
                if other is None or other == part or other not in RANK:
                    continue
                if RANK[other] > RANK[part]:
                    bad.append(f"{f.relative_to(PKG.parent)}:{line} ({part}) imports {mod}")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_engine_sources_never_mention_gui_libraries():
    bad = [f"{f.relative_to(PKG.parent)}:{line} imports {mod}"
           for _, f in _engine_files() for line, mod in _imports(f) if mod.split(".")[0] in GUI_LIBS]
    assert not bad, "\n".join(bad)


def _all_modules(part: str) -> list[str]:
    target = PKG / part
    if not target.is_dir():
        return [f"napari_vit3d.{part}"]
    mods = [f"napari_vit3d.{part}"]
    for info in pkgutil.walk_packages([str(target)], prefix=f"napari_vit3d.{part}."):
        if not info.name.endswith("__main__"):
            mods.append(info.name)
    return mods


@pytest.mark.parametrize("part", ENGINE)
def test_engine_subpackage_imports_without_napari_or_qt(part):
    """Import every module of the subpackage in a fresh interpreter; no GUI library may be loaded."""
    mods = _all_modules(part)
    code = ("import importlib, sys\n"
            f"for m in {mods!r}:\n"
            "    importlib.import_module(m)\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {GUI_LIBS!r})\n"
            "print(bad)\n"
            "sys.exit(1 if bad else 0)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, f"{part}: {res.stdout}{res.stderr[-2000:]}"


def test_cli_help_and_parser_stay_headless():
    """Building the whole ``napari-vit3d`` parser (every command module) loads no GUI library."""
    code = ("import sys\nfrom napari_vit3d.cli import build_parser\nbuild_parser()\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {GUI_LIBS!r})\n"
            "print(bad)\nsys.exit(1 if bad else 0)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
