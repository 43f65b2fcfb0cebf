"""The OPD update phase with the teacher side precomputed (verl's actor-update view): reference.opd_loss_at_ids against
an explicit loop and against the full-logit losses it must reproduce, and fused_opd_loss_at_ids against it."""

from __future__ import annotations

import math

import pytest
import torch

import oprd_kernels
from oprd_kernels.reference import opd_loss_at_ids, sampled_token_opd_loss, topk_opd_loss


def _loop_value_and_grad(logits: torch.Tensor, ids: torch.Tensor, log_q: torch.Tensor, mask: torch.Tensor):
    """Value and d/d logits of the surrogate sum_k sg(w_k (lp_k - lq_k)) lp_k, token-mean over the mask, in loops."""
    n, v = logits.shape
    live = [i for i in range(n) if mask[i]]
    value, grad = 0.0, torch.zeros(n, v, dtype=torch.float64)
    for i in live:
        row = [float(x) for x in logits[i]]
        top = max(row)
        lse = top + math.log(sum(math.exp(x - top) for x in row))
        lp = [row[int(j)] - lse for j in ids[i]]
        z = sum(math.exp(x) for x in lp)
        coef = [math.exp(x) / z * (x - float(q)) for x, q in zip(lp, log_q[i])]
        value += sum(c * x for c, x in zip(coef, lp)) / len(live)
        for c, j in zip(coef, ids[i]):
            for u in range(v):
                grad[i, u] += c * ((u == int(j)) - math.exp(row[u] - lse)) / len(live)
    return value, grad


@pytest.mark.parametrize("k", [1, 3])
def test_reference_matches_an_explicit_loop(gen, k):
    n, v = 7, 11
    logits = torch.randn(n, v, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = torch.stack([torch.randperm(v, generator=gen)[:k] for _ in range(n)])
    log_q = torch.log_softmax(torch.randn(n, v, generator=gen, dtype=torch.float64), -1).gather(-1, ids)
    mask = torch.rand(n, generator=gen) > 0.3
    mask[0] = True
    ids[~mask] = -100  # garbage under the mask is ignored
    log_q[~mask] = float("-inf")
    got = opd_loss_at_ids(logits, ids, log_q, mask)
    (grad,) = torch.autograd.grad(got, logits)
    want, want_grad = _loop_value_and_grad(logits.detach(), ids.clamp_min(0), log_q.nan_to_num(neginf=0.0), mask)
    assert float(got.detach()) == pytest.approx(want, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(grad).all()


def test_reference_reproduces_the_full_logit_losses(gen):
    b, t, v = 2, 6, 17
    s = torch.randn(b, t, v, generator=gen, dtype=torch.float64, requires_grad=True)
    q = torch.randn(b, t, v, generator=gen, dtype=torch.float64)
    tokens = torch.randint(0, v, (b, t), generator=gen)
    mask = torch.rand(b, t, generator=gen) > 0.2
    log_q_all = torch.log_softmax(q, -1)
    top1 = opd_loss_at_ids(s, tokens[..., None], log_q_all.gather(-1, tokens[..., None]), mask)
    torch.testing.assert_close(top1, sampled_token_opd_loss(s, q, tokens, mask))
    ids = s.detach().topk(4, -1).indices
    top4 = opd_loss_at_ids(s, ids, log_q_all.gather(-1, ids), mask)
    torch.testing.assert_close(top4, topk_opd_loss(s, q, mask, k=4))
    g_at, g_full = (torch.autograd.grad(x, s)[0] for x in (top4, topk_opd_loss(s, q, mask, k=4)))
    torch.testing.assert_close(g_at, g_full)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("k,blocks", [(1, (3, 5)), (4, (64, 7)), (5, (1, 64))])
def test_fused_matches_the_reference(gen, dtype, tol, k, blocks):
    b, t, d, v = 2, 9, 19, 43
    h = torch.randn(b, t, d, generator=gen, dtype=dtype).requires_grad_()
    w = (0.4 * torch.randn(v, d, generator=gen, dtype=dtype)).requires_grad_()
    mask = torch.rand(b, t, generator=gen) > 0.3
    with torch.no_grad():
        ids = (h @ w.T).topk(k, -1).indices
        log_q = torch.log_softmax(torch.randn(b, t, v, generator=gen, dtype=dtype), -1).gather(-1, ids)
    want = opd_loss_at_ids(h @ w.T, ids, log_q, mask)
    want_grads = torch.autograd.grad(want, (h, w))
    got = oprd_kernels.fused_opd_loss_at_ids(h, w, ids, log_q, mask, row_block=blocks[0], vocab_block=blocks[1])
    got_grads = torch.autograd.grad(2.5 * got, (h, w))
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    for g, r in zip(got_grads, want_grads):
        torch.testing.assert_close(g, 2.5 * r, rtol=tol * 10, atol=tol)


def test_fused_and_reference_reject_mismatched_teacher_log_probs(gen):
    h, w = torch.randn(4, 6, generator=gen), torch.randn(9, 6, generator=gen)
    ids = torch.zeros(4, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="`teacher_log_probs`"):
        oprd_kernels.fused_opd_loss_at_ids(h, w, ids, torch.zeros(4, 3))
    with pytest.raises(TypeError, match="`ids`"):
        oprd_kernels.fused_opd_loss_at_ids(h, w, ids.float(), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="`ids`"):
        opd_loss_at_ids(h @ w.T, ids + 9, torch.zeros(4, 2))
