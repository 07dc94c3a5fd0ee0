"""One-time warm-up of the viewer, so that the first segmentation does not stall the event loop.

Two costs used to fall inside the first run, both measured by ``benchmarks/bench_gui_responsiveness.py``
(``docs/performance.md``, "GUI responsiveness"):

* **Python's cyclic garbage collector**: after napari, torch and MONAI are imported the process holds
  about 0.6 M objects, and a full collection walks them all (0.3–0.6 s with the GIL held, so the event
  loop waits whichever thread triggered it). Once the engine preload has finished, :func:`warm_up`
  calls ``gc.freeze()``: the objects alive then (modules, classes, the viewer, the widgets; they live
  as long as the process) move to the collector's permanent generation and are never walked again.
  Objects created later (scans, results, layers) are collected as before; what happened to be garbage
  at that moment (a few MB left by the imports) is never freed, the price of not running a full
  collection on the GUI thread. Set
  ``NAPARI_VIT3D_GC_FREEZE=0`` to switch this off.
* **napari's first Labels (and Points) layer**: building the first labels layer's visuals (shaders, the
  polygon overlay and its dash atlas) costs 0.1–0.2 s once per process; a tiny hidden Labels layer and
  a Points layer (the Explain query marker's type) are added and removed right after docking, so that
  cost is paid while the user is not waiting for a result.
"""

from __future__ import annotations

import gc
import logging
import os

import numpy as np

_log = logging.getLogger(__name__)
_DONE: set[str] = set()
#: polling interval (ms) while waiting for the engine preload to finish
_POLL_MS = 200


def _freeze_when_preloaded(thread) -> None:
    from qtpy.QtCore import QTimer

    if thread is not None and thread.is_alive():
        QTimer.singleShot(_POLL_MS, lambda: _freeze_when_preloaded(thread))
        return
    if os.environ.get("NAPARI_VIT3D_GC_FREEZE", "1") != "0":
        # no gc.collect() first: a full collection is the 0.3 s stall this avoids; what is garbage at this
        # moment (a few MB left by the imports) stays allocated
        gc.freeze()


def _prime_layers(viewer) -> None:
    """Add and remove a tiny hidden layer of each type the plugin shows (labels; the Explain query marker,
    a Points layer), so napari's first-layer-of-its-type cost is paid now."""
    try:
        for add, data in ((viewer.add_labels, np.zeros((2, 2, 2), np.uint8)),
                          (viewer.add_points, np.zeros((1, 3)))):
            layer = add(data, name="napari-vit3d warm-up", visible=False)
            viewer.layers.remove(layer)
    except (AttributeError, RuntimeError, ValueError, TypeError):  # a closing viewer: nothing to warm up
        _log.debug("layer warm-up skipped", exc_info=True)


def warm_up(viewer, preload_thread=None) -> None:
    """Once per process: prime napari's first Labels layer on the next event-loop turn, and freeze the
    objects alive after the engine preload (``preload_thread``) finishes (see the module docstring)."""
    from qtpy.QtCore import QTimer

    if "labels" not in _DONE and viewer is not None:
        _DONE.add("labels")
        QTimer.singleShot(0, lambda: _prime_layers(viewer))
    if "gc" not in _DONE:
        _DONE.add("gc")
        QTimer.singleShot(_POLL_MS, lambda: _freeze_when_preloaded(preload_thread))


__all__ = ["warm_up"]
