"""Small helpers every dock widget shares: notifications, layer lookup, adding or replacing a layer
(:func:`upsert_layer`), writing labels as one undo step (:func:`apply_labels`), a labels layer's label
table, model pickers. Running jobs is :mod:`.jobs` (re-exported here: ``create_engine_worker``,
``ProgressBridge``).

Nothing here computes anything about scans: geometry comes from ``napari_vit3d.io`` and the
layer <-> ``Volume`` conversion from ``napari_vit3d._napari`` (see :mod:`napari_vit3d.gui._layers`).
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable

import napari.layers
import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QComboBox, QMessageBox, QWidget

from ..errors import Cancelled, ModelError, Vit3dError
from ..io import keys
from .jobs import ProgressBridge, create_engine_worker  # noqa: F401 - re-exported: the widgets import them from here

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


def is_result_labels(layer) -> bool:
    """A labels layer that holds a result one can review or export, not a view derived from one (changes,
    disagreement, prompt preview: ``io.keys.NOT_RESULTS``)."""
    return (isinstance(layer, Labels) and not any(k in layer.metadata for k in keys.NOT_RESULTS)
            and not layer.name.endswith(f"{SEP}changes"))


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


# -- adding or replacing a layer ---------------------------------------------------------------------
_TRANSFORM_KEYS = ("scale", "translate", "affine")


def build_layer(data, layer_type: str, **kwargs) -> Layer:
    """A napari layer object (not yet in a viewer) from data and layer kwargs.

    Safe in a worker thread: napari's layer models are plain Python; only adding the layer to a viewer
    (its visuals and controls) must happen on the GUI thread. Building it in the worker keeps that
    part of the work (tens of milliseconds for a scan-sized layer) off the event loop."""
    return Layer.create(data, dict(kwargs), layer_type)


@contextlib.contextmanager
def inserting_without_activation(layers):
    """Layers inserted inside this block do not become the active layer.

    napari makes every inserted layer the active one, which builds and shows its controls; when the
    previous active layer is then given back, the controls are swapped a second time (together 40–60 ms
    of the GUI thread per insertion on a 2-core machine, ``docs/performance.md``). This switches that off
    for the block (napari's ``SelectableEventedList._activate_on_insert``; a napari without it just
    activates as before)."""
    flag = getattr(layers, "_activate_on_insert", None)
    if not isinstance(flag, bool):
        yield
        return
    layers._activate_on_insert = False
    try:
        yield
    finally:
        layers._activate_on_insert = flag


def upsert_layer(viewer, name: str, data, layer_type: str, *, update=(), owned=None, prebuilt=None,
                 select: bool = False, **kwargs) -> Layer:
    """Show ``data`` as the layer called ``name``, adding it or replacing the one there.

    A layer of that name, of the same type and with data of the same shape, is updated in place: its
    data, its metadata (``kwargs["metadata"]`` merged in) and, when ``kwargs`` holds one, its transform
    (``scale``/``translate``/``affine``), plus the other ``kwargs`` named in ``update`` (e.g. "colormap",
    "features", "contrast_limits"); what the user set on it otherwise (opacity, visibility, colormap)
    stays. Any other layer of that name is removed and a new one added (``prebuilt``: the layer already
    built from ``data`` and ``kwargs`` with :func:`build_layer`, e.g. in the worker). ``owned(layer)``:
    when given and False for the layer found (a user's layer that happens to have the name), that layer
    is left alone and the new one gets a unique name.

    The active layer stays active (when it was the layer replaced, its replacement is); with ``select``
    the layer becomes the active one instead. Returns the layer.
    """
    layers = viewer.layers
    active = layers.selection.active
    existing = find_layer(viewer, name)
    if existing is not None and owned is not None and not owned(existing):
        name, existing = unique_name(viewer, name), None
    if (existing is not None and isinstance(existing, getattr(napari.layers, layer_type.capitalize()))
            and np.shape(existing.data) == np.shape(data)):
        existing.data = data
        if any(k in kwargs for k in _TRANSFORM_KEYS):
            nd = existing.ndim
            existing.scale = kwargs.get("scale", (1.0,) * nd)
            existing.translate = kwargs.get("translate", (0.0,) * nd)
            existing.affine = kwargs.get("affine", np.eye(nd + 1))
        if kwargs.get("metadata"):
            existing.metadata.update(kwargs["metadata"])
        for key in update:
            if key in kwargs:
                setattr(existing, key, kwargs[key])
        layer = existing
    else:
        if existing is not None:
            if existing is active:
                active = None  # its replacement becomes the active layer
            layers.remove(existing)
        layer = prebuilt if prebuilt is not None else build_layer(data, layer_type, **kwargs)
        layer.name = name
        with inserting_without_activation(layers):  # the selection is set once, below
            viewer.add_layer(layer)
        if active is None:
            active = layer
    if select:
        active = layer
    if active is not None and active in layers and layers.selection.active is not active:
        layers.selection.active = active
    return layer


def apply_labels(layer: Labels, new: np.ndarray) -> int:
    """Write ``new`` into ``layer`` as ONE undoable step; returns the number of voxels changed."""
    old = np.asarray(layer.data)
    changed = np.nonzero(old != new)
    n = int(changed[0].size)
    if n:
        with layer.block_history():
            layer.data_setitem(changed, new[changed])
    return n


def label_table_of(layer, present=()):
    """A labels layer's label table: its Segment run's, else the one saved with a recovered layer, else
    names from its features, else defaults; plus default entries for the values in ``present`` (the
    values found in the data, when the caller knows them: nothing is computed here)."""
    from ..io.labels import LabelTable
    from .session import run_of

    present = [int(v) for v in present]
    rec = run_of(layer)
    if rec is not None:
        return rec.label_table.with_missing(present)
    saved = (layer.metadata.get(keys.RECOVERED) or {}).get("label_table")
    if saved:
        try:
            return LabelTable.from_dict(saved).with_missing(present)
        except (KeyError, TypeError, ValueError):  # a damaged saved table: fall through to the defaults
            pass
    names = {}
    feats = getattr(layer, "features", None)
    if feats is not None and "index" in feats and "name" in feats:
        names = {int(i): str(n) for i, n in zip(feats["index"], feats["name"])}
    return LabelTable.default(sorted(set(present) | set(names)), names)


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
    except (ModelError, OSError, ValueError) as exc:  # a broken user model folder must not break the widget
        report_error(exc, "listing models")
        names = []
    try:
        default = registry.default_model_name()
    except ModelError:  # no bundled default: the list still works
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
