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
    viewer.reset_view()
    return docked


def save_screenshot(viewer, out_dir) -> Path:
    """Show the window, let Qt draw it, and save ``out_dir/demo.png`` (the whole window)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "demo.png"
    viewer.window._qt_window.show()
    viewer.window._qt_window.resize(1500, 950)
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(str(path), canvas_only=False)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_vit3d.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--headless", action="store_true", help="save a screenshot and exit (use Xvfb without a display)")
    parser.add_argument("--out", default="demo-output", help="folder for demo.png (default: demo-output)")
    args = parser.parse_args(argv)

    import napari

    from .errors import Vit3dError

    viewer = napari.Viewer(title="napari-vit3d demo", show=not args.headless)
    try:
        setup_viewer(viewer)
    except Vit3dError as exc:
        print(f"napari-vit3d demo: {exc}", file=sys.stderr)
        viewer.close()
        return 1
    if args.headless:
        try:
            path = save_screenshot(viewer, args.out)
            print(f"screenshot: {path}")
        finally:
            viewer.close()
        return 0
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
