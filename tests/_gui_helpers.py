"""What the real-viewer tests (``test_gui_*.py``) share: a tiny random SegFormer3D spec, a private
environment (model registry, recovery folder, recorded notifications), the sample scan, docking a
widget and waiting for its worker.

A tiny SegFormer3D (4 mm model spacing, 32³ windows, random weights) keeps a Segment run to seconds.
"""

from __future__ import annotations

import json
import types

WAIT_MS = 120_000
SAMPLE = "colin27_t1"

#: background + two tissues
TWO_TISSUES = [{"index": 0, "name": "background", "color": [0, 0, 0, 0]},
               {"index": 1, "name": "tissue A", "color": [1.0, 0.4, 0.2, 1.0]},
               {"index": 2, "name": "tissue B", "color": [0.2, 0.6, 1.0, 1.0]}]


def tiny_spec(name: str, labels=TWO_TISSUES) -> dict:
    """The spec (no weights: random initialisation) of a tiny SegFormer3D called ``name``."""
    return {
        "name": name, "architecture": "segformer3d",
        "arch_kwargs": {"embed_dims": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
                        "sr_ratios": [2, 1, 1, 1], "decoder_dim": 16},
        "in_channels": 1, "channel_names": ["T1"], "spacing": [4.0, 4.0, 4.0], "roi_size": [32, 32, 32],
        "labels": labels,
    }


def gui_env(tmp_path, monkeypatch, base_spec: dict) -> types.SimpleNamespace:
    """Private model registry and recovery folder under ``tmp_path``; error/info notifications recorded.

    Returns ``tmp``, ``messages`` ({"error": [...], "info": [...]}) and ``spec(name, **changes)``, which
    writes ``base_spec`` renamed to ``name`` (with ``changes``) as ``tmp/<name>.json`` and returns the path.
    """
    from napari_vit3d.gui import _common, recovery

    monkeypatch.setenv("NAPARI_VIT3D_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv(recovery.ENV_VAR, str(tmp_path / "recovery"))
    messages = {"error": [], "info": []}
    monkeypatch.setattr(_common, "show_error", lambda m: messages["error"].append(str(m)))
    monkeypatch.setattr(_common, "show_info", lambda m: messages["info"].append(str(m)))

    def spec(name, **changes):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**base_spec, "name": name, **changes}))
        return path

    return types.SimpleNamespace(tmp=tmp_path, messages=messages, spec=spec)


def add_then_break(seg, env, name: str) -> str:
    """Register ``name`` (the tiny spec with real, random weights) through the Segment widget, then
    overwrite its weights file with junk: a model that was fine when added and no longer loads."""
    import safetensors.torch

    from napari_vit3d.models import registry

    loaded = registry.load_model(str(env.spec(name)), "cpu")
    weights = env.tmp / f"{name}.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in loaded.network.state_dict().items()}, str(weights))
    assert seg.add_model(str(env.spec(name, weights=weights.name))), env.messages
    weights.write_bytes(b"this is not safetensors data" * 10)
    return name


def open_sample(viewer, name: str = SAMPLE):
    """Open the plugin's sample scan ``name``; returns its image layer."""
    viewer.open_sample("napari-vit3d", name)
    return viewer.layers[name]


def dock(viewer, name: str):
    """Dock the plugin widget ``name`` (e.g. "1 Segment"); returns the widget."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-vit3d", name)
    return widget


def wait_for(qtbot, condition) -> None:
    """Process Qt events until ``condition()`` holds (a worker finished); fails after :data:`WAIT_MS`."""
    qtbot.waitUntil(condition, timeout=WAIT_MS)


def segment_and_wait(qtbot, seg):
    """Press Segment and wait until its worker is done; returns what ``seg.run()`` returned (its worker)."""
    worker = seg.run()
    wait_for(qtbot, lambda: not seg.running)
    return worker
