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
  While the preload runs (its imports create some 0.3 M objects), the collector is switched off
  (``gc.disable()``): otherwise its full collections, 0.2–0.3 s each, fell three times into the seconds
  after docking. It is switched back on, with the freeze, as soon as the preload has finished.
* **napari's first layer of each type and its first draw**: building the first labels layer's visuals
  (shaders, the polygon overlay and its dash atlas) and drawing the first Points marker and map
  (vispy renders its font glyphs then) cost 0.1–0.3 s once per process. Once the preload has finished
  (earlier, the layers waited on the preload's import of pandas for up to 2 s), a tiny Labels, Points
  and Image layer, fully transparent, are added, drawn once and removed, so that cost is paid while the
  user is not waiting for a result.
"""

from __future__ import annotations

import gc
import logging
import os
import weakref

import numpy as np

_log = logging.getLogger(__name__)
#: polling interval (ms) while waiting for the engine preload to finish
_POLL_MS = 200
#: name of the warm-up layers (they live for a few tenths of a second)
PRIME_NAME = "napari-vit3d warm-up"
#: ms the transparent warm-up layers stay, so that the canvas draws them once
_PRIME_DRAW_MS = 150
#: the process's warm-up: started (``warm_up`` called), finished (everything done), gc_off (the collector
#: is switched off until the preload has finished)
_STATE = {"started": False, "finished": False, "gc_off": False}


def _gc_wanted() -> bool:
    return os.environ.get("NAPARI_VIT3D_GC_FREEZE", "1") != "0"


def _after_preload(thread, viewer, on_done) -> None:
    """GUI thread, polled: once the preload thread has finished, freeze what is alive and switch the
    collector back on, then prime the layers."""
    from qtpy.QtCore import QTimer

    if thread is not None and thread.is_alive():
        QTimer.singleShot(_POLL_MS, lambda: _after_preload(thread, viewer, on_done))
        return
    if _gc_wanted():
        # no gc.collect() first: a full collection is the 0.3 s stall this avoids; what is garbage at this
        # moment (a few MB left by the imports) stays allocated
        gc.freeze()
    if _STATE["gc_off"]:
        gc.enable()
        _STATE["gc_off"] = False
    viewer = viewer() if viewer is not None else None  # a weak reference: a closed viewer is not kept alive
    if _viewer_open(viewer):
        _prime_layers(viewer, on_done)
    else:
        _finish(on_done)


def _viewer_open(viewer) -> bool:
    """A viewer whose window is still there (napari deletes ``window._qt_window`` when it closes)."""
    return viewer is not None and getattr(getattr(viewer, "window", None), "_qt_window", None) is not None


def _finish(on_done) -> None:
    _STATE["finished"] = True
    if on_done is not None:
        on_done()


def _prime_layers(viewer, on_done=None) -> None:
    """Add a tiny transparent layer of each type the plugin shows (labels; the Explain query marker, a
    Points layer; a map, an Image layer), let the canvas draw them once, then remove them: napari's
    first-layer-of-its-type and first-draw costs are paid now."""
    from qtpy.QtCore import QTimer

    added = []
    active = viewer.layers.selection.active  # a new layer takes the selection: given back below
    try:
        for add, data, kw in ((viewer.add_labels, np.zeros((2, 2, 2), np.uint8), {}),
                              (viewer.add_points, np.zeros((1, 3)), {"symbol": "cross", "size": 1}),
                              (viewer.add_image, np.zeros((2, 2, 2), np.float32), {"blending": "additive"})):
            added.append(add(data, name=PRIME_NAME, opacity=0.0, **kw))
    except Exception:  # noqa: BLE001 - a warm-up is an optimisation: whatever napari raises, the viewer goes on
        _log.debug("layer warm-up skipped", exc_info=True)

    def remove():
        for layer in added:
            try:
                if layer in viewer.layers:
                    viewer.layers.remove(layer)
            except Exception:  # noqa: BLE001 - the viewer closed meanwhile: nothing to clean up
                _log.debug("warm-up layer already gone", exc_info=True)
        try:
            if active is not None and active in viewer.layers:
                viewer.layers.selection.active = active
        except Exception:  # noqa: BLE001 - the viewer closed meanwhile
            _log.debug("selection not given back", exc_info=True)
        _finish(on_done)

    QTimer.singleShot(_PRIME_DRAW_MS, remove)


def warm_up(viewer, preload_thread=None, on_done=None) -> None:
    """Once per process (later calls do nothing): switch the garbage collector off while the engine preload
    (``preload_thread``) runs; when it has finished, freeze what is alive, switch the collector back on
    and prime napari's layers in ``viewer`` (see the module docstring). ``on_done`` is called on the GUI
    thread when all of it is over."""
    from qtpy.QtCore import QTimer

    if _STATE["started"]:
        return
    _STATE["started"] = True
    if _gc_wanted() and gc.isenabled() and preload_thread is not None and preload_thread.is_alive():
        gc.disable()
        _STATE["gc_off"] = True
    ref = _weak(viewer)
    QTimer.singleShot(0, lambda: _after_preload(preload_thread, ref, on_done))


def _weak(viewer):
    """A callable giving ``viewer`` back (None once it is gone); None for no viewer."""
    if viewer is None:
        return None
    try:
        return weakref.ref(viewer)
    except TypeError:  # not weakly referenceable: hold it
        return lambda: viewer


def warm_up_finished() -> bool:
    """True once this process's warm-up has run to its end."""
    return _STATE["finished"]


__all__ = ["PRIME_NAME", "warm_up", "warm_up_finished"]
