"""torch.compile (inductor, fullgraph=True) through the custom ops on CUDA tensors, where auto picks the Triton
kernels (run by the GPU check; skipped without CUDA): values and gradients equal the eager calls."""

from __future__ import annotations

import pytest
import torch

import oprd_kernels

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _compare(fn, tensors, *, rtol=1e-4, atol=1e-5):
    """fn eagerly and under inductor, fullgraph: the same value and the same gradients of `tensors`."""
    torch._dynamo.reset()
    results = []
    for run in (fn, torch.compile(fn, fullgraph=True)):
        for t in tensors:
            t.grad = None
        value = run()
        value.backward()
        results.append((value.detach(), [t.grad.clone() for t in tensors]))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)


def test_alignment_and_bridge_compile_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    student = [torch.randn(2, 333, 257, device="cuda", generator=g, requires_grad=True) for _ in range(3)]
    rows = torch.randperm(666, device="cuda", generator=g)[:301].sort().values
    teacher = torch.randn(3, 301, 257, device="cuda", generator=g)
    _compare(lambda: oprd_kernels.alignment_loss(student, teacher, rows=rows), student)
    proj = torch.randn(3, 8, 257, device="cuda", generator=g, requires_grad=True)
    teacher_z = torch.randn(3, 301, 8, device="cuda", generator=g)
    _compare(lambda: oprd_kernels.bridge_loss(student, teacher_z, proj, rows=rows), [*student, proj])


def test_fused_opd_and_head_stats_compile_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(1)
    hidden = torch.randn(3, 77, 128, device="cuda", generator=g, requires_grad=True)
    weight = (torch.randn(1000, 128, device="cuda", generator=g) / 4).requires_grad_()
    t_hidden = torch.randn(3, 77, 96, device="cuda", generator=g)
    t_weight = torch.randn(1000, 96, device="cuda", generator=g) / 4
    tokens = torch.randint(0, 1000, (3, 77), device="cuda", generator=g)
    mask = torch.rand(3, 77, device="cuda", generator=g) > 0.2
    _compare(lambda: oprd_kernels.fused_topk_opd_loss(hidden, weight, t_hidden, t_weight, mask, k=16),
             [hidden, weight])
    _compare(lambda: oprd_kernels.fused_sampled_token_opd_loss(hidden, weight, t_hidden, t_weight, tokens, mask),
             [hidden, weight])

    def stats():
        return oprd_kernels.lm_head_stats(hidden.detach(), weight.detach(), topk=8, entropy=True)

    eager, compiled = stats(), torch.compile(stats, fullgraph=True)()
    torch.testing.assert_close(compiled.topk_log_probs, eager.topk_log_probs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled.entropy, eager.entropy, rtol=1e-4, atol=1e-5)
