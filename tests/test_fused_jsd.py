"""The generalised JSD (TRL GKD's loss): reference.generalized_jsd_loss against TRL's formula written out here and
against TRL itself, its analytic gradient, and oprd_kernels.fused_generalized_jsd_loss against the reference on fresh
random inputs (values and the gradients of `hidden` and `weight`): every backend, fp64, fp32 and bf16 heads, odd sizes,
masks with dead rows, heads of different sizes, beta at both ends and inside, and its argument checks."""

from __future__ import annotations

import importlib.util
import math
import warnings

import numpy as np
import pytest
import torch
from oracles import assert_lighter_than_the_logits

import oprd_kernels
from oprd_kernels import fused_full_vocab_opd_loss, fused_generalized_jsd_loss, reference
from oprd_kernels.opd import _jsd, _passes

BETAS = [0.0, 0.1, 0.5, 0.9, 1.0]
BACKENDS = ["rowwise", "chunked"]  # triton has no JSD pass: test_triton_falls_back_to_chunked


def draw(gen, positions, vocab, dim, vocab_t=None, dim_t=None, *, dtype=torch.float64, mask=True, scale=2.0):
    """(hidden, weight, teacher_hidden, teacher_weight, mask): logits with standard deviation ~`scale`, a mask with
    live and dead positions (at least one of each when there are two positions or more)."""
    vocab_t, dim_t = vocab_t or vocab, dim_t or dim + 3
    h = torch.randn(*positions, dim, generator=gen, dtype=torch.float64)
    w = torch.randn(vocab, dim, generator=gen, dtype=torch.float64) * (scale / dim ** 0.5)
    th = torch.randn(*positions, dim_t, generator=gen, dtype=torch.float64)
    tw = torch.randn(vocab_t, dim_t, generator=gen, dtype=torch.float64) * (scale / dim_t ** 0.5)
    m = None
    if mask:
        m = torch.rand(positions, generator=gen) < 0.6
        flat = m.view(-1)
        flat[0] = True
        if flat.numel() > 1:
            flat[-1] = False
    return h.to(dtype), w.to(dtype), th.to(dtype), tw.to(dtype), m


def value_and_grads(fn, h, w):
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss = fn(h, w)
    return (loss.detach(), *torch.autograd.grad(loss, (h, w)))


def fused_vg(h, w, th, tw, m, beta, **kw):
    return value_and_grads(lambda a, b: fused_generalized_jsd_loss(a, b, th, tw, m, beta=beta, **kw), h, w)


def reference_vg(h, w, th, tw, m, beta):
    return value_and_grads(lambda a, b: reference.generalized_jsd_loss(a @ b.T, th @ tw.T, m, beta=beta), h, w)


TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-6)}


def assert_matches(got, want, dtype):
    """Loss, d hidden, d weight: rtol, and an atol relative to the largest entry."""
    rtol, atol = TOL[dtype]
    for name, a, b in zip(("loss", "d hidden", "d weight"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        scale = max(float(b.abs().max()), 1e-3)
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale, msg=lambda msg: f"{name}: {msg}")


# ----------------------------------------------------------------------------------------------------------------
# The reference
# ----------------------------------------------------------------------------------------------------------------

def trl_formula(s_logits, t_logits, mask, beta):
    """TRL GKD's generalised JSD written out one live position at a time in fp64 probabilities (the mixture as a sum
    of probabilities, not a logaddexp); heads of different sizes: each normalised over its own head, the sums over
    the shared ids."""
    shared = min(s_logits.shape[-1], t_logits.shape[-1])
    total, count = 0.0, 0
    for r in range(s_logits.shape[0]):
        if mask is not None and not mask[r]:
            continue
        p = torch.softmax(s_logits[r].double(), 0)[:shared]
        q = torch.softmax(t_logits[r].double(), 0)[:shared]
        if beta == 0:
            value = (q * torch.log(q / p)).sum()
        elif beta == 1:
            value = (p * torch.log(p / q)).sum()
        else:
            m = (1 - beta) * p + beta * q
            value = beta * (q * torch.log(q / m)).sum() + (1 - beta) * (p * torch.log(p / m)).sum()
        total, count = total + float(value), count + 1
    return torch.tensor(total / max(count, 1), dtype=torch.float64)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("v_s, v_t", [(37, 37), (37, 29), (29, 37)])
def test_reference_equals_the_formula_written_out(gen, beta, v_s, v_t):
    s = torch.randn(9, v_s, generator=gen, dtype=torch.float64) * 2
    t = torch.randn(9, v_t, generator=gen, dtype=torch.float64) * 2
    mask = torch.rand(9, generator=gen) < 0.6
    mask[0], mask[1] = True, False
    for m in (mask, None):
        got = reference.generalized_jsd_loss(s, t, m, beta=beta)
        assert got.dtype == torch.float64 and got.shape == ()
        torch.testing.assert_close(got, trl_formula(s, t, m, beta), rtol=1e-12, atol=1e-12)


def test_reference_ends_are_the_kls_and_the_middle_is_neither(gen):
    s, t = (torch.randn(2, 5, 23, generator=gen, dtype=torch.float64) * 2 for _ in range(2))
    mask = torch.tensor([[True, False, True, True, False], [False, True, True, False, True]])
    rkl = reference.full_vocab_opd_loss(s, t, mask)
    assert torch.equal(reference.generalized_jsd_loss(s, t, mask, beta=1), rkl)
    torch.testing.assert_close(reference.generalized_jsd_loss(s, t, mask, beta=0),
                               reference.full_vocab_opd_loss(t, s, mask), rtol=1e-12, atol=1e-12)
    mid = reference.generalized_jsd_loss(s, t, mask, beta=0.5)
    assert 0 < float(mid) < math.log(2)  # the symmetric JSD is bounded by log 2


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed (pip install 'oprd[trl]')")
@pytest.mark.parametrize("beta", BETAS)
def test_reference_equals_trl(gen, beta):
    from trl.experimental.gkd import GKDTrainer

    s, t = (torch.randn(2, 6, 31, generator=gen, dtype=torch.float64) * 2 for _ in range(2))
    mask = torch.rand(2, 6, generator=gen) < 0.6
    mask[0, 0], mask[1, -1] = True, False
    labels = torch.zeros(2, 6, dtype=torch.long).masked_fill(~mask, -100)
    want = GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta)
    torch.testing.assert_close(reference.generalized_jsd_loss(s, t, mask, beta=beta), want, rtol=1e-12, atol=1e-12)
    flat_s, flat_t = s.reshape(12, 31), t.reshape(12, 31)  # no labels: "batchmean" over the rows of [N, V]
    torch.testing.assert_close(reference.generalized_jsd_loss(flat_s, flat_t, beta=beta),
                               GKDTrainer.generalized_jsd_loss(flat_s, flat_t, beta=beta), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta", BETAS)
def test_reference_gradcheck(gen, beta):
    s = torch.randn(4, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 13, generator=gen, dtype=torch.float64)  # a larger teacher head: the shared ids
    mask = torch.tensor([True, False, True, True])
    assert torch.autograd.gradcheck(lambda x: reference.generalized_jsd_loss(x, t, mask, beta=beta), (s,))


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("v_s, v_t", [(19, 19), (19, 15), (15, 19)])
def test_the_analytic_logits_gradient(gen, beta, v_s, v_t):
    """d JSD / d z, written from the formulas of opd/_jsd.py (and the reverse KL's of _shared_vocab.py at beta = 1),
    equals autograd through the reference, per live row (weight 1 / number of live rows)."""
    s = torch.randn(6, v_s, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, v_t, generator=gen, dtype=torch.float64)
    mask = torch.tensor([True, True, False, True, False, True])
    (want,) = torch.autograd.grad(reference.generalized_jsd_loss(s, t, mask, beta=beta), s)
    shared = min(v_s, v_t)
    p = torch.softmax(s.detach(), -1)
    q = torch.zeros_like(p)
    q[:, :shared] = torch.softmax(t, -1)[:, :shared]
    log_p, log_q = p.log(), q.log()
    ids = torch.arange(v_s) < shared
    if beta == 0:
        g = p * q.sum(-1, keepdim=True) - q
    else:
        if beta == 1:
            a = torch.where(ids, log_p - log_q + 1, 0.0)
        else:
            m = (1 - beta) * p + beta * q
            a = torch.where(ids, (1 - beta) * (log_p - m.log()), 0.0)  # d JSD / d p
        g = p * (a - (p * a).sum(-1, keepdim=True))
    g = torch.where(mask[:, None], g / int(mask.sum()), 0.0)
    torch.testing.assert_close(want, g, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# The fused loss against the reference
# ----------------------------------------------------------------------------------------------------------------

# positions, V, d, V_t, d_t, row_block, vocab_block: odd sizes, blocks of 1 and blocks larger than the sizes
CASES = [
    pytest.param((7,), 37, 5, 37, 8, 3, 8, id="N7-d5-V37-rb3-vb8"),
    pytest.param((2, 7), 41, 6, 41, 4, 4, 16, id="B2T7-V41-rb4-vb16"),
    pytest.param((5,), 23, 7, 23, 9, 1, 1, id="N5-V23-rb1-vb1"),
    pytest.param((3, 4), 29, 5, 29, 6, 64, 64, id="B3T4-V29-big-blocks"),
    pytest.param((1,), 1, 3, 1, 2, None, None, id="N1-V1-default-blocks"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("positions, vocab, dim, vocab_t, dim_t, row_block, vocab_block", CASES)
def test_matches_reference_fp64(gen, backend, beta, positions, vocab, dim, vocab_t, dim_t, row_block, vocab_block):
    h, w, th, tw, m = draw(gen, positions, vocab, dim, vocab_t, dim_t)
    got = fused_vg(h, w, th, tw, m, beta, row_block=row_block, vocab_block=vocab_block, backend=backend)
    assert got[0].dtype == torch.float64 and got[0].shape == () and got[1].shape == h.shape
    assert_matches(got, reference_vg(h, w, th, tw, m, beta), torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("positions, vocab, dim, vocab_t, dim_t, row_block, vocab_block", CASES[:3])
def test_matches_reference_fp32(gen, backend, beta, positions, vocab, dim, vocab_t, dim_t, row_block, vocab_block):
    h, w, th, tw, m = draw(gen, positions, vocab, dim, vocab_t, dim_t, dtype=torch.float32)
    got = fused_vg(h, w, th, tw, m, beta, row_block=row_block, vocab_block=vocab_block, backend=backend)
    assert got[0].dtype == got[1].dtype == got[2].dtype == torch.float32
    assert_matches(got, reference_vg(h, w, th, tw, m, beta), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("v_s, v_t", [(37, 29), (29, 37), (30, 31)])
def test_heads_of_different_sizes(gen, backend, beta, v_s, v_t):
    """Padded vocabularies: each model normalised over its own head, the sums over the shared ids."""
    h, w, th, tw, m = draw(gen, (11,), v_s, 6, v_t, 5)
    got = fused_vg(h, w, th, tw, m, beta, row_block=4, vocab_block=8, backend=backend)
    assert_matches(got, reference_vg(h, w, th, tw, m, beta), torch.float64)


@pytest.mark.parametrize("beta", [0.0, 0.3])
@pytest.mark.parametrize("v_s, v_t", [(37, 29), (29, 37)])
def test_rowwise_vocabulary_blocks(monkeypatch, gen, beta, v_s, v_t):
    """rowwise forms its sums in blocks of JSD_BLOCK vocabulary rows (1024): blocks of 4, some across the shared
    boundary, give the same result."""
    h, w, th, tw, m = draw(gen, (9,), v_s, 5, v_t, 4)
    want = reference_vg(h, w, th, tw, m, beta)
    monkeypatch.setattr(_jsd, "JSD_BLOCK", 4)
    assert_matches(fused_vg(h, w, th, tw, m, beta, row_block=3, backend="rowwise"), want, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_beta_one_is_the_fused_reverse_kl(gen, backend):
    h, w, th, tw, m = draw(gen, (2, 5), 33, 6, 33, 7, dtype=torch.float32)
    got = fused_vg(h, w, th, tw, m, 1.0, row_block=3, vocab_block=8, backend=backend)
    want = value_and_grads(lambda a, b: fused_full_vocab_opd_loss(a, b, th, tw, m, row_block=3, vocab_block=8,
                                                                  backend=backend), h, w)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_empty_mask_and_garbage_under_the_mask(gen, backend, beta):
    h, w, th, tw, m = draw(gen, (3, 4), 19, 5, 19, 6)
    none = torch.zeros(3, 4, dtype=torch.bool)
    loss, d_h, d_w = fused_vg(h, w, th, tw, none, beta, backend=backend)
    assert float(loss) == 0.0 and not d_h.any() and not d_w.any()
    want = fused_vg(h, w, th, tw, m, beta, row_block=2, vocab_block=8, backend=backend)
    dirty_h, dirty_th = h.clone(), th.clone()
    dirty_h[~m], dirty_th[~m] = float("nan"), float("inf")
    got = fused_vg(dirty_h, w, dirty_th, tw, m, beta, row_block=2, vocab_block=8, backend=backend)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(got[1][m], want[1][m], rtol=1e-12, atol=0)
    assert not got[1][~m].any()
    torch.testing.assert_close(got[2], want[2], rtol=1e-12, atol=1e-15)


def _rel_err(x: torch.Tensor, truth: torch.Tensor) -> float:
    return float((x.double() - truth).norm() / truth.norm().clamp_min(1e-300))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_bf16_no_worse_than_reference(gen, backend, beta):
    """DESIGN.md's rule: with bf16 heads the fused error against the fp64 truth on the same (upcast) inputs is no
    worse than the reference's own error on bf16 logits, plus a small tolerance."""
    h, w, th, tw, m = draw(gen, (4, 6), 64, 40, 64, 24, dtype=torch.bfloat16)
    truth = reference_vg(h.double(), w.double(), th.double(), tw.double(), m, beta)
    ref = reference_vg(h, w, th, tw, m, beta)
    got = fused_vg(h, w, th, tw, m, beta, row_block=5, vocab_block=16, backend=backend)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.bfloat16
    err_ref, err_got = abs(float(ref[0]) - float(truth[0])), abs(float(got[0]) - float(truth[0]))
    assert err_got <= err_ref + 1e-3 * abs(float(truth[0])) + 1e-6, ("loss", err_got, err_ref)
    for name, i in (("d hidden", 1), ("d weight", 2)):
        err_ref, err_got = _rel_err(ref[i], truth[i]), _rel_err(got[i], truth[i])
        assert err_got <= err_ref + 1e-3, (name, err_got, err_ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_fp32_precision_at_a_larger_vocabulary(gen, backend, beta):
    """fp32 at V = 60,000 with a teacher close to the student (a JSD of ~1e-3 against log-probabilities of ~-10): the
    fused loss is about as close to the fp64 truth on the same inputs as the fp32 reference (both ~1e-5 relative)."""
    n, vocab, dim = 8, 60000, 16
    h = torch.randn(n, dim, generator=gen)
    w = torch.randn(vocab, dim, generator=gen) * (3 / dim ** 0.5)
    th = h + 0.05 * torch.randn(n, dim, generator=gen)
    tw = w + 0.05 * torch.randn(vocab, dim, generator=gen) / dim ** 0.5
    truth = float(reference.generalized_jsd_loss(h.double() @ w.double().T, th.double() @ tw.double().T, beta=beta))
    ref_err = abs(float(reference.generalized_jsd_loss(h @ w.T, th @ tw.T, beta=beta)) - truth) / truth
    got = float(fused_generalized_jsd_loss(h, w, th, tw, beta=beta, backend=backend))
    assert abs(got - truth) / truth <= 3 * max(ref_err, 1e-5), (got, truth, ref_err)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_scaling_teacher_constant_and_requires_grad(gen, backend):
    h, w, th, tw, m = draw(gen, (7,), 21, 5, 21, 6)
    _, d_h, d_w = fused_vg(h, w, th, tw, m, 0.5, backend=backend)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    th, tw = th.clone().requires_grad_(), tw.clone().requires_grad_()
    (2.5 * fused_generalized_jsd_loss(hh, ww, th, tw, m, backend=backend)).backward()
    torch.testing.assert_close(hh.grad, 2.5 * d_h, rtol=1e-12, atol=0)
    torch.testing.assert_close(ww.grad, 2.5 * d_w, rtol=1e-12, atol=0)
    assert th.grad is None and tw.grad is None
    frozen = h.clone().requires_grad_()
    (d_only,) = torch.autograd.grad(fused_generalized_jsd_loss(frozen, w, th, tw, m, backend=backend), frozen)
    torch.testing.assert_close(d_only, d_h, rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend,row_block", [("chunked", 64), ("rowwise", 16)])
def test_never_materialises_the_logits(gen, backend, row_block):
    """Forward + backward at N = 256, V = 4096 (one fp32 [N, V] tensor: 4 MiB): the fused JSD stays well below one
    logits tensor, the reference path above it."""
    h, w, th, tw, _ = draw(gen, (256,), 4096, 32, 4096, 32, dtype=torch.float32, mask=False)
    logits_bytes = 256 * 4096 * 4
    hh, ww = h.requires_grad_(), w.requires_grad_()

    def fused():
        loss = fused_generalized_jsd_loss(hh, ww, th, tw, row_block=row_block, vocab_block=512, backend=backend)
        return torch.autograd.grad(loss, [hh, ww])

    def naive():
        return torch.autograd.grad(reference.generalized_jsd_loss(hh @ ww.T, th @ tw.T), [hh, ww])

    assert_lighter_than_the_logits(fused, naive, logits_bytes)


# ----------------------------------------------------------------------------------------------------------------
# Backends and arguments
# ----------------------------------------------------------------------------------------------------------------

def test_triton_falls_back_to_chunked(monkeypatch, gen):
    """No Triton JSD pass: asking for triton warns once and runs chunked; auto picks rowwise on CPU without a word;
    the report says why triton cannot run the JSD (and only the JSD)."""
    monkeypatch.setattr(_passes, "_WARNED", set())
    h, w, th, tw, m = draw(gen, (2, 5), 23, 6, 23, 7, dtype=torch.float32)
    want = fused_vg(h, w, th, tw, m, 0.5, row_block=3, vocab_block=7, backend="chunked")
    with pytest.warns(RuntimeWarning, match="triton.*fused_generalized_jsd_loss.*no Triton pass.*'chunked'"):
        got = fused_vg(h, w, th, tw, m, 0.5, row_block=3, vocab_block=7, backend="triton")
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused_vg(h, w, th, tw, m, 0.5, backend="triton")  # one warning per process
        assert_matches(fused_vg(h, w, th, tw, m, 0.5), fused_vg(h, w, th, tw, m, 0.5, backend="rowwise"),
                       torch.float32)
    report = oprd_kernels.backend_report("cpu")["opd"]["backends"]["triton"]
    assert _passes.NO_TRITON_JSD in report["fused_generalized_jsd_loss"]
    others = {op: why for op, why in report.items() if op != "fused_generalized_jsd_loss"}
    assert all(_passes.NO_TRITON_JSD not in why for why in others.values())


@pytest.mark.parametrize("func", ["reference", "fused"])
def test_beta_validation(gen, func):
    h, w, th, tw, m = draw(gen, (3,), 7, 4, 7, 5)
    if func == "reference":
        name, call = "generalized_jsd_loss", lambda b: reference.generalized_jsd_loss(h @ w.T, th @ tw.T, m, beta=b)
    else:
        name, call = "fused_generalized_jsd_loss", lambda b: fused_generalized_jsd_loss(h, w, th, tw, m, beta=b)
    for bad, seen in ((True, "bool True"), ("0.5", "str '0.5'"), (None, "NoneType None"),
                      (torch.tensor(0.5), "tensor of shape ()")):
        with pytest.raises(TypeError, match=f"^{name}: `beta` must be a real number in \\[0, 1\\]; got {seen}"):
            call(bad)
    for bad in (-0.1, 1.5, float("nan"), float("inf"), 2):
        with pytest.raises(ValueError, match=f"^{name}: `beta` must be in \\[0, 1\\]; got {bad!r}$"):
            call(bad)
    want = call(0.25)
    for ok in (np.float32(0.25), np.float64(0.25), 0.25):  # any real number
        torch.testing.assert_close(call(ok), want, rtol=1e-7, atol=0)
    assert torch.equal(call(0), call(0.0)) and torch.equal(call(1), call(1.0))


def test_other_arguments_are_checked_as_for_the_full_kl(gen):
    h, w, th, tw, m = draw(gen, (3,), 7, 4, 7, 5)
    func = "fused_generalized_jsd_loss"
    with pytest.raises(ValueError, match=f"{func}: `teacher_hidden`"):
        fused_generalized_jsd_loss(h, w, th[:2], tw, m)
    with pytest.raises(ValueError, match=f"{func}: `mask`"):
        fused_generalized_jsd_loss(h, w, th, tw, m[:2])
    with pytest.raises(ValueError, match=f"{func}: `row_block`"):
        fused_generalized_jsd_loss(h, w, th, tw, m, row_block=0)
    with pytest.raises(ValueError, match=f"{func}: `backend`"):
        fused_generalized_jsd_loss(h, w, th, tw, m, backend="fastest")
    with pytest.raises(ValueError, match="generalized_jsd_loss: `teacher_logits`"):
        reference.generalized_jsd_loss(h @ w.T, (th @ tw.T)[:2], m)
