"""Tests of the fused OPD losses (oprd_kernels.opd): fused_sampled_token_opd_loss, fused_topk_opd_loss and
fused_full_vocab_opd_loss.

Their meaning is the reference losses (oprd_kernels.reference.opd) applied to student_logits = hidden @ weight.T and
teacher_logits = teacher_hidden @ teacher_weight.T; every value and gradient (of `hidden` and `weight`) is checked
against exactly that, on fresh random inputs from the per-test generator `gen`: odd vocabularies and tile shapes,
[N, d] and [B, T, d] positions, student and teacher of different widths, masks (with garbage under them), gradient
scaling and composition, requires_grad combinations, the bf16 "no worse than the reference" rule (DESIGN.md, Testing),
autocast, argument validation, the backend seam, and the memory property the losses exist for (no [N, V] logits).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import pytest
import torch
from oracles import assert_lighter_than_the_logits

from oprd_kernels import (
    fused_full_vocab_opd_loss,
    fused_sampled_token_opd_loss,
    fused_topk_opd_loss,
    lm_head_stats,
    reference,
)
from oprd_kernels.opd import _passes

KINDS = ("sampled", "topk", "full")


# ----------------------------------------------------------------------------------------------------------------
# Inputs and the two ways of computing a loss
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Inputs:
    hidden: torch.Tensor  # [*P, d]
    weight: torch.Tensor  # [V, d]
    teacher_hidden: torch.Tensor  # [*P, d_t]
    teacher_weight: torch.Tensor  # [V, d_t]
    tokens: torch.Tensor  # int64 [*P]
    mask: torch.Tensor | None  # bool [*P]

    def to(self, dtype: torch.dtype) -> Inputs:
        return replace(self, hidden=self.hidden.to(dtype), weight=self.weight.to(dtype),
                       teacher_hidden=self.teacher_hidden.to(dtype), teacher_weight=self.teacher_weight.to(dtype))


def random_mask(gen: torch.Generator, positions: tuple[int, ...]) -> torch.Tensor:
    """A bool mask with at least one live and (when there are two positions or more) one dead position."""
    mask = torch.rand(positions, generator=gen) < 0.6
    flat = mask.view(-1)
    flat[int(torch.randint(0, flat.numel(), (), generator=gen))] = True
    if flat.numel() > 1 and bool(flat.all()):
        flat[(int(flat.nonzero()[0]) + 1) % flat.numel()] = False
    return mask


def draw(gen: torch.Generator, positions: tuple[int, ...], vocab: int, dim: int, dim_t: int, *,
         dtype: torch.dtype = torch.float64, mask: str = "none", scale: float = 2.0) -> Inputs:
    """Random inputs whose logits have standard deviation ~`scale`; padding id -100 under a mask."""
    hidden = torch.randn(*positions, dim, generator=gen, dtype=torch.float64)
    weight = torch.randn(vocab, dim, generator=gen, dtype=torch.float64) * (scale / dim ** 0.5)
    t_hidden = torch.randn(*positions, dim_t, generator=gen, dtype=torch.float64)
    t_weight = torch.randn(vocab, dim_t, generator=gen, dtype=torch.float64) * (scale / dim_t ** 0.5)
    tokens = torch.randint(0, vocab, positions, generator=gen)
    m = None
    if mask == "random":
        m = random_mask(gen, positions)
    elif mask == "all_false":
        m = torch.zeros(positions, dtype=torch.bool)
    if m is not None:
        tokens = tokens.masked_fill(~m, -100)
    return Inputs(hidden, weight, t_hidden, t_weight, tokens, m).to(dtype)


def fused_loss(kind: str, hidden, weight, teacher_hidden, teacher_weight, tokens=None, mask=None, *, k: int = 4,
               **kwargs) -> torch.Tensor:
    if kind == "sampled":
        return fused_sampled_token_opd_loss(hidden, weight, teacher_hidden, teacher_weight, tokens, mask, **kwargs)
    if kind == "topk":
        return fused_topk_opd_loss(hidden, weight, teacher_hidden, teacher_weight, mask, k=k, **kwargs)
    return fused_full_vocab_opd_loss(hidden, weight, teacher_hidden, teacher_weight, mask, **kwargs)


def reference_loss(kind: str, hidden, weight, teacher_hidden, teacher_weight, tokens=None, mask=None, *,
                   k: int = 4) -> torch.Tensor:
    """The specification: the reference loss on the materialised logits."""
    student, teacher = hidden @ weight.T, teacher_hidden @ teacher_weight.T
    if kind == "sampled":
        return reference.sampled_token_opd_loss(student, teacher, tokens, mask)
    if kind == "topk":
        return reference.topk_opd_loss(student, teacher, mask, k=k)
    return reference.full_vocab_opd_loss(student, teacher, mask)


def value_and_grads(fn, inp: Inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, d loss / d hidden, d loss / d weight) of fn(hidden, weight) on fresh leaves."""
    hidden = inp.hidden.detach().clone().requires_grad_(True)
    weight = inp.weight.detach().clone().requires_grad_(True)
    loss = fn(hidden, weight)
    d_hidden, d_weight = torch.autograd.grad(loss, [hidden, weight])
    return loss.detach(), d_hidden, d_weight


def fused_vg(kind: str, inp: Inputs, *, k: int = 4, **kwargs):
    return value_and_grads(lambda h, w: fused_loss(kind, h, w, inp.teacher_hidden, inp.teacher_weight, inp.tokens,
                                                   inp.mask, k=k, **kwargs), inp)


def reference_vg(kind: str, inp: Inputs, *, k: int = 4, tokens: torch.Tensor | None = None):
    tokens = inp.tokens if tokens is None else tokens
    return value_and_grads(lambda h, w: reference_loss(kind, h, w, inp.teacher_hidden, inp.teacher_weight, tokens,
                                                       inp.mask, k=k), inp)


TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-4, 1e-5)}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """rtol, plus an atol relative to the largest entry (gradients are ~1/N, losses O(1))."""
    rtol, atol = TOL[dtype]
    scale = max(float(expected.detach().abs().max()), 1e-3) if expected.numel() else 1.0
    assert actual.dtype == expected.dtype, what
    assert actual.shape == expected.shape, what
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")


def assert_matches(got, want, dtype: torch.dtype) -> None:
    for name, a, b in zip(("loss", "d hidden", "d weight"), got, want):
        assert_close(a, b, dtype, name)


# positions, V, d, d_t, row_block, vocab_block, k: small enough for the triton interpreter (V <= 80, N <= 24,
# d <= 40); V not a multiple of the vocab block, d not a power of two, blocks of 1 and blocks larger than the sizes.
CASES = [
    pytest.param((13,), 37, 24, 16, 4, 8, 5, id="N13-V37-rb4-vb8-k5"),
    pytest.param((2, 7), 77, 40, 24, 3, 16, 1, id="B2T7-V77-rb3-vb16-k1"),
    pytest.param((24,), 80, 33, 40, 1, 1, 3, id="N24-V80-rb1-vb1-k3-above-vocab-block"),
    pytest.param((3, 5), 37, 7, 33, 64, 64, 37, id="B3T5-V37-big-blocks-k=V"),
    pytest.param((4, 6), 50, 20, 20, None, None, 16, id="B4T6-V50-default-tiles-k16"),
    pytest.param((1,), 1, 6, 10, 1, 1, 1, id="N1-V1"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("positions, vocab, dim, dim_t, row_block, vocab_block, k", CASES)
def test_matches_reference_fp64(opd_backend, gen, kind, positions, vocab, dim, dim_t, row_block, vocab_block, k):
    inp = draw(gen, positions, vocab, dim, dim_t, mask="random" if len(positions) == 2 else "none")
    got = fused_vg(kind, inp, k=k, row_block=row_block, vocab_block=vocab_block, backend=opd_backend)
    assert got[0].dtype == torch.float64 and got[0].shape == ()
    assert got[1].shape == inp.hidden.shape and got[2].shape == inp.weight.shape
    assert_matches(got, reference_vg(kind, inp, k=k), torch.float64)


FP32_CASES = CASES[:3] + [pytest.param((2, 3), 21, 7, 33, 64, 64, 21, id="B2T3-V21-big-blocks-k=V")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("positions, vocab, dim, dim_t, row_block, vocab_block, k", FP32_CASES)
def test_matches_reference_fp32(opd_backend, gen, kind, positions, vocab, dim, dim_t, row_block, vocab_block, k):
    inp = draw(gen, positions, vocab, dim, dim_t, dtype=torch.float32, mask="random")
    got = fused_vg(kind, inp, k=k, row_block=row_block, vocab_block=vocab_block, backend=opd_backend)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.float32
    assert_matches(got, reference_vg(kind, inp, k=k), torch.float32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("positions, vocab, dim, dim_t, row_block, vocab_block, k", [
    ((37,), 101, 48, 30, 8, 32, 7),
    ((2, 7), 101, 50, 70, 9, 17, 101),
    ((2, 9), 257, 24, 24, 100, 13, 40),
])
def test_chunked_larger_odd_sizes(gen, kind, positions, vocab, dim, dim_t, row_block, vocab_block, k):
    inp = draw(gen, positions, vocab, dim, dim_t, mask="random")
    got = fused_vg(kind, inp, k=k, row_block=row_block, vocab_block=vocab_block, backend="chunked")
    assert_matches(got, reference_vg(kind, inp, k=k), torch.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_tiling_does_not_change_the_result(gen, kind):
    """Every tile shape gives the same loss and gradients (to rounding)."""
    inp = draw(gen, (3, 6), 45, 17, 13, mask="random")
    base = fused_vg(kind, inp, k=6, row_block=1, vocab_block=1)
    for row_block, vocab_block in ((2, 4), (5, 44), (1000, 1000), (None, 9)):
        assert_matches(fused_vg(kind, inp, k=6, row_block=row_block, vocab_block=vocab_block), base, torch.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_inputs(gen, kind):
    inp = draw(gen, (4, 5), 31, 10, 14, mask="random")
    strided = torch.zeros(4, 5, 28, dtype=torch.float64)
    strided[..., ::2] = inp.teacher_hidden
    odd = replace(inp, hidden=inp.hidden.transpose(0, 1).contiguous().transpose(0, 1),
                  weight=inp.weight.T.contiguous().T, teacher_hidden=strided[..., ::2],
                  teacher_weight=inp.teacher_weight.T.contiguous().T)
    assert not any(t.is_contiguous() for t in (odd.hidden, odd.weight, odd.teacher_hidden, odd.teacher_weight))
    got = fused_vg(kind, odd, k=5, row_block=3, vocab_block=8)
    assert_matches(got, reference_vg(kind, inp, k=5), torch.float64)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("student, teacher", [(torch.float32, torch.float64), (torch.float64, torch.float32),
                                              (torch.float32, torch.bfloat16)])
def test_result_dtype_follows_the_reference(gen, kind, student, teacher):
    inp = draw(gen, (9,), 23, 8, 6, mask="random")
    mixed = replace(inp, hidden=inp.hidden.to(student), weight=inp.weight.to(student),
                    teacher_hidden=inp.teacher_hidden.to(teacher), teacher_weight=inp.teacher_weight.to(teacher))
    got = fused_vg(kind, mixed, k=3, row_block=4, vocab_block=5)
    want = reference_vg(kind, mixed, k=3)
    assert got[0].dtype == want[0].dtype
    assert got[1].dtype == student and got[2].dtype == student
    assert_matches(got, want, torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mask", ["none", "random"])
def test_masks_match_reference(opd_backend, gen, kind, mask):
    inp = draw(gen, (3, 7), 41, 19, 11, dtype=torch.float32, mask=mask)
    want = reference_vg(kind, inp)
    assert_matches(fused_vg(kind, inp, row_block=4, vocab_block=8, backend=opd_backend), want, torch.float32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.float32, torch.uint8])
def test_zero_one_masks_equal_bool_masks(gen, kind, dtype):
    inp = draw(gen, (3, 7), 41, 19, 11, mask="random")
    want = reference_vg(kind, inp)
    assert_matches(fused_vg(kind, replace(inp, mask=inp.mask.to(dtype)), row_block=4, vocab_block=8), want,
                   torch.float64)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("positions", [(10,), (2, 5)])
def test_all_false_mask_gives_exact_zero(opd_backend, gen, kind, positions):
    inp = draw(gen, positions, 19, 8, 5, mask="all_false")
    loss, d_hidden, d_weight = fused_vg(kind, inp, row_block=3, vocab_block=4, backend=opd_backend)
    assert loss.dtype == torch.float64 and loss.item() == 0.0
    assert torch.equal(d_hidden, torch.zeros_like(inp.hidden)) and torch.equal(d_weight, torch.zeros_like(inp.weight))
    assert reference_vg(kind, inp)[0].item() == 0.0
    f32 = inp.to(torch.float32)
    loss32, d_hidden32, d_weight32 = fused_vg(kind, f32, backend=opd_backend)
    assert loss32.dtype == torch.float32 and loss32.item() == 0.0
    assert not d_hidden32.any() and not d_weight32.any()


@pytest.mark.parametrize("kind", KINDS)
def test_garbage_under_the_mask_is_ignored(opd_backend, gen, kind):
    """Padding ids (-100) and non-finite hidden states at masked positions change nothing; the masked positions'
    hidden-state gradient is exactly zero."""
    inp = draw(gen, (4, 5), 33, 12, 10, dtype=torch.float32, mask="random")  # fp32: the triton kernels' path
    dead = ~inp.mask
    clean_tokens = inp.tokens.masked_fill(dead, 0)
    clean = replace(inp, tokens=clean_tokens)
    want = reference_vg(kind, clean)
    garbage = replace(inp, hidden=inp.hidden.masked_fill(dead[..., None], float("nan")),
                      teacher_hidden=inp.teacher_hidden.masked_fill(dead[..., None], float("inf")))
    assert (garbage.tokens[dead] == -100).all()
    for variant in (inp, clean, garbage):
        got = fused_vg(kind, variant, row_block=3, vocab_block=8, backend=opd_backend)
        assert torch.isfinite(got[0]) and torch.isfinite(got[1]).all() and torch.isfinite(got[2]).all()
        assert_matches(got, want, torch.float32)
        assert torch.equal(got[1][dead], torch.zeros_like(got[1][dead]))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("positions", [(0,), (2, 0)])
def test_no_positions_gives_zero(gen, kind, positions):
    inp = draw(gen, positions, 9, 5, 3)
    loss, d_hidden, d_weight = fused_vg(kind, inp, k=2)
    assert loss.item() == 0.0 and d_hidden.shape == inp.hidden.shape and not d_weight.any()
    assert reference_vg(kind, inp, k=2)[0].item() == 0.0


# ----------------------------------------------------------------------------------------------------------------
# Autograd behaviour
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_gradient_scaling_and_composition(gen, kind):
    inp = draw(gen, (2, 6), 29, 11, 7, mask="random")
    call = dict(row_block=5, vocab_block=6)
    _, g_hidden, g_weight = fused_vg(kind, inp, **call)

    def fused(h, w):
        return fused_loss(kind, h, w, inp.teacher_hidden, inp.teacher_weight, inp.tokens, inp.mask, **call)

    for c in (2.5, -0.75, 0.0):
        _, dh, dw = value_and_grads(lambda h, w: fused(h, w) * c, inp)
        torch.testing.assert_close(dh, c * g_hidden, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(dw, c * g_weight, rtol=1e-12, atol=1e-15)
    # a combination with another term in the same graph: 3 * fused + 0.5 * (|h|^2 + |w|^2)
    _, dh, dw = value_and_grads(lambda h, w: 3.0 * fused(h, w) + 0.5 * (h.square().sum() + w.square().sum()), inp)
    torch.testing.assert_close(dh, 3.0 * g_hidden + inp.hidden, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(dw, 3.0 * g_weight + inp.weight, rtol=1e-12, atol=1e-15)
    # a non-linear function of the loss: d(l^2) = 2 l dl
    loss, dh, dw = value_and_grads(lambda h, w: fused(h, w) ** 2, inp)
    value = fused(inp.hidden, inp.weight)
    torch.testing.assert_close(dh, 2 * value * g_hidden, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(dw, 2 * value * g_weight, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
def test_sum_with_other_losses(gen, kind):
    """Summed with an unrelated loss (its own parameter), and with a second fused loss on the same hidden states:
    each parameter gets the sum of the separate gradients; .backward() accumulates into .grad."""
    inp = draw(gen, (11,), 23, 9, 6, mask="random")
    other = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    h = inp.hidden.clone().requires_grad_(True)
    w = inp.weight.clone().requires_grad_(True)
    loss = fused_loss(kind, h, w, inp.teacher_hidden, inp.teacher_weight, inp.tokens, inp.mask, vocab_block=5)
    full = fused_full_vocab_opd_loss(h, w, inp.teacher_hidden, inp.teacher_weight, inp.mask, row_block=2)
    (loss + 0.25 * full + other.square().sum()).backward()
    _, g1_h, g1_w = fused_vg(kind, inp)
    _, g2_h, g2_w = fused_vg("full", inp)
    torch.testing.assert_close(h.grad, g1_h + 0.25 * g2_h, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(w.grad, g1_w + 0.25 * g2_w, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(other.grad, 2 * other.detach())
    # a second, fresh graph accumulates
    fused_loss(kind, h, w, inp.teacher_hidden, inp.teacher_weight, inp.tokens, inp.mask).backward()
    torch.testing.assert_close(h.grad, 2 * g1_h + 0.25 * g2_h, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(w.grad, 2 * g1_w + 0.25 * g2_w, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_requires_grad_combinations(gen, kind):
    inp = draw(gen, (2, 4), 21, 10, 8, mask="random")
    _, g_hidden, g_weight = reference_vg(kind, inp)
    args = (inp.teacher_hidden, inp.teacher_weight, inp.tokens, inp.mask)
    value = fused_loss(kind, inp.hidden, inp.weight, *args)
    assert not value.requires_grad and value.grad_fn is None  # nothing requires grad: a plain value

    h = inp.hidden.clone().requires_grad_(True)  # weight frozen: only hidden's gradient
    loss = fused_loss(kind, h, inp.weight, *args)
    assert torch.equal(loss.detach(), value)
    (d_hidden,) = torch.autograd.grad(loss, [h])
    assert_close(d_hidden, g_hidden, torch.float64, "d hidden, weight frozen")

    w = inp.weight.clone().requires_grad_(True)  # hidden not requiring grad: only weight's gradient
    (d_weight,) = torch.autograd.grad(fused_loss(kind, inp.hidden, w, *args), [w])
    assert_close(d_weight, g_weight, torch.float64, "d weight, hidden constant")

    with torch.no_grad():
        quiet = fused_loss(kind, h, w, *args)
    assert not quiet.requires_grad and torch.equal(quiet, value)


@pytest.mark.parametrize("kind", KINDS)
def test_teacher_is_a_constant(gen, kind):
    inp = draw(gen, (7,), 17, 6, 5)
    th = inp.teacher_hidden.clone().requires_grad_(True)
    tw = inp.teacher_weight.clone().requires_grad_(True)
    h = inp.hidden.clone().requires_grad_(True)
    loss = fused_loss(kind, h, inp.weight, th, tw, inp.tokens)
    d_h, d_th, d_tw = torch.autograd.grad(loss, [h, th, tw], allow_unused=True)
    assert d_th is None and d_tw is None
    assert_close(d_h, reference_vg(kind, inp)[1], torch.float64, "d hidden")


@pytest.mark.parametrize("kind", KINDS)
def test_second_backward_raises(gen, kind):
    inp = draw(gen, (6,), 13, 5, 4)
    h = inp.hidden.clone().requires_grad_(True)
    loss = fused_loss(kind, h, inp.weight.clone().requires_grad_(True), inp.teacher_hidden, inp.teacher_weight,
                      inp.tokens)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        loss.backward()


# ----------------------------------------------------------------------------------------------------------------
# Precision: bf16 no worse than the reference in bf16; autocast
# ----------------------------------------------------------------------------------------------------------------

def _rel_err(x: torch.Tensor, truth: torch.Tensor) -> float:
    return float((x.double() - truth).norm() / truth.norm().clamp_min(1e-300))


def _untied_topk_mask(inp: Inputs, k: int) -> torch.Tensor:
    """Positions where the bf16 student logits' top-k is unambiguous and equals the exact (fp64) top-k: the k-th and
    (k+1)-th bf16 logits differ and the id sets agree. Elsewhere a comparison with the fp64 ground truth would
    compare different tokens."""
    z16 = (inp.hidden @ inp.weight.T).float()  # as the reference and the fused compute it: bf16 matmul, then fp32
    z64 = inp.hidden.double() @ inp.weight.double().T
    vocab = z16.shape[-1]
    if k == vocab:
        return torch.ones(z16.shape[:-1], dtype=torch.bool)
    top16 = z16.topk(k + 1, dim=-1)
    gap_ok = top16.values[..., k - 1] > top16.values[..., k]
    ids16 = top16.indices[..., :k].sort(-1).values
    ids64 = z64.topk(k, dim=-1).indices.sort(-1).values
    return gap_ok & (ids16 == ids64).all(-1)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_no_worse_than_reference(opd_backend, gen, kind):
    """DESIGN.md's rule: with bf16 hidden states and weights, the fused error against an fp64 ground truth (the same
    bf16 inputs, upcast) is no worse than the reference's own error in bf16 (bf16 logits from a bf16 matmul), plus a
    small tolerance; for the value and both gradients."""
    k = 4
    inp = draw(gen, (4, 6), 64, 40, 24, dtype=torch.bfloat16, mask="random")
    if kind == "topk":  # rows where bf16 rounding changes or ties the top-k set would not be a fair comparison
        fair = _untied_topk_mask(inp, k) & inp.mask
        assert int(fair.sum()) >= 8, "too few untied rows: choose another scale"
        inp = replace(inp, mask=fair)
    truth = reference_vg(kind, inp.to(torch.float64), k=k)
    ref = reference_vg(kind, inp, k=k)
    got = fused_vg(kind, inp, k=k, row_block=5, vocab_block=16, backend=opd_backend)
    if kind == "topk":
        live = inp.mask
        fused_ids = lm_head_stats(inp.hidden, inp.weight, topk=k, backend=opd_backend).topk_ids[live].sort(-1).values
        exact_ids = (inp.hidden.double() @ inp.weight.double().T).topk(k, -1).indices[live].sort(-1).values
        assert torch.equal(fused_ids, exact_ids)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.bfloat16
    err_ref, err_got = abs(float(ref[0]) - float(truth[0])), abs(float(got[0]) - float(truth[0]))
    assert err_got <= err_ref + 1e-3 * abs(float(truth[0])) + 1e-6, ("loss", err_got, err_ref)
    for name, i in (("d hidden", 1), ("d weight", 2)):
        err_ref, err_got = _rel_err(ref[i], truth[i]), _rel_err(got[i], truth[i])
        assert err_got <= err_ref + 1e-3, (name, err_got, err_ref)  # ~1/4 of bf16's relative spacing 2^-8


@pytest.mark.parametrize("kind", KINDS)
def test_autocast_cpu_bf16(gen, kind):
    """Under CPU autocast the LM-head products run in bf16 (as the model's own head would); the loss stays float32
    and close to the float32 reference."""
    inp = draw(gen, (3, 5), 48, 24, 16, dtype=torch.float32, mask="random")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused_vg(kind, inp, row_block=4, vocab_block=16)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.float32
    want = reference_vg(kind, inp)
    torch.testing.assert_close(got[0], want[0], rtol=5e-2, atol=2e-2)
    for i in (1, 2):
        assert _rel_err(got[i], want[i].double()) < 5e-2
    # the products were taken in bf16: the same as the fused loss on bf16-rounded inputs, not as in float32
    rounded = fused_vg(kind, inp.to(torch.bfloat16), row_block=4, vocab_block=16)
    torch.testing.assert_close(got[0], rounded[0], rtol=1e-5, atol=1e-6)
    assert not torch.equal(got[0], fused_vg(kind, inp, row_block=4, vocab_block=16)[0])


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------

FUNC_NAMES = {"sampled": "fused_sampled_token_opd_loss", "topk": "fused_topk_opd_loss",
              "full": "fused_full_vocab_opd_loss"}


def _raises(kind: str, exc: type[Exception], arg: str, inp: Inputs, **kwargs) -> None:
    """The call fails with `exc`, naming the function and the argument."""
    call = dict(hidden=inp.hidden, weight=inp.weight, teacher_hidden=inp.teacher_hidden,
                teacher_weight=inp.teacher_weight, tokens=inp.tokens, mask=inp.mask)
    call.update({key: kwargs.pop(key) for key in list(kwargs) if key in call})
    with pytest.raises(exc, match=f"{FUNC_NAMES[kind]}: `{arg}`"):
        fused_loss(kind, *call.values(), **kwargs)


@pytest.fixture
def small(gen) -> Inputs:
    return draw(gen, (2, 3), 11, 6, 5, mask="random")


@pytest.mark.parametrize("kind", KINDS)
def test_validation_hidden_and_heads(kind, small):
    inp = small
    _raises(kind, ValueError, "hidden", inp, hidden=inp.hidden[0, 0])
    _raises(kind, ValueError, "hidden", inp, hidden=inp.hidden[None])
    _raises(kind, ValueError, "hidden", inp, hidden=inp.hidden[..., :0])
    _raises(kind, TypeError, "hidden", inp, hidden=inp.hidden.tolist())
    _raises(kind, TypeError, "hidden", inp, hidden=inp.hidden.to(torch.int64))
    _raises(kind, ValueError, "weight", inp, weight=inp.weight[:, :-1])
    _raises(kind, ValueError, "weight", inp, weight=inp.weight[None])
    _raises(kind, ValueError, "weight", inp, weight=inp.weight[:0])
    _raises(kind, TypeError, "weight", inp, weight=inp.weight.to(torch.int32))
    _raises(kind, ValueError, "teacher_hidden", inp, teacher_hidden=inp.teacher_hidden[:, :-1])
    _raises(kind, ValueError, "teacher_hidden", inp, teacher_hidden=inp.teacher_hidden.reshape(6, 5))
    _raises(kind, ValueError, "teacher_hidden", inp, teacher_hidden=inp.teacher_hidden[..., :0])
    _raises(kind, TypeError, "teacher_hidden", inp, teacher_hidden=None)
    _raises(kind, ValueError, "teacher_weight", inp, teacher_weight=inp.teacher_weight[:0])  # another V_t is fine
    _raises(kind, ValueError, "teacher_weight", inp, teacher_weight=inp.teacher_weight[:, :-1])
    _raises(kind, TypeError, "teacher_weight", inp, teacher_weight=inp.teacher_weight.to(torch.int64))


@pytest.mark.parametrize("kind", KINDS)
def test_validation_mask(kind, small):
    inp = small
    _raises(kind, ValueError, "mask", inp, mask=inp.mask.reshape(6))
    _raises(kind, ValueError, "mask", inp, mask=inp.mask[:, :-1])
    _raises(kind, TypeError, "mask", inp, mask=inp.mask.tolist())
    _raises(kind, ValueError, "mask", inp, mask=inp.mask.to(torch.int64) * 2)
    _raises(kind, ValueError, "mask", inp, mask=inp.mask.float() * 0.5)


def test_validation_tokens(small):
    inp = small
    live = inp.mask.nonzero()[0].tolist()
    dead = (~inp.mask).nonzero()[0].tolist()
    _raises("sampled", TypeError, "tokens", inp, tokens=inp.tokens.to(torch.int32))
    _raises("sampled", TypeError, "tokens", inp, tokens=inp.tokens.to(torch.float64))
    _raises("sampled", TypeError, "tokens", inp, tokens=None)
    _raises("sampled", ValueError, "tokens", inp, tokens=inp.tokens.reshape(6))
    _raises("sampled", ValueError, "tokens", inp, tokens=inp.tokens[:, :-1])
    for value in (-1, -100, 11, 1000):
        bad = inp.tokens.clone()
        bad[live[0], live[1]] = value
        _raises("sampled", ValueError, "tokens", inp, tokens=bad)
        _raises("sampled", ValueError, "tokens", inp, tokens=bad.masked_fill(~inp.mask, 0), mask=None)
        padded = inp.tokens.clone()
        padded[dead[0], dead[1]] = value  # under the mask: padding, accepted
        fused_loss("sampled", inp.hidden, inp.weight, inp.teacher_hidden, inp.teacher_weight, padded, inp.mask)


def test_validation_k(small):
    inp = small
    for bad in (0, -1, 12, True, False, 2.0, "4", None):
        _raises("topk", ValueError, "k", inp, k=bad)
    for ok in (1, 11):
        fused_loss("topk", inp.hidden, inp.weight, inp.teacher_hidden, inp.teacher_weight, None, inp.mask, k=ok)


@pytest.mark.parametrize("kind", KINDS)
def test_validation_blocks_and_backend(kind, small):
    inp = small
    for arg in ("row_block", "vocab_block"):
        for bad in (0, -3, True, False, 2.5, "8"):
            _raises(kind, ValueError, arg, inp, **{arg: bad})
    for bad in ("cuda", "cpu", "", "tritonn"):
        _raises(kind, ValueError, "backend", inp, backend=bad)
    with pytest.raises((ValueError, TypeError), match="`backend`"):
        fused_loss(kind, inp.hidden, inp.weight, inp.teacher_hidden, inp.teacher_weight, inp.tokens, inp.mask,
                   backend=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed devices need a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_validation_mixed_devices(kind, small):
    inp = replace(small, hidden=small.hidden.cuda())
    _raises(kind, ValueError, "weight", inp)
    inp = replace(small, hidden=small.hidden.cuda(), weight=small.weight.cuda())
    _raises(kind, ValueError, "teacher_hidden", inp)


# ----------------------------------------------------------------------------------------------------------------
# Backend seam
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_auto_and_environment_backend(monkeypatch, gen, kind):
    inp = draw(gen, (7,), 19, 6, 5)
    want = fused_vg(kind, inp, backend="chunked")
    monkeypatch.setenv(_passes.ENV_VAR, "chunked")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_matches(fused_vg(kind, inp), want, torch.float64)
        assert_matches(fused_vg(kind, inp, backend="auto"), want, torch.float64)  # on CPU: chunked, no warning
        assert_matches(fused_vg(kind, inp, backend=" Chunked "), want, torch.float64)
    monkeypatch.setenv(_passes.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=_passes.ENV_VAR):
        fused_vg(kind, inp)
    assert_matches(fused_vg(kind, inp, backend="chunked"), want, torch.float64)  # the argument wins


def simulate_unavailable_triton(monkeypatch) -> None:
    real = _passes.opd_unavailable_reason
    monkeypatch.setattr(_passes, "opd_unavailable_reason",
                        lambda backend, device: "simulated" if backend == "triton" else real(backend, device))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["real", "simulated"])
def test_unavailable_triton_warns_and_falls_back(monkeypatch, gen, kind, how):
    if how == "simulated":
        simulate_unavailable_triton(monkeypatch)
    elif _passes.opd_unavailable_reason("triton", torch.device("cpu")) is None:
        pytest.skip("the triton OPD backend can run here: there is no fallback to test (see the simulated case)")
    monkeypatch.setattr(_passes, "_WARNED", set())
    inp = draw(gen, (2, 5), 23, 8, 7, mask="random")
    want = fused_vg(kind, inp, row_block=3, vocab_block=7, backend="chunked")
    with pytest.warns(RuntimeWarning, match="falling back to 'chunked'"):
        got = fused_vg(kind, inp, row_block=3, vocab_block=7, backend="triton")
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    with warnings.catch_warnings():  # one warning per process, not per call
        warnings.simplefilter("error")
        fused_vg(kind, inp, backend="triton")


# ----------------------------------------------------------------------------------------------------------------
# Memory: the [N, V] logits are never materialised
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,row_block", [("chunked", 64), ("rowwise", 16)])
@pytest.mark.parametrize("kind", KINDS)
def test_never_materialises_the_logits(gen, kind, backend, row_block):
    """Forward + backward delta-peak at N = 256, V = 4096, d = 32 (one fp32 [N, V] tensor: 4 MiB) with 64 x 512
    tiles (chunked) or 16-row whole-vocabulary chunks (rowwise, a few of them live at once): the fused losses stay
    well below one logits tensor (their floor is the [V, d] weight gradient, 0.5 MiB), the naive reference path
    (materialised logits) above it."""
    n, vocab, dim = 256, 4096, 32
    inp = draw(gen, (n,), vocab, dim, dim, dtype=torch.float32)
    logits_bytes = n * vocab * 4
    h = inp.hidden.clone().requires_grad_(True)
    w = inp.weight.clone().requires_grad_(True)
    args = (inp.teacher_hidden, inp.teacher_weight, inp.tokens, None)

    def fused():
        loss = fused_loss(kind, h, w, *args, k=16, row_block=row_block, vocab_block=512, backend=backend)
        return torch.autograd.grad(loss, [h, w])

    def naive():
        return torch.autograd.grad(reference_loss(kind, h, w, *args, k=16), [h, w])

    assert_lighter_than_the_logits(fused, naive, logits_bytes)
