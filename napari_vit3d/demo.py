"""``python -m napari_vit3d.demo [--headless --out DIR]``: napari with the Colin27 sample and the plugin.

Opens napari, loads the bundled Colin27 T1 through the plugin's reader, applies the radiological
view (axial, anterior at the top, the patient's right on the screen's left) and docks every widget
the plugin's manifest contributes. With ``--headless`` it saves ``DIR/demo.png`` (a screenshot of
the whole window) and exits; run it under Xvfb when there is no display (``make demo`` does).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PLUGIN = "napari-vit3d"


def plugin_widget_names() -> list[str]:
    """Display names of all widget contributions in the plugin's manifest (npe2), in order."""
    from npe2 import PluginManager

    pm = PluginManager.instance()
    try:
        manifest = pm.get_manifest(PLUGIN)
    except KeyError:
        pm.discover()
        manifest = pm.get_manifest(PLUGIN)
    return [w.display_name for w in (manifest.contributions.widgets or [])]


def setup_viewer(viewer, *, sample: str = "colin27_t1") -> list:
    """Load ``sample`` through the plugin, apply the radiological view, dock the plugin's widgets.

    Returns the docked widgets (``(dock widget, widget)`` pairs, in manifest order)."""
    from .gui.viewer_setup import apply_radiological_view
    from .io.samples import sample_path

    viewer.open(str(sample_path(sample)), plugin=PLUGIN)
    apply_radiological_view(viewer)
    docked = []
    for name in plugin_widget_names():
        docked.append(viewer.window.add_plugin_dock_widget(PLUGIN, name))
    _tabify(viewer, [dock for dock, _ in docked])
    viewer.reset_view()
    return docked


def _tabify(viewer, docks) -> None:
    """Stack several dock widgets as tabs (first one in front) so the canvas keeps its room."""
    if len(docks) < 2:
        return
    try:
        main = viewer.window._qt_window  # the QMainWindow; napari has no public call for tabs
        for dock in docks[1:]:
            main.tabifyDockWidget(docks[0], dock)
        docks[0].raise_()
    except (AttributeError, TypeError, RuntimeError):  # cosmetic: without these napari internals, docks stay stacked
        pass


def save_screenshot(viewer, out_dir, name: str = "demo.png") -> Path:
    """Show the window, let Qt draw it, and save ``out_dir/name`` (the whole window)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    from qtpy.QtWidgets import QApplication

    viewer.show()  # napari sets the window geometry when it shows the window: resize afterwards
    for _ in range(3):
        QApplication.processEvents()
    viewer.window.resize(1600, 1000)
    for _ in range(5):
        QApplication.processEvents()
    viewer.reset_view()  # fit the scan to the canvas at its final size
    _close_notification_toasts()
    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(str(path), canvas_only=False)
    return path


def _close_notification_toasts() -> None:
    """Close napari's pop-up notifications (e.g. library deprecation notes) so they do not cover the
    scan in the screenshot; they stay in napari's notification list."""
    from qtpy.QtWidgets import QApplication

    try:
        for widget in QApplication.allWidgets():
            if type(widget).__name__ == "NapariQtNotification" and widget.isVisible():
                widget.close()
    except RuntimeError:  # cosmetic only: a widget whose Qt object is already gone
        pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_vit3d.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--headless", action="store_true",
                        help="save a screenshot and exit (use Xvfb without a display)")
    parser.add_argument("--out", default="demo-output", help="folder for the screenshots (default: demo-output)")
    parser.add_argument("--no-segment", action="store_true", help="only open the sample and dock the widgets")
    args = parser.parse_args(argv)

    import napari

    from .errors import Vit3dError

    viewer = napari.Viewer(title="napari-vit3d demo", show=not args.headless)
    try:
        docked = setup_viewer(viewer)
    except Vit3dError as exc:
        print(f"napari-vit3d demo: {exc}", file=sys.stderr)
        viewer.close()
        return 1
    if args.headless:
        try:
            print(f"screenshot: {save_screenshot(viewer, args.out)}")
            if not args.no_segment:
                from .gui.demo_pipeline import run_demo_pipeline

                result = run_demo_pipeline(viewer, headless=True, docked=docked)
                if result.get("labels") is None:
                    print("napari-vit3d demo: segmentation produced no labels layer", file=sys.stderr)
                    return 1
                print(f"segmented: {result['labels'].name}; explanation: "
                      f"{getattr(result.get('map'), 'name', 'none')}")
                print(f"screenshot: {save_screenshot(viewer, args.out, name='demo-segment-explain.png')}")
        finally:
            viewer.close()
        return 0
    if not args.no_segment:
        from .gui.demo_pipeline import run_demo_pipeline

        run_demo_pipeline(viewer, headless=False, docked=docked)
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
