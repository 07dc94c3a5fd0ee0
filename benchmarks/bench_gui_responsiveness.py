"""Is the viewer responsive while a segmentation or an explanation runs? An event-loop heartbeat.

A ``QTimer`` fires every 10 ms on the GUI thread and records when it actually ran. While the Segment
widget's worker runs the model (and then the Explain widget's worker computes point attention at a
clicked voxel), the gaps between heartbeats show how long the event loop was blocked: a gap of
100 ms or more is a visible freeze. The GUI thread is also used to add the result layers at the
end (the Segment widget inserts them one per event-loop turn, ``gui.jobs.StepQueue``); that part is
reported separately, as it is the only work the widgets do on the GUI thread.

Phases: docking (the engine preload and the warm-up, ``gui.warmup``, run in the background until they
have finished), an idle viewer, the segmentation, the Explain widget settling after it is docked, two
clicks, and a control: napari alone inserting a ready-made labels layer of the scan's shape (what one
layer insertion costs whoever does it).

Columns: ``phase``,
``seconds`` (wall time of the phase), ``beats`` (heartbeats seen), ``max gap`` and ``p95 gap`` (ms
between consecutive heartbeats; 10 ms is perfect), ``gaps ≥ 100 ms`` (how many), the largest gap that
does not overlap the widgets' own GUI-thread work (building the result layers: what the worker's
computation costs the event loop, e.g. through the GIL), the total time of that GUI-thread work, the
longest single stretch of it (one layer insertion) and the longest pause of Python's cyclic garbage
collector in the phase (it holds the GIL: whichever thread triggers it, the event loop waits).

Run (needs an X server; ``make bench`` arranges one through ``benchmarks/run_all.py`` under xvfb)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_gui_responsiveness.py \
        [--model NAME_OR_SPEC] [--json out.json] [--threads N] [--where] [--gc-freeze]

``--gc-freeze`` is an older experiment: ``gc.freeze()`` once the engine is imported (the plugin's
warm-up now does it itself when the preload has finished). ``--where`` is for diagnosis: a thread
samples the GUI thread's Python stack every 5 ms and vispy's ``paintGL`` is timed; each gap of 100 ms
or more is then printed with the widget steps, canvas paints and collector pauses inside it and the
most frequent stacks.

Without ``--model`` the bundled default model is used when there is one, else a small random
SegFormer3D (4.5 M parameters, the paper's configuration) at 1 mm with 96³ windows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RANDOM_SPEC = {
    "name": "bench-segformer3d-random", "architecture": "segformer3d", "arch_kwargs": {},
    "in_channels": 1, "channel_names": ["T1"], "spacing": [1.0, 1.0, 1.0], "roi_size": [96, 96, 96],
    "labels": [{"index": 0, "name": "background", "color": [0, 0, 0, 0]},
               {"index": 1, "name": "brain", "color": [1.0, 0.4, 0.2, 1.0]}],
}


#: (start, end) of the widgets' own GUI-thread work (building the result layers), filled by ``timed``
GUI_WORK: list[tuple[float, float]] = []
#: (start, end) of every cyclic garbage collection, filled by ``gc.callbacks``
GC_PAUSES: list[tuple[float, float]] = []
_gc_start: list[float] = []


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_start[:] = [time.perf_counter()]
    elif _gc_start:
        GC_PAUSES.append((_gc_start[0], time.perf_counter()))


class StackSampler:
    """``--where``: a thread that records the GUI thread's Python stack every ``interval_s`` seconds, so the
    functions running during a long gap can be named. While the GUI thread runs Python code it must let
    other threads in every ``sys.getswitchinterval()`` (5 ms); while it is inside one long C call that
    holds the GIL the sampler waits, and its next sample shows where that call was made from."""

    def __init__(self, interval_s: float = 0.005):
        import threading

        self.interval_s = interval_s
        self.main_id = threading.main_thread().ident
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            frame = sys._current_frames().get(self.main_id)
            stack = []
            while frame is not None:
                code = frame.f_code
                stack.append(f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}")
                frame = frame.f_back
            self.samples.append((time.perf_counter(), tuple(stack)))
            time.sleep(self.interval_s)

    def report(self, t0: float, t1: float, depth: int = 14) -> list[str]:
        """The most frequent GUI-thread stacks sampled between t0 and t1 (innermost first, trimmed)."""
        from collections import Counter

        inside = [st for t, st in self.samples if t0 <= t <= t1]
        counts = Counter(" < ".join(st[:depth]) for st in inside)
        return [f"{n}x {st}" for st, n in counts.most_common(3)]


#: what each GUI_WORK interval ran (the step's function for a StepQueue step, else the wrapped method)
GUI_WORK_NAMES: list[str] = []
#: (start, end) of every canvas paint (``--where``: vispy's Qt backend ``paintGL``, patched on its class)
PAINTS: list[tuple[float, float]] = []


def timed(obj, name: str, into: list | None = None) -> None:
    """Wrap ``obj.name`` so each call's interval lands in GUI_WORK (or ``into``)."""
    orig = getattr(obj, name)
    into = GUI_WORK if into is None else into

    def wrapper(*a, **k):
        label = name
        steps = getattr(obj, "_steps", None)  # a StepQueue: name the step about to run
        if steps:
            label = getattr(getattr(steps[0], "func", steps[0]), "__name__", name)
        t = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            into.append((t, time.perf_counter()))
            if into is GUI_WORK:
                GUI_WORK_NAMES.append(label)

    setattr(obj, name, wrapper)


class Heartbeat:
    def __init__(self, interval_ms: int = 10):
        from qtpy.QtCore import QTimer

        self.times: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(lambda: self.times.append(time.perf_counter()))

    def start(self):
        self.times = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        self.times.append(time.perf_counter())
        t = np.asarray(self.times)
        gaps = np.diff(t) * 1000.0
        self.long_gaps = [(float(t[i]), float(t[i + 1])) for i in np.flatnonzero(gaps >= 100.0)]
        # gaps that overlap the widgets' GUI-thread work (adding the result layers) vs the rest
        on_gui = np.array([any(s < t[i + 1] and e > t[i] for s, e in GUI_WORK) for i in range(len(gaps))], bool)
        worker_gaps = gaps[~on_gui] if (~on_gui).any() else np.zeros(1)
        inside = [(s, e) for s, e in GUI_WORK if s < t[-1] and e > t[0]]
        gui_s = sum(min(e, t[-1]) - max(s, t[0]) for s, e in inside)
        gc_ms = max([(e - s) * 1000.0 for s, e in GC_PAUSES if s >= t[0] and e <= t[-1]], default=0.0)
        return {"seconds": round(float(t[-1] - t[0]), 2), "beats": int(len(t) - 2),
                "max_gap_ms": round(float(gaps.max()), 1), "p95_gap_ms": round(float(np.percentile(gaps, 95)), 1),
                "gaps_over_100ms": int(np.count_nonzero(gaps >= 100.0)),
                "max_gap_worker_only_ms": round(float(worker_gaps.max()), 1),
                "gui_thread_work_s": round(float(gui_s), 2),
                "longest_gui_step_ms": round(max([(e - s) * 1000.0 for s, e in inside], default=0.0), 1),
                "longest_gc_pause_ms": round(float(gc_ms), 1)}


def _inside_ms(spans, g0: float, g1: float, names=None) -> list[tuple[str | None, int]]:
    """(name, ms inside [g0, g1]) of each (start, end) span overlapping that gap; ``names`` align with spans."""
    names = names if names is not None else [None] * len(spans)
    return [(n, round((min(e, g1) - max(s, g0)) * 1000)) for (s, e), n in zip(spans, names) if s < g1 and e > g0]


def run_phase(app, beat: Heartbeat, start, done, timeout_s: float = 1800) -> dict:
    beat.start()
    start()
    t0 = time.perf_counter()
    while not done():
        app.processEvents()
        time.sleep(0.001)
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError("phase did not finish")
    row = beat.stop()
    row["long_gaps"] = beat.long_gaps
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="registered model name or spec .json (default: bundled default, else random)")
    ap.add_argument("--json", help="write the results here as JSON")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--where", action="store_true",
                    help="diagnosis: sample the GUI thread's stack; print what ran in each gap of 100 ms or more")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="experiment: gc.freeze() after the engine preload (not what the plugin does)")
    args = ap.parse_args(argv)
    import gc

    gc.callbacks.append(_on_gc)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_gui_"))
    os.environ.setdefault("NAPARI_VIT3D_RECOVERY_DIR", str(tmp / "recovery"))
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_vit3d.errors import ModelError
    from napari_vit3d.gui.explain_widget import ExplainWidget
    from napari_vit3d.gui.segment_widget import SegmentWidget
    from napari_vit3d.models import registry

    model = args.model
    if model is None:
        try:
            model = registry.default_model_name()
        except ModelError:  # no bundled default model: bench a random-weight SegFormer3D instead
            os.environ["NAPARI_VIT3D_CONFIG_DIR"] = str(tmp / "config")
            spec = tmp / "bench-segformer3d-random.json"
            spec.write_text(json.dumps(RANDOM_SPEC))
            model = str(spec)

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.open_sample("napari-vit3d", "colin27_t1")
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment")
    if Path(model).suffix == ".json":
        seg.add_model(model)
    else:
        seg.model_combo.setCurrentText(model)
    model_name = seg.model_combo.currentText()
    beat = Heartbeat(10)
    sampler = StackSampler() if args.where else None
    if sampler:
        from vispy.app.backends import _qt as vispy_qt

        timed(vispy_qt.CanvasBackendDesktop, "paintGL", PAINTS)
        sampler.start()
    rows = []
    from napari_vit3d.gui.warmup import warm_up_finished

    rows.append({"phase": "docking: engine preload and warm-up in the background, until finished",
                 **run_phase(app, beat, lambda: None, warm_up_finished, timeout_s=120)})
    t_idle = time.perf_counter()
    rows.append({"phase": "idle viewer (2 s)",
                 **run_phase(app, beat, lambda: None, lambda: time.perf_counter() - t_idle > 2.0)})
    if args.gc_freeze:
        from napari_vit3d.gui.segment_widget import start_engine_preload

        start_engine_preload().join()
        gc.freeze()
    timed(seg._steps, "run_one")  # each step inserts one result layer (gui.jobs.StepQueue)
    from napari_vit3d.inference import forward_cache

    forward_cache().clear()
    rows.append({"phase": f"Segment ({model_name}) in the worker, incl. showing the layers",
                 **run_phase(app, beat, seg.run, lambda: not seg.running)})
    labels = [lay for lay in viewer.layers if lay.name.endswith("· labels")]
    if not labels:
        print("segmentation failed; see the messages above", file=sys.stderr)
        return 1
    ex = ExplainWidget(viewer)
    viewer.window.add_dock_widget(ex, name="Explain")
    timed(ex, "_put_map")
    timed(ex, "set_query")
    ex.model_combo.setCurrentText(model_name)
    t_dock = time.perf_counter()  # the new dock's first layout and paint happen on the next turns, not in a click
    rows.append({"phase": "Explain widget docked, idle (1 s)",
                 **run_phase(app, beat, lambda: None, lambda: time.perf_counter() - t_dock > 1.0)})
    scan = viewer.layers["colin27_t1"]
    world = scan.data_to_world(tuple(s // 2 for s in scan.data.shape))
    rows.append({"phase": "Explain: point attention at a click (first: forward pass) in the worker",
                 **run_phase(app, beat, lambda: ex.click_world(world), lambda: not ex.busy)})
    world2 = scan.data_to_world(tuple(s // 2 + 5 for s in scan.data.shape))
    rows.append({"phase": "Explain: second click (cached forward pass)",
                 **run_phase(app, beat, lambda: ex.click_world(world2), lambda: not ex.busy)})
    # napari's own floor: insert a ready-made labels layer of the scan's shape (no plugin code), as the
    # Segment widget's first step does, and let it draw
    from napari.layers import Labels

    floor = Labels(np.zeros(scan.data.shape, np.uint8), name="floor", scale=scan.scale, translate=scan.translate)
    floor.data[tuple(slice(s // 4, 3 * s // 4) for s in scan.data.shape)] = 1
    t_floor = []

    def add_floor():
        t = time.perf_counter()
        viewer.add_layer(floor)
        t_floor.append(time.perf_counter() - t)

    rows.append({"phase": "napari alone: insert a prepared labels layer of the scan's shape, then 0.5 s",
                 **run_phase(app, beat, add_floor, lambda: t_floor and time.perf_counter() - beat.times[0] > 0.5)})
    viewer.close()

    meta = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
            "qt_api": __import__("qtpy").API_NAME, "model": model_name, "gc_freeze": args.gc_freeze}
    print(f"\n{meta}\n")
    print("| phase | seconds | beats | max gap (ms) | p95 gap (ms) | gaps ≥ 100 ms | max gap outside the widgets' "
          "GUI-thread work (ms) | widgets' GUI-thread work (s) | longest GUI step (ms) | longest GC pause (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['seconds']} | {r['beats']} | {r['max_gap_ms']} | {r['p95_gap_ms']} | "
              f"{r['gaps_over_100ms']} | {r['max_gap_worker_only_ms']} | {r['gui_thread_work_s']} | "
              f"{r['longest_gui_step_ms']} | {r['longest_gc_pause_ms']} |")
    if sampler:
        sampler.stop()
        for r in rows:
            for g0, g1 in r["long_gaps"]:
                gcs = [round((e - s) * 1000) for s, e in GC_PAUSES if s < g1 and e > g0]
                steps = [f"{n} {ms}" for n, ms in _inside_ms(GUI_WORK, g0, g1, GUI_WORK_NAMES)]
                paints = [ms for _, ms in _inside_ms(PAINTS, g0, g1)]
                print(f"\n{r['phase']}: gap of {(g1 - g0) * 1000:.0f} ms; inside it, ms: widget steps "
                      f"{steps}, canvas paints {paints}, GC pauses {[g for g in gcs if g]}")
                for line in sampler.report(g0, g1):
                    print("   ", line)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
