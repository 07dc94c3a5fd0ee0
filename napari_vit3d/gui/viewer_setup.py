"""The radiological view: axial slices, anterior at the top, the patient's right on the screen's left.

Layers made by the plugin hold their data with axes along +S, +A, +R (napari world axes 0, 1, 2 in
RAS mm, see :mod:`napari_vit3d.io.geometry`). napari's 2D view shows the last two axes (A vertical,
R horizontal), so the view is axial by default. The camera then decides the screen directions:

* ``up``: increasing A (anterior) points up the screen;
* ``left``: increasing R (the patient's right) points to the screen's left;
* ``towards``: increasing S points at the viewer in 3D. With the other two this keeps napari's
  right-handed rendering (``camera.handedness == "right"``), so a 3D rendering is the real head, not
  its mirror image.

World coordinates stay true RAS mm; nothing is flipped in the data.
"""

from __future__ import annotations

import logging
import weakref

RADIOLOGICAL_ORIENTATION = ("towards", "up", "left")
_log = logging.getLogger(__name__)


def viewer_camera(viewer):
    """The viewer's camera: ``viewer.scene.camera`` (napari ≥ 0.9), else ``viewer.camera``."""
    scene = getattr(viewer, "scene", None)
    camera = getattr(scene, "camera", None) if scene is not None else None
    return camera if camera is not None else viewer.camera


def apply_radiological_view(viewer, *, reset_dims: bool = True) -> None:
    """Set ``viewer``'s camera to the radiological orientation; with ``reset_dims`` also show the
    axial plane in 2D (when the viewer holds 3D data). Never raises: a failure is logged."""
    if viewer is None:
        return
    try:
        viewer_camera(viewer).orientation = RADIOLOGICAL_ORIENTATION
    except (AttributeError, TypeError, ValueError):  # a napari without camera.orientation: keep the viewer alive
        _log.warning("could not set the radiological camera orientation", exc_info=True)
        return
    if not reset_dims:
        return
    try:
        ndim = viewer.dims.ndim
        if ndim >= 3:
            viewer.dims.ndisplay = 2
            viewer.dims.order = tuple(range(ndim))
    except (AttributeError, TypeError, ValueError):
        _log.warning("could not reset the viewer's dimensions to the axial view", exc_info=True)


def schedule_radiological_view(viewer) -> None:
    """Apply the radiological camera now and, if the viewer is still empty, show the axial 2D view
    once the next layer arrives (a user who already looks at data in 3D or along another axis keeps
    that view when opening another scan).

    For npe2 readers and sample-data functions, which return layer data before napari adds it.
    Never raises.
    """
    if viewer is None:
        return
    apply_radiological_view(viewer, reset_dims=False)
    try:
        if len(viewer.layers) > 0:
            return
    except (AttributeError, RuntimeError):  # not a viewer, or one being closed
        return
    try:
        layers_events = viewer.layers.events.inserted
    except AttributeError:
        return

    def _once(event=None):
        try:
            layers_events.disconnect(_once)
        except (TypeError, ValueError, RuntimeError):
            pass
        apply_radiological_view(viewer)

    try:
        layers_events.connect(_once)
    except (TypeError, ValueError, RuntimeError):
        _log.warning("could not schedule the radiological view", exc_info=True)


_INSTALLED: weakref.WeakSet = weakref.WeakSet()


def install_radiological_view(viewer) -> None:
    """The plugin's view, set when one of its dock widgets is created (readers have no side effects):
    the radiological camera now, and the axial 2D view when the first layer arrives in an empty
    viewer (:func:`schedule_radiological_view`). Once per viewer; never raises."""
    if viewer is None:
        return
    try:
        if viewer in _INSTALLED:
            return
        _INSTALLED.add(viewer)
    except TypeError:  # not weak-referenceable: apply without remembering
        pass
    schedule_radiological_view(viewer)


__all__ = ["RADIOLOGICAL_ORIENTATION", "apply_radiological_view", "install_radiological_view",
           "schedule_radiological_view", "viewer_camera"]
