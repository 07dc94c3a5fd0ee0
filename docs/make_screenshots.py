"""Regenerate every screenshot of the user guide from the real GUI (``make screenshots``).

Runs the workflow of ``docs/user-guide-workflow.md`` in a real napari window with the bundled default
model on the bundled Colin27 sample, through the dock widgets, and saves one picture per step into
``docs/images/``::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py [--out docs/images]

Nothing is staged or drawn by hand: if a picture looks wrong, the GUI is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "images"))
    ap.add_argument("--model", default=None, help="model name (default: the bundled default)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vit3d_screens_"))
    os.environ.setdefault("NAPARI_VIT3D_RECOVERY_DIR", str(work / "recovery"))
    os.environ["NAPARI_CONFIG"] = str(work / "napari-settings.yaml")  # leave the user's settings alone

    import napari
    import numpy as np
    from napari.settings import get_settings
    from qtpy.QtWidgets import QWidget

    from napari_vit3d.gui._layers import file_voxel_to_world
    from napari_vit3d.gui.demo_pipeline import dock_widgets, query_voxel_in_labels, wait_until
    from napari_vit3d.gui.session import run_of

    get_settings().application.gui_notification_level = "none"  # no toasts over the pictures
    viewer = napari.Viewer(show=True, title="napari-vit3d")
    viewer.window.resize(1560, 960)
    viewer.open_sample("napari-vit3d", "colin27_t1")
    scan = viewer.layers["colin27_t1"]
    w = dock_widgets(viewer)
    seg, ex, review, export = w["segment"], w["explain"], w["review"], w["export"]

    def close_toasts():
        from qtpy.QtWidgets import QApplication

        for widget in QApplication.topLevelWidgets() + viewer.window._qt_window.findChildren(QWidget):
            if type(widget).__name__ == "NapariQtNotification":
                widget.close()

    def shot(name, dock):
        dock.show()
        dock.raise_()
        close_toasts()
        wait_until(lambda: True)
        path = out / name
        viewer.screenshot(str(path), canvas_only=False)
        print("wrote", path)

    # 1 Segment
    if args.model:
        seg.model_combo.setCurrentText(args.model)
    seg.advanced.setChecked(True)
    seg.run()
    wait_until(lambda: not seg.running)
    labels = viewer.layers["colin27_t1 · labels"]
    z = query_voxel_in_labels(labels)[0]
    viewer.dims.set_point(0, scan.data_to_world((z, 0, 0))[0])
    viewer.layers.selection.active = labels
    shot("01_segment.png", w["segment_dock"])
    seg.advanced.setChecked(False)

    # 2 Explain: a click inside the largest label
    ex.scan_combo.select(scan.name)
    ex._suggest_model()
    ex.method_combo.setCurrentIndex(0)
    q = query_voxel_in_labels(labels)
    ex.click_world(scan.data_to_world(q))
    wait_until(lambda: not ex.busy)
    labels.visible = False
    shot("02_explain.png", w["explain_dock"])

    # 2b Explain: similar tissue with the DINO ViT (frozen features, one pass over the whole head)
    if "dino-vit-brain" in [ex.model_combo.itemText(i) for i in range(ex.model_combo.count())]:
        for lyr in list(viewer.layers):
            if lyr.name.endswith("point attention"):
                lyr.visible = False
        ex.model_combo.setCurrentText("dino-vit-brain")
        ex.method_combo.setCurrentIndex(ex.method_combo.findData("similar"))
        wm = file_voxel_to_world(scan, (120, 110, 100))   # white matter above the right lateral ventricle
        viewer.dims.set_point(0, float(wm[0]))
        ex.click_world(wm)
        wait_until(lambda: not ex.busy)
        shot("07_similar.png", w["explain_dock"])
        viewer.layers["colin27_t1 · similar tissue"].visible = False
        ex.model_combo.setCurrentText(run_of(labels).model_key)
        ex.method_combo.setCurrentIndex(0)

    # 3 Review & correct: paint a stroke with napari's brush, see it in the changes layer
    for lyr in list(viewer.layers):
        if lyr.name.endswith("point attention"):
            lyr.visible = False
    labels.visible = True
    review.labels_combo.select(labels.name)
    labels.brush_size = 6
    label_value = int(np.asarray(labels.data)[q]) or 1
    for k in range(25):
        labels.paint((q[0], q[1] + 40, q[2] - 30 + 2 * k), label_value)
    wait_until(lambda: "colin27_t1 · labels · changes" in viewer.layers)
    review.refresh(force=True)
    labels.mode = "paint"
    shot("03_review.png", w["review_dock"])
    labels.mode = "pan_zoom"

    # 3b Review & correct: compare with the other bundled model (the disagreement layer over the scan)
    others = [review.compare_model_combo.itemText(i) for i in range(review.compare_model_combo.count())
              if review.compare_model_combo.itemText(i) != run_of(labels).model_key]
    if others:
        review.compare_model_combo.setCurrentText(others[0])
        review.compare()
        wait_until(lambda: not review.comparing)
        hidden = [lyr for lyr in viewer.layers if lyr.visible and lyr.name.endswith(("· labels", "· changes"))]
        for lyr in hidden:
            lyr.visible = False
        shot("05_compare.png", w["review_dock"])
        for lyr in hidden:
            lyr.visible = True

    # 3c Review & correct: click to segment (the promptable model) on the right lateral ventricle
    for lyr in list(viewer.layers):
        if lyr.name.endswith(("· changes", "· disagreement")):
            lyr.visible = False
    panel = review.prompt_panel
    panel.active_check.setChecked(True)

    click = file_voxel_to_world(scan, (101, 116, 93))  # the sample's right lateral ventricle
    viewer.dims.set_point(0, float(click[0]))           # the axial slice through the click
    labels.visible = False
    panel.click(click, positive=True)
    wait_until(lambda: not panel.busy and panel.last_result is not None)
    shot("06_prompt.png", w["review_dock"])
    labels.visible = True
    panel.reset()

    # 4 Export
    export.labels_combo.select(labels.name)
    export.folder.setText(str(work / "export"))
    (work / "export").mkdir()
    export.export()
    wait_until(lambda: not export.busy)
    shot("04_export.png", w["export_dock"])
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
