"""The trainer's fp32 AdamW runs torch's fused kernel where it applies, and that kernel computes the update of the
plain for-loop implementation (the one `oprd train` stepped before), so switching kernels changes no run."""

from __future__ import annotations

import torch
from torch import nn

from oprd.train.optim import adamw_kernel, build_optimizer


def params(seed: int) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(shape, generator=gen)) for shape in ((7, 13), (13,), (1,), (31, 5))]


def test_build_optimizer_takes_the_fused_kernel_for_fp32_cpu_parameters():
    optimizer = build_optimizer(params(0), "adamw", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, seed=0)
    assert optimizer.defaults["fused"] is True
    assert adamw_kernel([nn.Parameter(torch.zeros(2, dtype=torch.float64))]) == {"foreach": True}


def test_the_fused_update_equals_the_for_loop_update():
    a, b = params(1), params(1)
    fused = build_optimizer(a, "adamw", lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, seed=0)
    loop = torch.optim.AdamW(b, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, foreach=False, fused=False)
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        for x, y in zip(a, b):
            x.grad = torch.randn(x.shape, generator=gen)
            y.grad = x.grad.clone()
        fused.step()
        loop.step()
    for x, y, start in zip(a, b, params(1)):
        assert (x - start).abs().max() > 1e-3  # the steps moved the weights
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
