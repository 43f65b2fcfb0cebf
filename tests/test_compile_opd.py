"""The fused OPD losses and `lm_head_stats` under `torch.compile(fullgraph=True)`: no graph break (the custom ops of
oprd_kernels/opd/custom_ops.py), values, gradients and statistics equal to eager ones on fresh random inputs of odd
sizes, for every OPD backend."""

from __future__ import annotations

import pytest
import torch

import oprd_kernels

BACKENDS = ["chunked", "rowwise", "triton"]  # triton: under TRITON_INTERPRET=1 (tests/conftest.py)


def inputs(seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    batch, seq, dim, vocab = 2, 5, 6, 37
    hidden = torch.randn(batch, seq, dim, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(vocab, dim, generator=g, dtype=dtype) / 2).requires_grad_()
    t_hidden = torch.randn(batch, seq, 7, generator=g, dtype=dtype)
    t_weight = torch.randn(vocab, 7, generator=g, dtype=dtype) / 2
    tokens = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.rand(batch, seq, generator=g) > 0.3
    return hidden, weight, t_hidden, t_weight, tokens, mask


def both(fn, hidden, weight, *args):
    """[(value(s), d hidden, d weight)] eagerly and compiled with fullgraph=True."""
    out = []
    for run in (fn, torch.compile(fn, fullgraph=True, backend="aot_eager")):
        hidden.grad = weight.grad = None
        value = run(hidden, weight, *args)
        loss = value[0] if isinstance(value, tuple) else value
        (2.5 * loss).backward()
        out.append((value, hidden.grad.clone(), weight.grad.clone()))
    return out


def assert_same(eager, compiled):
    for a, b in zip(eager, compiled):
        if isinstance(a, tuple):
            assert_same(a, b)
        else:
            torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["sampled_token", "topk", "full_vocab", "at_ids", "jsd"])
def test_compiled_fused_opd_losses_equal_eager(backend, loss):
    torch._dynamo.reset()
    hidden, weight, t_hidden, t_weight, tokens, mask = inputs(1)
    ids = torch.randint(0, 37, (2, 5, 3), generator=torch.Generator().manual_seed(2))
    log_q = torch.log_softmax(torch.randn(2, 5, 3), -1)

    def fn(h, w, th, tw, tok, m):
        if loss == "sampled_token":
            return oprd_kernels.fused_sampled_token_opd_loss(h, w, th, tw, tok, m, backend=backend)
        if loss == "topk":
            return oprd_kernels.fused_topk_opd_loss(h, w, th, tw, m, k=4, backend=backend)
        if loss == "full_vocab":
            return oprd_kernels.fused_full_vocab_opd_loss(h, w, th, tw, m, backend=backend)
        if loss == "jsd":
            return oprd_kernels.fused_generalized_jsd_loss(h, w, th, tw, m, beta=0.3, backend=backend)
        return oprd_kernels.fused_opd_loss_at_ids(h, w, ids, log_q, m, backend=backend)

    eager, compiled = both(fn, hidden, weight, t_hidden, t_weight, tokens, mask)
    assert_same(eager, compiled)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_loss_and_stats_equal_eager(backend):
    torch._dynamo.reset()
    hidden, weight, t_hidden, t_weight, tokens, mask = inputs(3)

    def fn(h, w, th, tw, tok, m):
        loss, stats = oprd_kernels.fused_opd_loss_and_stats("topk", h, w, th, tw, tok, m, k=5, stats_k=4,
                                                           backend=backend)
        return (loss, stats.reward, stats.entropy_student, stats.entropy_teacher, stats.overlap)

    eager, compiled = both(fn, hidden, weight, t_hidden, t_weight, tokens, mask)
    assert eager[0][1].shape == (int(mask.sum()),)  # one entry per live position: a dynamic size when traced
    assert_same(eager, compiled)


def test_a_frozen_head_gets_no_gradient_when_compiled():
    torch._dynamo.reset()
    hidden, weight, t_hidden, t_weight, tokens, mask = inputs(4)
    weight.requires_grad_(False)

    def fn(h, w):
        return oprd_kernels.fused_sampled_token_opd_loss(h, w, t_hidden, t_weight, tokens, mask)

    eager = fn(hidden, weight)
    want = torch.autograd.grad(eager, hidden)[0]
    got = torch.autograd.grad(torch.compile(fn, fullgraph=True, backend="aot_eager")(hidden, weight), hidden)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert weight.grad is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ask", [dict(topk=4, entropy=True), dict(ids="ids"), dict()], ids=["topk", "ids", "lse"])
def test_compiled_lm_head_stats_equal_eager(backend, ask):
    torch._dynamo.reset()
    hidden, weight, *_ = inputs(5)
    kw = dict(ask, backend=backend)
    if "ids" in kw:
        kw["ids"] = torch.randint(0, 37, (2, 5, 2), generator=torch.Generator().manual_seed(6))

    def fn(h, w):
        return oprd_kernels.lm_head_stats(h, w, **kw)

    eager = fn(hidden.detach(), weight.detach())
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(hidden.detach(), weight.detach())
    for name in ("logsumexp", "log_probs", "topk_log_probs", "topk_ids", "entropy"):
        a, b = getattr(eager, name), getattr(compiled, name)
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_the_ops_registrations_pass_opcheck():
    from oprd_kernels.opd.custom_ops import fused_opd_op, lm_head_stats_op

    hidden, weight, t_hidden, t_weight, tokens, mask = inputs(7, dtype=torch.float64)
    torch.library.opcheck(fused_opd_op, ("fused_full_vocab_opd_loss", "full_vocab", hidden, weight, t_hidden,
                                         t_weight, None, mask, 1, None, None, "chunked", 0, 0.5, True, True))
    torch.library.opcheck(fused_opd_op, ("fused_generalized_jsd_loss", "jsd", hidden, weight, t_hidden, t_weight,
                                         None, mask, 1, None, None, "rowwise", 0, 0.25, True, False))
    torch.library.opcheck(lm_head_stats_op, (hidden.detach(), weight.detach(), None, 3, True, None, None, None,
                                             "chunked"))
