"""Kernel benchmark: the fused losses against the eager reference and torch.compile(reference), side by side in one
process, forward / backward / forward+backward, with delta-peak memory and bandwidth against a measured copy. The
first case also times the fused loss inside torch.compile(fullgraph=True) (`fused-compiled`: the custom ops).

    python benchmarks/bench_kernels.py --device cuda --out results/kernels.jsonl     # the paper's shapes (GPU)
    python benchmarks/bench_kernels.py --device cpu --out results/kernels_cpu.jsonl    # C++ cpu backend, no triton
    TRITON_INTERPRET=1 python benchmarks/bench_kernels.py --device cpu --smoke         # tiny, checks the plumbing

Bytes of the floor for forward+backward: the selected student rows and the teacher cache read once, the dense
student gradient [L, B, S, D] written once (rows that no entry selects are zeros, but they are written).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import oprd_kernels  # noqa: E402
from oprd_kernels import reference  # noqa: E402
from oprd_kernels.cpu_ops import alignment as cpu_alignment  # noqa: E402

CPU_GRAD_IN_BACKWARD = "cpu-bwd"  # label: the cpu backend computing its gradient in backward instead of forward
FUSED_COMPILED = "fused-compiled"  # label: torch.compile(fullgraph=True) of the public loss (the custom ops)


@dataclass(frozen=True)
class Case:
    name: str
    layers: int
    dim: int
    batch: int
    seq: int
    selected: int  # last-k rows per sample
    rank: int = 8  # Bridge projection rank
    dtype: str = "bfloat16"


GPU_CASES = [
    Case("paper-last2000", 28, 1536, 2, 16384, 2000),
    Case("small-12x256", 12, 256, 2, 16384, 2000),  # D <= 512: several rows per alignment program (issue 17)
    Case("paper-16k-rows", 28, 1536, 2, 16384, 8192),
    Case("wide-36x4096", 36, 4096, 2, 16384, 2000),
]
CPU_CASES = [  # issue 4's shapes: N_sel = 2 x 2048 = 4096 of 2 x 4096 rows, D = 1536
    Case("cpu-L8-fp32", 8, 1536, 2, 4096, 2048, dtype="float32"),
    Case("cpu-L8-bf16", 8, 1536, 2, 4096, 2048),
    Case("cpu-L28-fp32", 28, 1536, 2, 4096, 2048, dtype="float32"),
    Case("cpu-L28-bf16", 28, 1536, 2, 4096, 2048),
]
SMOKE_CASES = [Case("smoke", 2, 48, 2, 16, 5, rank=4)]


@dataclass
class Inputs:
    student: list[torch.Tensor]
    teacher: torch.Tensor
    teacher_z: torch.Tensor
    proj: torch.Tensor
    rows: torch.Tensor

    def gradient_bytes(self) -> int:
        """The dense student gradients [L, B, S, D] that every backend must return."""
        return sum(t.numel() * t.element_size() for t in self.student)

    def floor_bytes(self, op: str) -> int:
        s = self.student[0]
        n = self.rows.numel() * len(self.student)
        cache = self.teacher if op == "alignment_loss" else self.teacher_z
        return n * s.shape[-1] * s.element_size() + cache.numel() * cache.element_size() + self.gradient_bytes()


def make_inputs(case: Case, device: torch.device) -> Inputs:
    dtype = getattr(torch, case.dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    student = [torch.randn(case.batch, case.seq, case.dim, device=device, dtype=dtype, generator=gen)
               .requires_grad_() for _ in range(case.layers)]
    rows = torch.cat([torch.arange(b * case.seq + case.seq - case.selected, (b + 1) * case.seq, device=device)
                      for b in range(case.batch)])
    with torch.no_grad():  # a teacher close to the student, as late in training (cosines near 0.95)
        teacher = torch.stack([s.reshape(-1, case.dim)[rows] for s in student])
        teacher = (teacher + 0.3 * torch.randn(teacher.shape, device=device, dtype=dtype, generator=gen)).to(dtype)
    proj = (torch.randn(case.layers, case.rank, case.dim, device=device, generator=gen) / case.dim ** 0.5).to(dtype)
    teacher_z = torch.randn(case.layers, rows.numel(), case.rank, device=device, generator=gen)
    return Inputs(student, teacher, teacher_z, proj, rows)


def loss_fn(op: str, backend: str, loss_type: str) -> Callable[[Inputs], torch.Tensor]:
    if op == "alignment_loss":
        def run(inp, impl):
            return impl(inp.student, inp.teacher, rows=inp.rows, loss_type=loss_type)
        fast, ref = oprd_kernels.alignment_loss, reference.alignment_loss
    else:
        def run(inp, impl):
            return impl(inp.student, inp.teacher_z, inp.proj, rows=inp.rows, loss_type=loss_type)
        fast, ref = oprd_kernels.bridge_loss, reference.bridge_loss
    if backend == "reference":
        return lambda inp: run(inp, ref)
    if backend == "compiled":
        compiled = torch.compile(ref, dynamic=False)
        return lambda inp: run(inp, compiled)
    if backend == FUSED_COMPILED:  # the device's fused backend inside a compiled graph: what the custom ops cost
        compiled = torch.compile(lambda inp: run(inp, fast), dynamic=False, fullgraph=True)
        return compiled
    if backend == CPU_GRAD_IN_BACKWARD:  # the cpu backend with its other gradient schedule, for the comparison
        def in_backward(*a, **k):
            cpu_alignment.GRADIENT_IN_FORWARD = False
            try:
                return fast(*a, backend="cpu", **k)
            finally:
                cpu_alignment.GRADIENT_IN_FORWARD = True
        return lambda inp: run(inp, in_backward)
    return lambda inp: run(inp, lambda *a, **k: fast(*a, backend=backend, **k))


def measure(case: Case, op: str, loss_type: str, backend: str, inp: Inputs, device: torch.device,
            reps: int) -> list[dict]:
    fn = loss_fn(op, backend, loss_type)
    grads = lambda loss: torch.autograd.grad(loss, inp.student, retain_graph=True)  # noqa: E731
    for _ in range(2):  # warm-up: compilation, autotuning, allocator
        grads(fn(inp))
    if device.type == "cuda":  # the triton backward recomputes: timing it again on one retained graph is fair
        held = fn(inp)
        backward = harness.time_ms(lambda: grads(held), device, reps=reps)
        held = None  # free the retained graph before measuring memory
    else:  # the cpu backend hands over a gradient made in the forward: time each backward on a fresh forward
        backward = harness.time_ms(lambda loss: torch.autograd.grad(loss, inp.student), device, reps=reps,
                                   setup=lambda: fn(inp))
    timings = {
        "forward": harness.time_ms(lambda: fn(inp), device, reps=reps),
        "backward": backward,
        "full": harness.time_ms(lambda: grads(fn(inp)), device, reps=reps),
    }
    peak = harness.delta_peak_bytes(lambda: grads(fn(inp)), device)
    base = {"suite": "kernels", "op": op, "loss_type": loss_type, "backend": backend, **asdict(case),
            "dtype": str(inp.student[0].dtype).replace("torch.", ""), "rows_selected": inp.rows.numel(),
            "floor_bytes": inp.floor_bytes(op), "gradient_bytes": inp.gradient_bytes()}
    rows = [{**base, "phase": phase, "metric": "time", "unit": "ms", **harness.percentiles_dict(t)}
            for phase, t in timings.items()]
    rows.append({**base, "phase": "full", "metric": "delta_peak", "unit": "bytes", "p20": peak, "p50": peak,
                 "p80": peak})
    return rows


def backends_for(device: torch.device, smoke: bool, compile_ok: bool) -> list[str]:
    names = ["reference"]
    if compile_ok:
        names += ["compiled", FUSED_COMPILED]
    if device.type == "cuda" or (smoke and os.environ.get("TRITON_INTERPRET") == "1"):
        names.insert(0, "triton")
    if device.type == "cpu":
        names[:0] = ["cpu", CPU_GRAD_IN_BACKWARD]
    for name in names:  # never let a fallback pass for a fast path
        if name in ("triton", "cpu", CPU_GRAD_IN_BACKWARD):
            status = oprd_kernels.backend_status(device)["cpu" if name == CPU_GRAD_IN_BACKWARD else name]
            missing = {op: why for op, why in status.items() if why != "available"}
            if missing:
                raise SystemExit(f"backend {name!r} cannot run here: {missing}")
    return names


def summarise(rows: list[dict], copy_bw: float) -> str:
    """One line per (case, op, loss type, backend): times, delta-peak, ratios against the eager reference.

    `extra MB` is the delta-peak beyond the dense gradients every backend must return (the op's own transient
    memory); `extra x` compares it with the reference's."""
    key = lambda r: (r["name"], r["op"], r["loss_type"])  # noqa: E731
    table = {}
    for r in rows:
        cell = table.setdefault(key(r), {}).setdefault(r["backend"], {})
        cell[(r["phase"], r["metric"])] = r["p50"]
        cell["floor"], cell["grads"] = r["floor_bytes"], r["gradient_bytes"]
    lines = [f"copy bandwidth (read+write): {copy_bw / 1e9:.1f} GB/s",
             f"{'case':<16}{'op':<15}{'loss':<7}{'backend':<10}{'fwd ms':>9}{'bwd ms':>9}{'full ms':>9}"
             f"{'speedup':>8}{'peak MB':>9}{'extra MB':>9}{'extra x':>8}{'GB/s':>8}{'%copy':>7}"]
    for (case, op, loss_type), by_backend in table.items():
        ref = by_backend.get("reference")
        for backend, c in by_backend.items():
            full, peak = c[("full", "time")], c[("full", "delta_peak")]
            extra = max(peak - c["grads"], 0)
            speed = ref[("full", "time")] / full if ref else float("nan")
            ref_extra = max(ref[("full", "delta_peak")] - ref["grads"], 0) if ref else float("nan")
            mem = ref_extra / extra if extra else float("inf")
            bw = c["floor"] / (full * 1e-3)
            lines.append(f"{case:<16}{op:<15}{loss_type:<7}{backend:<10}{c[('forward', 'time')]:>9.3f}"
                         f"{c[('backward', 'time')]:>9.3f}{full:>9.3f}{speed:>8.2f}{peak / 2**20:>9.1f}"
                         f"{extra / 2**20:>9.1f}{mem:>8.1f}{bw / 1e9:>8.1f}{100 * bw / copy_bw:>7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: checks that everything runs")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="append result rows (JSON lines) here")
    parser.add_argument("--cases", default=None, help="comma-separated case names to run (default: all)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds: start no new case after this (the GPU check has a fixed lease)")
    args = parser.parse_args(argv)
    torch._logging.set_logs(dynamo=logging.ERROR)  # the reference's validation reads values: expected graph breaks
    device = torch.device(args.device)
    cases = SMOKE_CASES if args.smoke else GPU_CASES if device.type == "cuda" else CPU_CASES
    if args.cases:
        cases = [c for c in cases if c.name in args.cases.split(",")]
    reps = args.reps or (2 if args.smoke else 10)
    env = harness.environment(device)
    copy_bw = harness.copy_bandwidth(device, 1 << 20 if args.smoke else 1 << 30)
    rows: list[dict] = []
    started = time.monotonic()
    for i, case in enumerate(cases):
        if args.time_budget is not None and time.monotonic() - started > args.time_budget:
            print(f"time budget spent: skipping case {case.name}", flush=True)
            continue
        inp = make_inputs(case, device)
        # torch.compile of the 28-layer reference takes minutes: only for the first case, and not for the smoke run.
        compile_ok = not args.no_compile and not args.smoke and i == 0
        for op, loss_types in (("alignment_loss", ("mse", "nmse")), ("bridge_loss", ("nmse",))):
            for loss_type in loss_types:
                for backend in backends_for(device, args.smoke, compile_ok and loss_type == loss_types[0]):
                    new = [{**r, **env, "copy_bandwidth": copy_bw}
                           for r in measure(case, op, loss_type, backend, inp, device, reps)]
                    if args.out:  # written as we go: a run cut short keeps what it measured
                        harness.append_rows(args.out, new)
                    full = next(r["p50"] for r in new if r["phase"] == "full" and r["metric"] == "time")
                    print(f"{case.name} {op} {loss_type} {backend}: full {full:.3f} ms", flush=True)
                    rows += new
        del inp
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(summarise(rows, copy_bw))
    return rows


if __name__ == "__main__":
    main()
