"""delta_peak_bytes on CPU: the profiler's unconditional kineto lines ("USDT: ... profiler_start") stay out of the
user's terminal, while the measured work's own warnings still reach it, and the measured peak is still right."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import warnings, torch
from oprd.train.memory import delta_peak_bytes
def work():
    warnings.warn("the work's own warning")
    return torch.ones(1000)
print("peak", delta_peak_bytes(work, torch.device("cpu"))[1])
"""


def test_the_profiler_lines_are_silenced_and_the_work_is_not():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert "USDT" not in out.stderr and "USDT" not in out.stdout, out.stderr
    assert "the work's own warning" in out.stderr
    assert "peak 4000" in out.stdout  # 1000 fp32
