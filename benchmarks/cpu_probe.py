"""Quick probe of the cpu backend: loss-only (no_grad) and forward+backward medians at L = 8, D = 1536, 2 x 4096 rows
with the last 2048 selected. Not a benchmark (no baselines, no memory): the figures in docs/perf_notes.md come from it.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 python benchmarks/cpu_probe.py [float32|bfloat16]
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_kernels as bk  # noqa: E402

from oprd_kernels.cpu_ops.alignment import alignment_loss  # noqa: E402
from oprd_kernels.cpu_ops.bridge import bridge_loss  # noqa: E402

case = bk.Case("x", 8, 1536, 2, 4096, 2048, dtype=sys.argv[1] if len(sys.argv) > 1 else "float32")
inp = bk.make_inputs(case, torch.device("cpu"))


def median_ms(f, n=7):
    f()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        f()
        samples.append(time.perf_counter() - start)
    return round(sorted(samples)[n // 2] * 1e3, 1)



def full_ms(loss_fn):
    return median_ms(lambda: torch.autograd.grad(loss_fn(), inp.student))


for lt in ["mse", "nmse"]:
    def alignment(loss_type=lt):
        return alignment_loss(inp.student, inp.teacher, rows=inp.rows, loss_type=loss_type)
    with torch.no_grad():
        loss_only = median_ms(alignment)
    print(lt, "loss-only", loss_only, "full", full_ms(alignment))


def bridge():
    return bridge_loss(inp.student, inp.teacher_z, inp.proj, rows=inp.rows)


with torch.no_grad():
    loss_only = median_ms(bridge)
print("bridge loss-only", loss_only, "full", full_ms(bridge))
