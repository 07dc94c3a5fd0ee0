"""Model cost card: parameters, FLOPs per window, peak memory and measured latency.

``model_cost(network, roi_size, in_channels, device)`` runs one window of standard-normal noise through the
network (no gradients) and reports:

* ``params`` / ``trainable_params``: element counts;
* ``flops``: floating-point operations for one window, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (a multiply-add counts as 2; only operators torch knows a formula for: convolutions, matmuls,
  attention; element-wise ops are not counted);
* ``peak_memory_bytes`` and ``memory_method``: the most bytes held by tensors allocated during the
  forward (the input and weights excluded): on CUDA ``torch.cuda.max_memory_allocated``; on CPU the
  running sum of the profiler's allocation/free events (``torch.profiler`` with ``profile_memory``);
  the growth of the process's peak resident set size (a lower bound) only if the profiler fails;
* ``latency_s``: median wall time of ``repeats`` forward passes after the counting pass and ``warmup``
  further passes, with device synchronisation; ``latency_all_s``: every measured run.

FLOPs and memory come from one pass (the flop counter's overhead is negligible next to 3D convolutions),
which also serves as warm-up.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["model_cost", "count_params", "format_cost"]


def count_params(network: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in network.parameters())
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    return total, trainable


def _rss_peak_bytes() -> int | None:
    try:
        import resource
        import sys
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C++ profiler's start/stop lines (written straight to file descriptor 2)."""
    try:
        fd = os.dup(2)
    except OSError:  # pragma: no cover
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def _cpu_peak(run, counter) -> tuple[int | None, str]:
    """Peak bytes held by torch's CPU allocator during ``run()``, relative to its start.

    Uses the profiler's memory events (every allocation and free, in order); falls back to the growth of
    the process's peak resident set size (a lower bound) if the profiler is unavailable.
    """
    try:
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _quiet_stderr():
            prof.__enter__()
        try:
            with counter:
                run()
        finally:
            with _quiet_stderr():
                prof.__exit__(None, None, None)
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
        current = peak = 0
        for _, nbytes in events:
            current += nbytes
            peak = max(peak, current)
        return peak, "torch_profiler_cpu_allocations"
    except Exception:  # noqa: BLE001  # pragma: no cover - profiler missing or changed: coarse fallback
        before = _rss_peak_bytes()
        with counter:
            run()
        after = _rss_peak_bytes()
        if before is None or after is None:
            return None, "unavailable"
        return after - before, "cpu_peak_rss_growth (lower bound)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":  # pragma: no cover
        torch.mps.synchronize()


def model_cost(network: nn.Module, roi_size: Sequence[int], in_channels: int, device="cpu", *,
               repeats: int = 3, warmup: int = 0, batch_size: int = 1, seed: int = 0) -> dict:
    """Measure one window's cost for ``network`` (see module docstring). The network is not modified."""
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(device)
    was_training = network.training
    network = network.to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, in_channels, *map(int, roi_size)), generator=gen).to(device)
    params, trainable = count_params(network)
    try:
        with torch.inference_mode():
            # one pass counts FLOPs and peak memory (and warms up); then ``warmup`` + ``repeats`` timed passes
            counter = FlopCounterMode(display=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                with counter:
                    network(x)
                torch.cuda.synchronize(device)
                peak, method = torch.cuda.max_memory_allocated(device) - base, "cuda_max_memory_allocated"
            else:
                peak, method = _cpu_peak(lambda: network(x), counter)
            flops = int(counter.get_total_flops())
            for _ in range(max(0, warmup)):
                network(x)
            _sync(device)
            times = []
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                network(x)
                _sync(device)
                times.append(time.perf_counter() - t0)
    finally:
        network.train(was_training)
    return {
        "params": params,
        "trainable_params": trainable,
        "roi_size": tuple(int(s) for s in roi_size),
        "in_channels": int(in_channels),
        "batch_size": int(batch_size),
        "flops": flops,
        "peak_memory_bytes": peak,
        "memory_method": method,
        "latency_s": statistics.median(times),
        "latency_all_s": times,
        "device": str(device),
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
    }


def _si(v: float, unit: str) -> str:
    for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f} {prefix}{unit}"
    return f"{v:.0f} {unit}"


def format_cost(cost: dict) -> str:
    mem = cost["peak_memory_bytes"]
    mem_s = "n/a" if mem is None else f"{mem / 2 ** 20:.1f} MiB"
    return "\n".join([
        f"parameters:   {cost['params']:,} ({cost['trainable_params']:,} trainable)",
        f"window:       {cost['batch_size']} × {cost['in_channels']} × {' × '.join(map(str, cost['roi_size']))}",
        f"FLOPs/window: {_si(cost['flops'], 'FLOP')}",
        f"peak memory:  {mem_s} [{cost['memory_method']}]",
        f"latency:      {cost['latency_s'] * 1000:.1f} ms median of {len(cost['latency_all_s'])} "
        f"on {cost['device']} ({cost['dtype']}, {cost['torch_threads']} threads)",
    ])
