"""GPU tuning of the fused OPD's Triton kernels, every comparison side by side in one process on the same inputs:

    slab      the gradient slab's two products: opd_matmul_acc_kernel (Triton, the default) against cuBLAS
              (torch.addmm with an fp32 output into C; the weight gradient's hidden rows gathered first)
    backprop  the whole Triton backprop_logits (slab kernel + both products per slab, top-16 and full-KL forms) with
              $OPRD_TRITON_SLAB_GEMM=triton against =torch
    blocks    each kernel at its default blocks (triton_ops/opd.py BLOCKS) against the CANDIDATES below

Every row carries its values' relative difference from the baseline's (a candidate that computes something else is
a bug, not a speed-up) and TFLOP/s; ratios are baseline time / candidate time (> 1: the candidate is faster).
compile_report.py --candidates compiles every candidate for sm_90 (tests/test_triton_opd.py: no spills, fits).

    python benchmarks/bench_opd_tuning.py --device cuda --out results/opd_tuning_cuda.jsonl   # paper shapes
    TRITON_INTERPRET=1 python benchmarks/bench_opd_tuning.py --device cpu --smoke            # tiny: the plumbing

Why these candidates (counts in docs/perf_notes.md, "GPU-ready tuning"): a 128 x 128 x 64 bf16 step does 64 FLOP per
byte of operands it stages, so 132 SMs at the 989 TFLOP/s peak would pull ~15 TB/s through L2, more than it gives;
128 x 256 tiles do 85 FLOP/B (the CUTLASS Hopper default shape), a fourth stage hides more latency. Register and
shared-memory limits decide which of them compile clean; only the GPU can say which is faster.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from oprd_kernels.opd import _gradient  # noqa: E402
from oprd_kernels.opd._tiles import Tiling  # noqa: E402
from oprd_kernels.triton_ops import opd as triton_opd  # noqa: E402

F32, BF16 = torch.float32, torch.bfloat16
# Alternatives to triton_ops/opd.py's BLOCKS["cuda"] entries (bf16 heads at the paper's d), by kernel.
CANDIDATES = {
    "cuda": {
        "stats": [dict(BLOCK_N=128, BLOCK_V=256, D_BYTES=128, num_warps=8, num_stages=3),
                  dict(BLOCK_N=128, BLOCK_V=128, D_BYTES=128, num_warps=8, num_stages=4)],
        "kl": [dict(BLOCK_N=128, BLOCK_V=128, D_BYTES=128, num_warps=8, num_stages=3),
               dict(BLOCK_N=64, BLOCK_V=128, D_BYTES=128, num_warps=8, num_stages=4)],
        "grad": [dict(BLOCK_N=128, BLOCK_V=256, D_BYTES=128, num_warps=8, num_stages=3)],
        "grad_kl": [dict(BLOCK_N=128, BLOCK_V=128, D_BYTES=128, num_warps=8, num_stages=3)],
        "mm": [dict(BLOCK_M=128, BLOCK_N=256, K_BYTES=128, GROUP_M=8, num_warps=8, num_stages=3),
               dict(BLOCK_M=128, BLOCK_N=128, K_BYTES=128, GROUP_M=8, num_warps=8, num_stages=4)],
    },
    "cpu": {  # the interpreter: other tile shapes, so the smoke run checks that the values do not depend on them
        "stats": [dict(BLOCK_N=32, BLOCK_V=16, BLOCK_D=32)],
        "kl": [dict(BLOCK_N=32, BLOCK_V=16, BLOCK_D=32)],
        "grad": [dict(BLOCK_N=32, BLOCK_V=16, BLOCK_D=32)],
        "grad_kl": [dict(BLOCK_N=32, BLOCK_V=16, BLOCK_D=32)],
        "mm": [dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, GROUP_M=1)],
    },
}


@dataclass(frozen=True)
class Shape:
    rows: int  # live rows of the statistics passes and of backprop_logits
    dim: int
    vocab: int
    slab_rows: int  # the gradient slab (the Tiling backprop_logits uses)
    slab_vocab: int


PAPER = Shape(rows=4096, dim=1536, vocab=151_936, slab_rows=2048, slab_vocab=8192)
SMOKE = Shape(rows=21, dim=32, vocab=100, slab_rows=16, slab_vocab=64)  # 2 x 2 slabs, with tails


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@contextmanager
def blocks(kind: str, name: str, opts: dict):
    """triton_ops/opd.py's launch options of kernel `name` replaced by `opts` inside the block."""
    table = triton_opd.BLOCKS[kind]
    saved = table[name]
    table[name] = opts
    try:
        yield
    finally:
        table[name] = saved


@contextmanager
def slab_gemm(choice: str):
    saved = os.environ.get(triton_opd.SLAB_GEMM_ENV)
    os.environ[triton_opd.SLAB_GEMM_ENV] = choice
    try:
        yield
    finally:
        if saved is None:
            del os.environ[triton_opd.SLAB_GEMM_ENV]
        else:
            os.environ[triton_opd.SLAB_GEMM_ENV] = saved


class Inputs:
    """Student and teacher heads with logits of order 1, live rows (every other row), a top-16 and a full-KL
    logits gradient, as the fused losses hand them to backprop_logits."""

    def __init__(self, shape: Shape, device: torch.device):
        g = torch.Generator(device=device).manual_seed(0)
        n, d, v = shape.rows, shape.dim, shape.vocab

        def randn(*size, scale=1.0):
            return (torch.randn(*size, generator=g, device=device) * scale).to(BF16)

        self.hidden, self.weight = randn(2 * n, d), randn(v, d, scale=2 * d ** -0.5)
        self.t_hidden, self.t_weight = randn(2 * n, d), randn(v, d, scale=2 * d ** -0.5)
        self.rows = torch.arange(0, 2 * n, 2, device=device)
        self.tiling = Tiling(shape.slab_rows, shape.slab_vocab)
        kl = triton_opd.reverse_kl_stats(self.hidden, self.weight, self.t_hidden, self.t_weight, self.rows,
                                         self.tiling, (BF16, BF16), F32)
        w_rows = torch.full((n,), 1.0 / n, device=device)
        self.kl_grad = _gradient.LogitGradient(kl.lse_student, row_weight=w_rows, kl=_gradient.KLTerms(
            self.t_hidden, self.t_weight, kl.lse_teacher, kl.kl))
        top = triton_opd.logit_stats(self.hidden, self.weight, self.rows, self.tiling, BF16, F32, topk=16)
        coef = torch.softmax(top.topk_values - top.logsumexp[:, None], dim=1) / n
        self.topk_grad = _gradient.LogitGradient(top.logsumexp, dense=-coef.sum(1), ids=top.topk_ids, sparse=coef)

    def stats(self):
        return triton_opd.logit_stats(self.hidden, self.weight, self.rows, self.tiling, BF16, F32).logsumexp

    def kl(self):
        st = triton_opd.reverse_kl_stats(self.hidden, self.weight, self.t_hidden, self.t_weight, self.rows,
                                         self.tiling, (BF16, BF16), F32)
        return torch.stack([st.kl, st.lse_student, st.lse_teacher])

    def backprop(self, grad):
        out = triton_opd.backprop_logits(self.hidden, self.weight, self.rows, grad, self.tiling, (BF16, BF16), F32,
                                         want_hidden=True, want_weight=True)
        return torch.cat([out.hidden.float().flatten(), out.weight.float().flatten()])


def _time(fn, device, reps):
    return harness.time_ms(fn, device, warmup=0 if device.type == "cpu" else 3, reps=reps)  # CPU: the smoke run


def _row(part, name, config, ms, flops, base_ms, diff, extra=None):
    return {"part": part, "name": name, "config": config, "p20": ms.p20, "p50": ms.p50, "p80": ms.p80,
            "tflops": flops / (ms.p50 * 1e-3) / 1e12, "ratio": base_ms / ms.p50, "rel_diff": diff, **(extra or {})}


def slab_rows(inp: Inputs, shape: Shape, device, reps) -> list[dict]:
    """The two products of one full slab, Triton against cuBLAS (fresh C for the value check, then timed)."""
    rs, vs, d = shape.slab_rows, shape.slab_vocab, shape.dim
    g = torch.randn(rs, vs, device=device).to(BF16) * 1e-3
    products = {"d_hidden": (lambda: torch.zeros(rs, d, device=device), g, inp.weight[:vs], None, vs),
                "d_weight": (lambda: torch.zeros(vs, d, device=device), g.T, inp.hidden, inp.rows[:rs], rs)}
    out = []
    for name, (fresh, a, b, b_rows, k) in products.items():
        flops = 2.0 * a.shape[0] * k * d
        c = {gemm: fresh() for gemm in triton_opd.SLAB_GEMMS}
        for gemm in triton_opd.SLAB_GEMMS:
            triton_opd._matmul_acc(c[gemm], a, b, b_rows, k, BF16, gemm)
        diff = rel(c["torch"], c["triton"])
        times = {gemm: _time(lambda gemm=gemm: triton_opd._matmul_acc(c[gemm], a, b, b_rows, k, BF16, gemm), device,
                             reps) for gemm in triton_opd.SLAB_GEMMS}
        for gemm, ms in times.items():
            out.append(_row("slab", name, gemm, ms, flops, times["triton"].p50, 0.0 if gemm == "triton" else diff))
    return out


def backprop_rows(inp: Inputs, shape: Shape, device, reps) -> list[dict]:
    """The whole backprop_logits with either slab GEMM (3 LM-head products for top-16, 4 for the full KL)."""
    out = []
    for form, grad, products in (("topk16", inp.topk_grad, 3), ("full_kl", inp.kl_grad, 4)):
        flops = products * 2.0 * shape.rows * shape.dim * shape.vocab
        values, times = {}, {}
        for gemm in triton_opd.SLAB_GEMMS:
            with slab_gemm(gemm):
                values[gemm] = inp.backprop(grad)
                times[gemm] = _time(lambda: inp.backprop(grad), device, reps)
        for gemm in triton_opd.SLAB_GEMMS:
            diff = 0.0 if gemm == "triton" else rel(values[gemm], values["triton"])
            out.append(_row("backprop", form, gemm, times[gemm], flops, times["triton"].p50, diff))
    return out


def block_rows(inp: Inputs, shape: Shape, device, reps) -> list[dict]:
    """Each kernel's default blocks against its candidates, through the pass that launches it."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    lm_head = 2.0 * shape.rows * shape.dim * shape.vocab
    g = torch.randn(shape.slab_rows, shape.slab_vocab, device=device).to(BF16) * 1e-3
    c = torch.zeros(shape.slab_rows, shape.dim, device=device)

    def mm():
        c.zero_()
        triton_opd._matmul_acc(c, g, inp.weight[:shape.slab_vocab], None, shape.slab_vocab, BF16)
        return c.clone()

    runs = {"stats": (inp.stats, lm_head), "kl": (inp.kl, 2 * lm_head),
            "grad": (lambda: inp.backprop(inp.topk_grad), 3 * lm_head),
            "grad_kl": (lambda: inp.backprop(inp.kl_grad), 4 * lm_head),
            "mm": (mm, 2.0 * shape.slab_rows * shape.slab_vocab * shape.dim)}
    out = []
    for name, (fn, flops) in runs.items():
        want = fn()
        base = _time(fn, device, reps)
        out.append(_row("blocks", name, dict(triton_opd.BLOCKS[kind][name]), base, flops, base.p50, 0.0))
        for cand in CANDIDATES[kind][name]:
            with blocks(kind, name, cand):
                diff = rel(fn(), want)
                ms = _time(fn, device, reps)
            out.append(_row("blocks", name, cand, ms, flops, base.p50, diff))
    return out


PARTS = {"slab": slab_rows, "backprop": backprop_rows, "blocks": block_rows}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (under TRITON_INTERPRET=1 on CPU)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {list(PARTS)}")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="append result rows (JSON lines) here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; choose from {list(PARTS)}")
    if device.type == "cpu" and not args.smoke:
        parser.error("--device cpu runs the Triton interpreter: only with --smoke (tiny shapes)")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("--device cpu needs TRITON_INTERPRET=1 in the environment (set before triton is imported)")
    shape = SMOKE if args.smoke else PAPER
    reps = args.reps or (1 if args.smoke else 10)
    inp = Inputs(shape, device)
    env = {**harness.environment(device), "shape": vars(shape)}
    rows: list[dict] = []
    for part in parts:
        new = [{**row, **env} for row in PARTS[part](inp, shape, device, reps)]
        for row in new:
            print(f"{row['part']:<9}{row['name']:<10}{str(row['config']):<64} {row['p50']:9.3f} ms "
                  f"{row['tflops']:7.1f} TFLOP/s  x{row['ratio']:.2f}  rel diff {row['rel_diff']:.1e}", flush=True)
        if args.out:  # written as we go: a run cut short keeps what it measured
            harness.append_rows(args.out, new)
        rows += new
    return rows


if __name__ == "__main__":
    main()
