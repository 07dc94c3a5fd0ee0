"""Small helpers every dock widget shares: notifications, layer lookup, worker bookkeeping, model pickers.

Nothing here computes anything about scans: geometry comes from ``napari_vit3d.io`` and the
layer <-> ``Volume`` conversion from ``napari_vit3d._napari`` (see :mod:`napari_vit3d.gui._layers`).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox, QFrame, QLabel, QMessageBox, QWidget

from ..errors import Cancelled, Vit3dError
from ..io import keys

SEP = " · "


def error_text(exc: BaseException) -> str:
    """One plain line for the user: our own errors as they are, anything else with its type."""
    if isinstance(exc, Vit3dError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "not enough memory for this request (try a smaller ROI or batch size)"
    return f"{type(exc).__name__}: {exc}"


def report_error(exc: BaseException, what: str = "") -> None:
    """Show ``exc`` as a napari notification; never raise. Unexpected errors also go to stderr."""
    if isinstance(exc, Cancelled):
        show_info(f"{what} cancelled" if what else "cancelled")
        return
    if not isinstance(exc, (Vit3dError, MemoryError, OSError)):
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    show_error(f"{what}: {error_text(exc)}" if what else error_text(exc))


def info(msg: str) -> None:
    show_info(msg)


def warn(msg: str) -> None:
    show_warning(msg)


def scan_layers(viewer) -> list[Image]:
    """Image layers that are scans (not maps the plugin made), newest last."""
    out = []
    for layer in viewer.layers:
        if not isinstance(layer, Image) or layer.rgb:
            continue
        if keys.MAP in layer.metadata:  # a map the plugin made (explanation, probability, uncertainty)
            continue
        out.append(layer)
    return out


def labels_layers(viewer) -> list[Labels]:
    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def find_layer(viewer, name: str):
    try:
        return viewer.layers[name]
    except (KeyError, ValueError):
        return None


def unique_name(viewer, name: str) -> str:
    if find_layer(viewer, name) is None:
        return name
    n = 2
    while find_layer(viewer, f"{name} ({n})") is not None:
        n += 1
    return f"{name} ({n})"


class LayerCombo(QComboBox):
    """A combo box listing the viewer's layers that pass ``accept``; follows inserts/removals/renames."""

    def __init__(self, viewer, accept: Callable[[object], bool], parent: QWidget | None = None):
        super().__init__(parent)
        self._viewer = viewer
        self._accept = accept
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.moved.connect(self.refresh)
        self.destroyed.connect(lambda *_: self._disconnect(viewer))
        self._connected_names: set[int] = set()
        self.refresh()

    def _disconnect(self, viewer) -> None:
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
            try:
                ev.disconnect(self.refresh)
            except (TypeError, RuntimeError, ValueError):
                pass

    def refresh(self, *_):
        try:
            current = self.currentText()
        except RuntimeError:  # the widget is gone
            return
        names = []
        for layer in self._viewer.layers:
            if id(layer) not in self._connected_names:
                layer.events.name.connect(self.refresh)
                self._connected_names.add(id(layer))
            if self._accept(layer):
                names.append(layer.name)
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        elif names:
            self.setCurrentIndex(len(names) - 1)
        self.blockSignals(False)
        self.currentIndexChanged.emit(self.currentIndex())

    def layer(self):
        name = self.currentText()
        return find_layer(self._viewer, name) if name else None

    def select(self, name: str) -> None:
        self.refresh()
        self.setCurrentText(name)


class ProgressBridge(QObject):
    """Carries ``progress(done, total)`` from a worker thread to the GUI thread (queued signal)."""

    progress = Signal(int, int)


def create_engine_worker(job: Callable, *args, bridge: ProgressBridge, cancel_event):
    """A napari thread worker (not started) running ``job(*args, progress, cancel)``.

    ``progress(done, total)`` reaches the GUI thread through ``bridge.progress``; ``cancel()`` is True
    once ``cancel_event`` is set or the worker was asked to quit, so the engine stops within one
    window batch. Errors are left to the caller's ``errored`` handler.
    """
    holder = {}

    def progress(done, total):
        bridge.progress.emit(int(done), int(total))

    def cancel():
        w = holder.get("worker")
        return cancel_event.is_set() or (w is not None and w.abort_requested)

    worker = create_worker(job, *args, progress, cancel, _start_thread=False, _ignore_errors=True)
    holder["worker"] = worker
    return worker


def set_mouse_callback(viewer, callback, on: bool, *, first: bool = False) -> None:
    """Add (``on``; at the front with ``first``) or remove ``callback`` from the viewer's mouse-drag
    callbacks, once; removing one that is not there is a no-op (a closed widget, a closed viewer)."""
    cbs = viewer.mouse_drag_callbacks
    if on and callback not in cbs:
        if first:
            cbs.insert(0, callback)
        else:
            cbs.append(callback)
    elif not on:
        try:
            cbs.remove(callback)
        except ValueError:
            pass


def model_names() -> list[str]:
    """Names for a model picker: every registered model (``models.registry``), the bundled default first.

    A broken user model folder is reported (a notification) and gives an empty list, never an exception.
    """
    from ..models import registry

    try:
        names = [str(getattr(m, "name", m)) for m in registry.list_models()]
    except Exception as exc:  # a broken user model folder must not break the widget
        report_error(exc, "listing models")
        names = []
    try:
        default = registry.default_model_name()
    except Exception:  # no bundled default: the list still works
        default = None
    if default in names:
        names.remove(default)
        names.insert(0, default)
    return names


class ModelCombo(QComboBox):
    """A model picker filled from :func:`model_names`; it lists the registry afresh each time it opens,
    so a model added in another widget (or with ``napari-vit3d models add``) shows up."""

    def refresh(self, select: str | None = None) -> None:
        """Re-list the models, keeping the current choice (or choosing ``select``); emits
        ``currentIndexChanged`` only when the chosen model changes."""
        before = self.currentText()
        names = model_names()
        was_blocked = self.blockSignals(True)
        self.clear()
        self.addItems(names)
        want = select if select in names else before
        if want in names:
            self.setCurrentText(want)
        self.blockSignals(was_blocked)
        if self.currentText() != before and not was_blocked:
            self.currentIndexChanged.emit(self.currentIndex())

    def showPopup(self):  # noqa: N802 (Qt name)
        self.refresh()
        super().showPopup()


def ask_yes_no_cancel(parent, title: str, text: str, yes: str, no: str | None) -> str:
    """A modal question; returns "yes", "no" or "cancel". Tests patch the widgets' ``ask_*`` methods."""
    box = QMessageBox(parent)
    box.setWindowTitle(title)
    box.setText(text)
    b_yes = box.addButton(yes, QMessageBox.AcceptRole)
    b_no = box.addButton(no, QMessageBox.DestructiveRole) if no else None
    box.addButton(QMessageBox.Cancel)
    box.exec_()
    clicked = box.clickedButton()
    if clicked is b_yes:
        return "yes"
    if b_no is not None and clicked is b_no:
        return "no"
    return "cancel"


def hline() -> QFrame:
    f = QFrame()
    f.setFrameShape(QFrame.HLine)
    f.setFrameShadow(QFrame.Sunken)
    return f


def heading(text: str) -> QLabel:
    lab = QLabel(f"<b>{text}</b>")
    return lab


def robust_limits(data: np.ndarray, lo: float = 1.0, hi: float = 99.7) -> tuple[float, float]:
    """Contrast limits from percentiles of the non-zero values (maps are mostly zero)."""
    arr = np.asarray(data)
    sample = arr.ravel()[:: max(1, arr.size // 2_000_000)]
    nz = sample[np.isfinite(sample) & (sample != 0)]
    if nz.size == 0:
        return (0.0, 1.0)
    a, b = np.percentile(nz, [lo, hi])
    if b <= a:
        b = a + (abs(a) or 1.0) * 1e-3 + 1e-6
    return (float(a), float(b))


def unwrap(obj):
    """The object behind napari's ``PublicOnlyProxy`` (npe2 widgets receive the viewer wrapped).

    The proxy makes a new wrapper on every attribute access, so ``is`` and ``id()`` on layers taken
    through it never match; the widgets keep the real viewer and use only its public API.
    """
    while hasattr(obj, "__wrapped__"):
        obj = obj.__wrapped__
    return obj
