"""``napari-vit3d`` command line. Each sub-command lives in its own module of this package.

A command module defines ``register(subparsers)`` which adds its parser and sets ``func`` (a callable
taking the parsed ``argparse.Namespace`` and returning an exit code). User errors
(:class:`~napari_vit3d.errors.Vit3dError`) and refusals of the file system (``OSError``: permission,
disk full, ...) become one line on stderr and exit code 2; a cancelled run exits 130 (Ctrl-C), 143
(SIGTERM) or 129 (SIGHUP): those two signals are turned into the same ``KeyboardInterrupt`` path as Ctrl-C,
so temporary files are removed and no output is half-replaced. Running out of memory despite the
pre-flight checks is one line too (exit 2). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import signal
import sys
import threading
import warnings

from .. import __version__
from ..errors import Cancelled, Vit3dError

#: command modules, in the order ``--help`` lists them (missing modules are skipped)
COMMAND_MODULES = ("segment", "prompt", "batch", "explain", "evaluate", "compare", "models", "train", "info")

EXIT_OK, EXIT_USAGE_OR_INPUT, EXIT_CANCELLED = 0, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-vit3d", description="3D transformer segmentation and explanation")
    parser.add_argument("--version", action="version", version=f"napari-vit3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


#: options whose value is a comma-separated list of numbers that may start with a minus sign
_NUMBER_LIST_OPTIONS = ("--point-world", "--point-voxel", "--negative-world", "--negative-voxel", "--box-world")
_NUMBER_LIST = re.compile(r"-\s*[\d.]+(?:[eE][+-]?\d+)?(?:\s*,\s*-?\s*[\d.]+(?:[eE][+-]?\d+)?)*")


def _attach_negative_values(argv: list[str]) -> list[str]:
    """``--point-world -10,0,5`` → ``--point-world=-10,0,5``: argparse would take ``-10,0,5`` for an
    option (it only accepts plain negative numbers as values), and a point left of or behind the
    origin is an ordinary query."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in _NUMBER_LIST_OPTIONS and i + 1 < len(argv) and _NUMBER_LIST.fullmatch(argv[i + 1]):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Python is when it arrives: every ``except BaseException``/``finally``
    cleanup runs (temporary files are removed), exactly as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """While a command runs: SIGTERM and SIGHUP raise :class:`Terminated` (main thread only; handlers restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            old[sig] = signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_attach_negative_values(argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE_OR_INPUT
    warnings.showwarning = _show_warning
    try:
        with _terminate_as_interrupt():
            return int(args.func(args) or 0)
    except Cancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except Vit3dError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE_OR_INPUT
    except OSError as exc:  # the file system said no (permission, disk full, ...): the user's to fix, not a bug
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE_OR_INPUT
    except MemoryError:  # past the pre-flight estimates: still one line, not a traceback
        print("error: ran out of memory (the pre-flight estimate did not foresee this: close other programs, or use a "
              "smaller scan or model)", file=sys.stderr)
        return EXIT_USAGE_OR_INPUT
    except Terminated as exc:
        name = signal.Signals(exc.signum).name
        print(f"cancelled: {name} received; temporary files were removed", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
