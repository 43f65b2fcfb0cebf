"""The loss path under pytest-benchmark, for people who compare runs with its tooling (not part of CI's tests):

    .venv/bin/python -m pytest benchmarks/test_pytest_suite.py --benchmark-only --benchmark-group-by=param:shape \\
        --benchmark-json=benchmark.json            # add --benchmark-compare to diff against a saved run

Forward+backward of OPRD (the fast backend for the device), naive top-1/top-16 OPD (logits materialised as the
reference code does) and fused top-1/top-16 OPD, on the same hidden states. Scaled shapes with the real vocabulary
size on CPU; the paper's rows on CUDA. bench_loss_path.py is the runner with memory and physical limits.
"""

from __future__ import annotations

import pytest
import torch

import oprd_kernels

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
VOCAB = 151_936
SHAPES = {  # name: (rows of OPD, hidden size, layers of OPRD, selected rows of OPRD, dtype)
    "cpu-128rows": (128, 512, 28, 64, torch.float32),
    "gpu-paper": (2 * 16384, 1536, 28, 2 * 2000, torch.bfloat16),
}
METHODS = ("oprd", "opd-top1-naive", "opd-top16-naive", "opd-top1-fused", "opd-top16-fused")


def _inputs(shape: str):
    rows, dim, layers, selected, dtype = SHAPES[shape]
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    hidden = torch.randn(rows, dim, device=DEVICE, dtype=dtype, generator=gen).requires_grad_()
    weight = (torch.randn(VOCAB, dim, device=DEVICE, dtype=dtype, generator=gen) / dim ** 0.5).requires_grad_()
    t_hidden = torch.randn(rows, dim, device=DEVICE, dtype=dtype, generator=gen)
    t_weight = torch.randn(VOCAB, dim, device=DEVICE, dtype=dtype, generator=gen) / dim ** 0.5
    tokens = torch.randint(0, VOCAB, (rows,), device=DEVICE, generator=gen)
    states = [torch.randn(selected, dim, device=DEVICE, dtype=dtype, generator=gen).requires_grad_()
              for _ in range(layers)]
    cache = torch.randn(layers, selected, dim, device=DEVICE, dtype=torch.bfloat16, generator=gen)
    return hidden, weight, t_hidden, t_weight, tokens, states, cache


def _step(method: str, hidden, weight, t_hidden, t_weight, tokens, states, cache):
    if method == "oprd":
        loss = oprd_kernels.alignment_loss(states, cache)
        torch.autograd.grad(loss, states)
        return
    k = 16 if "top16" in method else 1
    if method.endswith("naive"):
        s_logits = hidden @ weight.T
        with torch.no_grad():
            t_logits = t_hidden @ t_weight.T
        loss = (oprd_kernels.reference.topk_opd_loss(s_logits, t_logits, k=k) if k > 1 else
                oprd_kernels.reference.sampled_token_opd_loss(s_logits, t_logits, tokens))
    elif k > 1:
        loss = oprd_kernels.fused_topk_opd_loss(hidden, weight, t_hidden, t_weight, k=k)
    else:
        loss = oprd_kernels.fused_sampled_token_opd_loss(hidden, weight, t_hidden, t_weight, tokens)
    torch.autograd.grad(loss, (hidden, weight))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [s for s in SHAPES if s.startswith(DEVICE.type)])
def test_loss_path(benchmark, shape, method):
    inputs = _inputs(shape)

    def run():
        _step(method, *inputs)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update({"device": DEVICE.type, "shape": shape})
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
