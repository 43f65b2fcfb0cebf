"""Delta-peak memory of a piece of work, as the paper measures it: peak allocated during it minus allocated at its
start. On CUDA from the caching allocator's statistics; on CPU from the allocator events the PyTorch profiler
records (profile_memory=True), whose running sum over the region is the bytes held by tensors, temporaries inside
ops included."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator, TypeVar

import torch

T = TypeVar("T")


def delta_peak_bytes(fn: Callable[[], T], device: torch.device) -> tuple[T, int]:
    """(fn's result, its delta-peak in bytes)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - start
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # kineto prints "USDT: ... profiler_start" / "profiler_stop" there, unconditionally
        prof.start()
    try:
        result = fn()  # its own warnings and errors still reach stderr
    finally:
        with _quiet_stderr():
            prof.stop()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda event: event[0])  # stable: same-timestamp events keep their recorded order
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return result, peak


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null for the block (C++ code writes there directly, past sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
