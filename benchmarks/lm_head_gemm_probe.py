"""Quick probe of the LM-head GEMM shapes behind the fused OPD's CPU choices (docs/perf_notes.md, "Against the
peers"; opd/_row_chunks.py; opd/_tiles.gemm_dtype). Not a benchmark (no baselines, no memory): medians of
interleaved runs, d = 1024, |V| = 151,936, fp32 unless said.

    python benchmarks/lm_head_gemm_probe.py layouts      # forward h @ W.T against W @ h.T, 256 and 512 rows
    python benchmarks/lm_head_gemm_probe.py bf16         # the forward product in bf16 against fp32, 110 rows
    python benchmarks/lm_head_gemm_probe.py bf16-backward  # g @ W at 64 rows in bf16 (minutes without bf16 units)
    python benchmarks/lm_head_gemm_probe.py align        # one rowwise full-KL call at 220, 224 and 256-row chunks
"""

from __future__ import annotations

import sys
import time

import torch

D, V = 1024, 151936


def _medians(fns: dict, rounds: int) -> dict:
    for f in fns.values():
        f()
    samples: dict = {name: [] for name in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            start = time.perf_counter()
            f()
            samples[name].append(time.perf_counter() - start)
    return {name: sorted(s)[len(s) // 2] for name, s in samples.items()}


def layouts() -> None:
    w = torch.randn(V, D)
    for rows in (256, 512):
        h = torch.randn(rows, D)
        z, zt = torch.empty(rows, V), torch.empty(V, rows)
        med = _medians({"h @ W.T": lambda: torch.matmul(h, w.T, out=z),
                        "W @ h.T": lambda: torch.matmul(w, h.T, out=zt)}, 4)
        for name, sec in med.items():
            print(f"{rows} rows {name}: {2 * rows * D * V / sec / 1e9:.1f} GFLOP/s", flush=True)


def bf16() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        h, w = torch.randn(110, D).to(dtype), torch.randn(V, D).to(dtype)
        sec = _medians({"fwd": lambda: h @ w.T}, 3)["fwd"]
        print(f"{dtype} forward, 110 rows: {2 * 110 * D * V / sec / 1e9:.1f} GFLOP/s", flush=True)


def bf16_backward() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        g, w = torch.randn(64, V).to(dtype), (torch.randn(V, D) / 32).to(dtype)
        start = time.perf_counter()
        g @ w
        print(f"{dtype} g @ W [64, {V}] @ [{V}, {D}]: {time.perf_counter() - start:.2f} s", flush=True)


def align() -> None:
    from oprd_kernels.opd import fused_full_vocab_opd_loss

    gen = torch.Generator().manual_seed(0)
    h = torch.randn(512, D, generator=gen).requires_grad_()
    w = (torch.randn(V, D, generator=gen) * 3 / D ** 0.5).requires_grad_()
    th, tw = h.detach() + 0.3 * torch.randn(512, D, generator=gen), w.detach() + torch.randn(V, D, generator=gen) / 32

    def call(rows: int):
        def run():
            loss = fused_full_vocab_opd_loss(h, w, th, tw, backend="rowwise", row_block=rows)
            torch.autograd.grad(loss, (h, w))
        return run
    for name, sec in _medians({f"{rows}-row chunks": call(rows) for rows in (220, 224, 256)}, 3).items():
        print(f"rowwise full KL, 512 rows, {name}: {sec:.2f} s", flush=True)


if __name__ == "__main__":
    probes = {"layouts": layouts, "bf16": bf16, "bf16-backward": bf16_backward, "align": align}
    which = sys.argv[1] if len(sys.argv) > 1 else "layouts"
    if which not in probes:
        raise SystemExit(f"lm_head_gemm_probe: the probe must be one of {sorted(probes)}, got {which!r}")
    probes[which]()
