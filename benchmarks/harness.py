"""Measurement helpers shared by the benchmark runners: timing percentiles, delta-peak memory, copy bandwidth, the
environment of a result row, and writing rows.

Time: on CUDA `triton.testing.do_bench` (CUDA events, warm-up, many repeats) asked for p20/p50/p80; on CPU the wall
time of repeated calls after warm-up calls.
Memory: delta-peak as oprd.train.memory measures it (CUDA allocator statistics; on CPU the profiler's allocator events).
Run separately from the timing, since the profiler slows the code down.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from oprd.train.memory import delta_peak_bytes as measure_delta_peak


@dataclass(frozen=True)
class Percentiles:
    p20: float
    p50: float
    p80: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable, device: torch.device, *, warmup: int = 3, reps: int = 10,
            setup: Callable[[], object] | None = None) -> Percentiles:
    """p20/p50/p80 of fn's run time in milliseconds. With `setup` (CPU only), each timed call is fn(setup()) and
    setup's own time is left out: how a backward pass is timed on a fresh forward's graph."""
    if device.type == "cuda":
        import triton.testing

        if setup is not None:
            raise ValueError("time_ms: `setup` is supported on CPU only (do_bench times whole calls)")
        p20, p50, p80 = triton.testing.do_bench(fn, warmup=25, rep=max(reps * 10, 100), quantiles=[0.2, 0.5, 0.8])
        return Percentiles(p20, p50, p80)
    call = (lambda: fn(setup())) if setup is not None else fn
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(reps):
        arg = setup() if setup is not None else None
        start = time.perf_counter()
        fn(arg) if setup is not None else fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return percentiles(samples)


def percentiles(samples: list[float]) -> Percentiles:
    """p20/p50/p80 of the samples."""
    if len(samples) == 1:
        return Percentiles(samples[0], samples[0], samples[0])
    q = statistics.quantiles(samples, n=10, method="inclusive")
    return Percentiles(q[1], statistics.median(samples), q[7])


def interleaved_ms(fns: dict, reps: int) -> dict:
    """{name: p20/p50/p80 ms} of CPU callables timed round-robin (one call of each per round, `reps` rounds, no
    warm-up): a machine whose speed drifts over minutes (a shared VM) then slows every method alike, where timing
    them one after another would bias their ratios."""
    samples: dict = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: percentiles(values) for name, values in samples.items()}


def delta_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated while fn runs, minus the bytes allocated when it starts (see oprd.train.memory)."""
    return measure_delta_peak(fn, device)[1]


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Bytes per second of a large device-to-device copy, counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup=2, reps=5).p50
    return 2 * nbytes / (ms * 1e-3)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux): the machines behind one name differ from session to session,
    and a CPU result means little without it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """Where and with what a result was measured."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"device": device.type, "device_name": name, "torch": torch.__version__, "triton": triton_version,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append result rows to a JSON-lines file (created with its folder when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def percentiles_dict(p: Percentiles) -> dict:
    return asdict(p)


def matmul_rate(dtype: torch.dtype, m: int, k: int, n: int, device: torch.device) -> float:
    """FLOP/s of the product [m, k] @ [k, n] in `dtype` (the fast end of a few runs): the compute floor's rate, probed
    on the shape the measured work spends its FLOPs on."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(n, k, device=device).to(dtype)
    ms = time_ms(lambda: a @ b.T, device, warmup=1, reps=5).p20  # the fast end: a limit, not a typical run
    return 2.0 * m * n * k / (ms * 1e-3)
