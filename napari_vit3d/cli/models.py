"""``napari-vit3d models``: list the model zoo, print a model card, add a model, measure its cost.

::

    napari-vit3d models                         # table of bundled and user-added models
    napari-vit3d models --card NAME [--cost]    # spec + model card (+ measured cost on --device)
    napari-vit3d models --add PATH [--name N]   # register a spec .json, checkpoint+spec, or bundle folder
    napari-vit3d models --remove NAME           # forget a user-added model

A MONAI bundle's config is code: ``--card BUNDLE`` lists what it would run without running it, and loading
it (``--add``, ``--card --cost``) needs ``--trust-bundle`` (``--add … --trust-bundle`` records the trust).
A model card is printed only when it is a text file inside the spec's folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import ModelError


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list models, print a model card, add a checkpoint or MONAI bundle",
                              description="List the bundled and user-added models, show one model's card, "
                                          "or register a checkpoint (with its spec .json) or a MONAI bundle folder.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--card", metavar="NAME", help="print the spec and model card of NAME (a name or a path)")
    g.add_argument("--add", metavar="PATH", help="register a spec .json, a checkpoint with a spec beside it, "
                                                 "or a MONAI bundle folder")
    g.add_argument("--remove", metavar="NAME", help="forget a user-added model (files are not touched)")
    p.add_argument("--name", help="with --add: the name to register it under")
    p.add_argument("--cost", action="store_true", help="with --card: measure parameters, FLOPs, memory and "
                                                       "latency for one ROI window")
    p.add_argument("--device", default="cpu", help="with --cost: cpu, cuda, mps or auto (default cpu)")
    p.add_argument("--repeats", type=int, default=3, help="with --cost: timed forward passes (default 3)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--trust-bundle", action="store_true",
                   help="with --add or --card --cost: run a MONAI bundle's config (code: Python expressions, imports); "
                        "--add records the trust for the config's current content (docs/security.md)")
    p.set_defaults(func=run)


#: a model card is printed only when it is a text file of at most this size
CARD_MAX_BYTES = 1024**2
CARD_SUFFIXES = (".md", ".markdown", ".txt", ".rst")


def _card_text(spec) -> tuple[str | None, str | None]:
    """(text, None) of the spec's model card, or (None, why it is not printed)."""
    try:
        card = spec.card_path
    except ModelError as exc:
        return None, str(exc)
    if card is None:
        return None, None
    if not card.is_file():
        return None, f"model card {card} not found"
    if card.suffix.lower() not in CARD_SUFFIXES:
        return None, f"model card {card} is not a text file ({', '.join(CARD_SUFFIXES)}); not printed"
    if card.stat().st_size > CARD_MAX_BYTES:
        return None, f"model card {card} is over {CARD_MAX_BYTES // 1024**2} MiB; not printed"
    try:
        return card.read_text(encoding="utf-8"), None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"model card {card} cannot be read ({exc})"


def _fmt_spacing(s) -> str:
    return "×".join(f"{v:g}" for v in s)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _list(args) -> int:
    from ..models.registry import list_models

    entries = list_models()
    if args.json:
        print(json.dumps([{"name": e.name, "source": e.source, "path": e.path, "default": e.is_default,
                           "error": e.error, "spec": e.spec.to_dict() if e.spec else None} for e in entries],
                         indent=2))
        return 0
    if not entries:
        print("no models yet: add one with `napari-vit3d models --add PATH` (see docs/models.md)")
        return 0
    rows = []
    for e in entries:
        mark = "*" if e.is_default else ""
        if e.spec is None:
            rows.append([mark, e.name, "?", "?", "?", "?", f"{e.source} (broken: {e.error})"])
            continue
        s = e.spec
        classes = ", ".join(lab.name for lab in s.labels if lab.index != 0) or "-"
        if len(classes) > 40:
            classes = classes[:37] + "..."
        rows.append([mark, e.name, s.architecture, f"{s.n_classes} ({classes})", _fmt_spacing(s.spacing),
                     "×".join(map(str, s.roi_size)), e.source])
    header = ["", "name", "architecture", "classes", "spacing mm", "ROI", "source"]
    if not any(e.is_default for e in entries):  # no marker column
        header, rows = header[1:], [r[1:] for r in rows]
    print(_table(rows, header))
    if any(e.is_default for e in entries):
        print("\n* default model (used when --model is not given)")
    return 0


def _card(args) -> int:
    from ..models.registry import get_spec

    spec = get_spec(args.card)
    d = spec.to_dict()
    code = trusted = None
    if spec.architecture == "monai_bundle" and spec.root:  # what its config would run: listed, never run here
        from ..models.trust import describe_bundle_code, is_trusted

        code, trusted = describe_bundle_code(spec.root), is_trusted(spec.root)
    cost = None
    if args.cost:
        from ..models.cost import format_cost, model_cost
        from ..models.registry import load_model

        loaded = load_model(spec, device=args.device, trust_bundle=args.trust_bundle)
        cost = model_cost(loaded.network, spec.roi_size, spec.in_channels, loaded.device, repeats=args.repeats)
    text, why = _card_text(spec)
    if args.json:
        print(json.dumps({"spec": d, "cost": cost, "bundle_code": code, "bundle_trusted": trusted,
                          "card": text, "card_problem": why}, indent=2, default=str))
        return 0
    print(f"# {spec.name}\n")
    print(json.dumps(d, indent=2))
    if code is not None:
        state = "trusted (its current content is recorded)" if trusted else "NOT trusted: nothing of it runs"
        print(f"\n## What this bundle's config runs ({len(code)} entries; {state})\n")
        print("\n".join(f"- {line}" for line in code) if code else "(no expressions or instantiations)")
    if text is not None:
        print()
        print(text)
    elif why:
        print(f"\n({why})", file=sys.stderr)
    if cost is not None:
        print("\n## Cost of one window\n")
        print(format_cost(cost))
    return 0


def run(args) -> int:
    from ..models.registry import add_model, remove_model

    if args.name and not args.add:
        raise ModelError("--name only goes with --add PATH")
    if args.cost and not args.card:
        raise ModelError("--cost only goes with --card NAME")
    if args.trust_bundle and not (args.add or args.cost):
        raise ModelError("--trust-bundle only goes with --add PATH or --card NAME --cost")
    if args.add:
        spec = add_model(args.add, name=args.name, trust_bundle=args.trust_bundle)
        print(f"added model {spec.name!r} ({spec.architecture}, {spec.n_classes} classes) from "
              f"{Path(args.add).resolve()}")
        return 0
    if args.remove:
        remove_model(args.remove)
        print(f"removed model {args.remove!r}")
        return 0
    if args.card:
        return _card(args)
    return _list(args)
