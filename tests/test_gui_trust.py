"""The Segment widget runs nothing the user did not trust, shows registry and pre-flight warnings, refuses
nonsense scans with a notification, and waits for its engine preload (no import race on a first bundle run)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
from _gui_helpers import dock, gui_env, segment_and_wait, tiny_spec
from napari.layers import Labels
from test_security_bundles import touch, write_bundle

from napari_vit3d.gui import _common


@pytest.fixture
def env(tmp_path, monkeypatch):
    from napari_vit3d.gui.segment_widget import start_engine_preload

    start_engine_preload().join()  # this test's own MONAI imports (write_bundle) must not race the preload
    e = gui_env(tmp_path, monkeypatch, tiny_spec("tiny-trust"))
    e.messages["warning"] = []
    monkeypatch.setattr(_common, "show_warning", lambda m: e.messages["warning"].append(str(m)))
    return e


def small_scan(path, data=None):
    if data is None:
        data = np.random.default_rng(0).random((20, 18, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def test_corrupt_registry_is_shown_and_bundled_default_listed(make_napari_viewer, env):
    (env.tmp / "config").mkdir()
    (env.tmp / "config" / "models.json").write_text("{ not json")
    from napari_vit3d.models import registry

    viewer = make_napari_viewer()
    seg = dock(viewer, "1 Segment")
    names = [seg.model_combo.itemText(i) for i in range(seg.model_combo.count())]
    assert registry.default_model_name() in names
    assert any("corrupt" in m for m in env.messages["warning"]), env.messages


def test_bundle_trust_no_runs_nothing_yes_runs(make_napari_viewer, qtbot, env, monkeypatch):
    marker = env.tmp / "MARKER"
    unet = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
            "channels": f"$({touch(marker)}) or [4, 8]", "strides": [2], "num_res_units": 1}
    b = write_bundle(env.tmp / "evil", network_def=unet)
    viewer = make_napari_viewer()
    seg = dock(viewer, "1 Segment")
    asked = []
    monkeypatch.setattr(seg, "ask_trust", lambda folder, lines: asked.append(lines) or False)
    assert not seg.add_model(str(b))
    assert asked and any("system" in line for line in asked[0])
    assert not marker.exists()
    assert any("not trusted" in m for m in env.messages["info"])
    monkeypatch.setattr(seg, "ask_trust", lambda folder, lines: True)
    assert seg.add_model(str(b))
    assert marker.exists()  # trusted: the test load ran its config
    marker.unlink()

    # the config changes: untrusted again; Segment asks, "no" runs nothing, "yes" segments
    cfg = b / "configs" / "inference.json"
    cfg.write_text(cfg.read_text().replace('"overlap": 0.25', '"overlap": 0.5'))
    from napari_vit3d.gui.session import forget_models

    forget_models()
    viewer.open(str(small_scan(env.tmp / "scan.nii.gz")), plugin="napari-vit3d")
    seg.model_combo.refresh(select="evil")
    assert seg.model_combo.currentText() == "evil"
    monkeypatch.setattr(seg, "ask_trust", lambda folder, lines: False)
    segment_and_wait(qtbot, seg)
    assert not marker.exists() and not [lyr for lyr in viewer.layers if isinstance(lyr, Labels)]
    monkeypatch.setattr(seg, "ask_trust", lambda folder, lines: True)
    segment_and_wait(qtbot, seg)
    qtbot.waitUntil(lambda: not seg.running and any(isinstance(lyr, Labels) for lyr in viewer.layers),
                    timeout=120_000)
    assert marker.exists()


def test_blank_scan_refused_and_small_scan_warned(make_napari_viewer, qtbot, env):
    viewer = make_napari_viewer()
    seg = dock(viewer, "1 Segment")
    assert seg.add_model(str(env.spec("tiny-trust")))
    viewer.open(str(small_scan(env.tmp / "blank.nii.gz", np.zeros((20, 18, 16), np.float32))),
                plugin="napari-vit3d")
    segment_and_wait(qtbot, seg)
    assert any("blank" in m for m in env.messages["error"]), env.messages
    assert not [lyr for lyr in viewer.layers if isinstance(lyr, Labels)]
    viewer.layers.clear()
    viewer.open(str(small_scan(env.tmp / "small.nii.gz")), plugin="napari-vit3d")
    segment_and_wait(qtbot, seg)
    assert any("padding" in m for m in env.messages["warning"]), env.messages
    assert [lyr for lyr in viewer.layers if isinstance(lyr, Labels)]


RACE = textwrap.dedent('''
    import sys, time
    import napari
    from qtpy.QtWidgets import QApplication
    from napari_vit3d.models import registry
    viewer = napari.Viewer(show=False)
    viewer.open(sys.argv[1], plugin="napari-vit3d")
    _, seg = viewer.window.add_plugin_dock_widget("napari-vit3d", "1 Segment")  # starts the preload thread
    seg.model_combo.refresh(select="legit")
    seg.run()  # at once: the worker imports monai.bundle while the preload may still run
    app = QApplication.instance()
    t0 = time.time()
    while (seg.running or not seg._job.worker is None) and time.time() - t0 < 120:
        app.processEvents(); time.sleep(0.01)
    ok = any(l.name.endswith("labels") for l in viewer.layers)
    print("OK" if ok else "FAILED: " + seg.status.text(), flush=True)
''')


def test_first_bundle_run_after_docking_waits_for_the_preload(tmp_path):
    b = write_bundle(tmp_path / "legit")
    scan = small_scan(tmp_path / "scan.nii.gz")
    env = {**os.environ, "NAPARI_VIT3D_CONFIG_DIR": str(tmp_path / "config"), "QT_QPA_PLATFORM": "offscreen",
           "NAPARI_VIT3D_RECOVERY_DIR": str(tmp_path / "recovery")}
    subprocess.run([sys.executable, "-c", "import sys; from napari_vit3d.cli import main; sys.exit(main(sys.argv[1:]))",
                    "models", "--add", str(b), "--name", "legit", "--trust-bundle"], env=env, check=True,
                   capture_output=True)
    (tmp_path / "race.py").write_text(RACE)
    for _ in range(3):
        out = subprocess.run([sys.executable, str(tmp_path / "race.py"), str(scan)], env=env, capture_output=True,
                             text=True, timeout=300)
        assert "OK" in out.stdout, (out.stdout, out.stderr[-3000:])
