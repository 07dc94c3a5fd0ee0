"""docs/cli.md documents every command ``napari-vit3d --help`` lists, with every option of each."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from napari_vit3d.cli import build_parser

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
#: documented in docs/models/ (the training engineer's pages); cli.md lists them with a pointer
POINTER_ONLY = ("train-seg", "train-dino", "train-prompt")


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _sections(text: str) -> dict[str, str]:
    """``## `name` …`` heading → its text (a heading may name several commands)."""
    out = {}
    parts = re.split(r"^## ", text, flags=re.MULTILINE)
    for part in parts[1:]:
        heading, _, body = part.partition("\n")
        for name in re.findall(r"`([a-z-]+)`", heading):
            out[name] = heading + "\n" + body
    return out


def test_every_command_and_option_is_documented():
    text = DOC.read_text(encoding="utf-8")
    sections = _sections(text)
    commands = _commands()
    assert {"segment", "explain", "evaluate", "compare", "compare-labels", "models", "info"} <= set(commands)
    missing = [c for c in commands if c not in sections]
    assert not missing, f"commands without a section in docs/cli.md: {missing}"
    undocumented = []
    for name, p in commands.items():
        if name in POINTER_ONLY:
            assert "docs/models/" in sections[name] or "(models/)" in sections[name]
            continue
        for action in p._actions:
            longs = [o for o in action.option_strings if o not in ("-h", "--help")]
            if longs and not any(f"`{o}" in sections[name] or f"{o} " in sections[name] or f"[{o}" in sections[name]
                                 for o in longs):
                undocumented.append(f"{name} {longs[0]}")
    assert not undocumented, f"options missing from docs/cli.md: {undocumented}"
    for code in ("| 0 |", "| 2 |", "| 130 |"):
        assert code in text
