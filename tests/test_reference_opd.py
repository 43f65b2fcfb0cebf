"""Tests of the reference on-policy distillation losses (oprd_kernels.reference.opd), PAPER_NOTES §1.

Every value and gradient is compared with an independent brute force written below as explicit Python loops over
positions and vocabulary entries in float64 (`math.log` / `math.exp`), never with the library's own tensor code.

Note on gradcheck: the sampled-token and top-k losses are surrogates whose reward / weights / advantages are
*detached* but still numerically depend on the student logits, so finite differences of the raw loss measure the
total derivative, not the surrogate gradient. Those two losses are therefore checked (a) against central differences
of a brute-force surrogate whose detached parts are frozen at the evaluation point, and (b) against central
differences of the raw library loss, which must differ from the surrogate gradient by exactly the derivative of the
detached parts (proving they are detached). The full-vocabulary loss is a genuine function of the logits and goes
through torch.autograd.gradcheck directly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oprd_kernels.reference import full_vocab_opd_loss, sampled_token_opd_loss, topk_opd_loss

B, T = 3, 5
N = B * T
SEEDS = [0, 1, 2]
VOCABS = [11, 13]


# ----------------------------------------------------------------------------------------------------------------
# Independent brute force (pure Python, float64)
# ----------------------------------------------------------------------------------------------------------------

def _log_softmax_row(row: list[float]) -> list[float]:
    top = max(row)
    total = 0.0
    for x in row:
        total += math.exp(x - top)
    lse = top + math.log(total)
    return [x - lse for x in row]


def _rows(x: torch.Tensor) -> list[list[float]]:
    return x.detach().to(torch.float64).reshape(-1, x.shape[-1]).tolist()


def _flat_mask(mask, n: int) -> list[int]:
    if mask is None:
        return [1] * n
    return [int(bool(v)) for v in mask.reshape(-1).tolist()]


def bf_sampled(student, teacher, tokens, mask=None):
    """loss = sum_t m_t * (-(lq_t(y) - lp_t(y)) * lp_t(y)) / M; grad_t = -(r_t / M) (onehot(y_t) - p_t)."""
    s, q = _rows(student), _rows(teacher)
    y = tokens.reshape(-1).tolist()
    m = _flat_mask(mask, len(s))
    vocab = len(s[0])
    count = sum(m)
    loss = 0.0
    grad = [[0.0] * vocab for _ in s]
    for t in range(len(s)):
        if not m[t]:
            continue
        lp = _log_softmax_row(s[t])
        lq = _log_softmax_row(q[t])
        r = lq[y[t]] - lp[y[t]]
        loss += -r * lp[y[t]]
        for v in range(vocab):
            onehot = 1.0 if v == y[t] else 0.0
            grad[t][v] = -(r / count) * (onehot - math.exp(lp[v]))
    return (loss / count if count else 0.0), np.array(grad)


def bf_sampled_total_derivative(student, teacher, tokens, mask=None):
    """d/dz of the same loss if the reward were NOT detached: -(lq - 2 lp) / M * (onehot - p)."""
    s, q = _rows(student), _rows(teacher)
    y = tokens.reshape(-1).tolist()
    m = _flat_mask(mask, len(s))
    vocab = len(s[0])
    count = sum(m)
    grad = [[0.0] * vocab for _ in s]
    for t in range(len(s)):
        if not m[t]:
            continue
        lp = _log_softmax_row(s[t])
        lq = _log_softmax_row(q[t])
        coef = -(lq[y[t]] - 2.0 * lp[y[t]]) / count
        for v in range(vocab):
            grad[t][v] = coef * ((1.0 if v == y[t] else 0.0) - math.exp(lp[v]))
    return np.array(grad)


def _topk_ids(row: list[float], k: int) -> list[int]:
    return sorted(range(len(row)), key=lambda v: row[v], reverse=True)[:k]


def bf_topk(student, teacher, k, mask=None):
    """ids = k largest student logits; lp, lq over the full vocabulary; w = student probs renormalised on ids;
    loss_t = sum_j w_j (lp_j - lq_j) lp_j; grad_t = sum_j w_j (lp_j - lq_j) (onehot(id_j) - p_t) / M."""
    s, q = _rows(student), _rows(teacher)
    m = _flat_mask(mask, len(s))
    vocab = len(s[0])
    count = sum(m)
    loss = 0.0
    grad = [[0.0] * vocab for _ in s]
    for t in range(len(s)):
        if not m[t]:
            continue
        lp = _log_softmax_row(s[t])
        lq = _log_softmax_row(q[t])
        ids = _topk_ids(s[t], k)
        z = sum(math.exp(lp[i]) for i in ids)
        for i in ids:
            w = math.exp(lp[i]) / z
            adv = w * (lp[i] - lq[i])
            loss += adv * lp[i]
            for v in range(vocab):
                grad[t][v] += adv / count * ((1.0 if v == i else 0.0) - math.exp(lp[v]))
    return (loss / count if count else 0.0), np.array(grad)


def bf_full(student, teacher, mask=None):
    """loss = token-mean of KL(p_t || q_t); grad_t = p_t (lp_t - lq_t - KL_t) / M."""
    s, q = _rows(student), _rows(teacher)
    m = _flat_mask(mask, len(s))
    vocab = len(s[0])
    count = sum(m)
    loss = 0.0
    grad = [[0.0] * vocab for _ in s]
    for t in range(len(s)):
        if not m[t]:
            continue
        lp = _log_softmax_row(s[t])
        lq = _log_softmax_row(q[t])
        kl = 0.0
        for v in range(vocab):
            kl += math.exp(lp[v]) * (lp[v] - lq[v])
        loss += kl
        for v in range(vocab):
            grad[t][v] = math.exp(lp[v]) * (lp[v] - lq[v] - kl) / count
    return (loss / count if count else 0.0), np.array(grad)


def central_differences(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Numerical gradient of a scalar function of a float64 array, one entry at a time."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        idx = it.multi_index
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        grad[idx] = (f(xp) - f(xm)) / (2 * h)
    return grad


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------

def make_inputs(seed: int, vocab: int, shape=(B, T), dtype=torch.float64, scale: float = 3.0):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(*shape, vocab, generator=gen, dtype=torch.float64) * scale
    teacher = torch.randn(*shape, vocab, generator=gen, dtype=torch.float64) * scale
    tokens = torch.randint(0, vocab, shape, generator=gen, dtype=torch.int64)
    mask = torch.rand(shape, generator=gen) < 0.6
    mask.reshape(-1)[0] = True   # never empty
    mask.reshape(-1)[-1] = False  # never full
    return student.to(dtype), teacher.to(dtype), tokens, mask


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def loss_and_grad(fn, student, *args, **kwargs):
    s = leaf(student)
    loss = fn(s, *args, **kwargs)
    loss.backward()
    return loss, s.grad


def call(name, student, teacher, tokens, mask, k=3):
    """Uniform call of the three losses (tokens ignored except for sampled-token)."""
    if name == "sampled":
        return sampled_token_opd_loss(student, teacher, tokens, mask)
    if name == "topk":
        return topk_opd_loss(student, teacher, mask, k=k)
    return full_vocab_opd_loss(student, teacher, mask)


def brute(name, student, teacher, tokens, mask, k=3):
    if name == "sampled":
        return bf_sampled(student, teacher, tokens, mask)
    if name == "topk":
        return bf_topk(student, teacher, k, mask)
    return bf_full(student, teacher, mask)


LOSSES = ["sampled", "topk", "full"]
FUNC_NAMES = {"sampled": "sampled_token_opd_loss", "topk": "topk_opd_loss", "full": "full_vocab_opd_loss"}


def assert_close_np(actual: torch.Tensor, expected, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(actual.detach().to(torch.float64).reshape(np.shape(expected)).numpy(),
                               expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------------------------
# sampled_token_opd_loss
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("seed", SEEDS)
def test_sampled_value_and_gradient_match_brute_force(seed, vocab):
    student, teacher, tokens, mask = make_inputs(seed, vocab)
    loss, grad = loss_and_grad(sampled_token_opd_loss, student, teacher, tokens, mask)
    want_loss, want_grad = bf_sampled(student, teacher, tokens, mask)
    assert loss.dtype == torch.float64 and loss.dim() == 0
    assert loss.item() == pytest.approx(want_loss, rel=1e-11, abs=1e-12)
    assert_close_np(grad, want_grad)
    # masked positions receive no gradient at all
    assert torch.all(grad[~mask] == 0)


@pytest.mark.parametrize("seed", SEEDS)
def test_sampled_reward_is_detached(seed):
    vocab = 11
    student, teacher, tokens, mask = make_inputs(seed, vocab, shape=(2, 3))
    _, grad = loss_and_grad(sampled_token_opd_loss, student, teacher, tokens, mask)
    surrogate = bf_sampled(student, teacher, tokens, mask)[1]
    undetached = bf_sampled_total_derivative(student, teacher, tokens, mask)
    assert np.abs(surrogate - undetached).max() > 1e-3  # the two hypotheses are distinguishable on this data
    assert_close_np(grad, surrogate)
    # The forward value's total derivative (finite differences of the raw library loss) includes d r / d z; it must
    # equal the undetached formula, and therefore differ from the gradient autograd reports.
    shape = student.shape

    def raw(z: np.ndarray) -> float:
        return sampled_token_opd_loss(torch.from_numpy(z).reshape(shape), teacher, tokens, mask).item()

    fd = central_differences(raw, student.numpy().copy())
    np.testing.assert_allclose(fd.reshape(undetached.shape), undetached, rtol=1e-5, atol=1e-7)
    assert not torch.autograd.gradcheck(lambda z: sampled_token_opd_loss(z, teacher, tokens, mask),
                                        (leaf(student),), raise_exception=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_sampled_gradient_is_gradient_of_frozen_surrogate(seed):
    """Finite differences of -sg(r) * log p(y) with r frozen at the evaluation point equal the autograd gradient."""
    vocab = 11
    student, teacher, tokens, mask = make_inputs(seed, vocab, shape=(2, 3))
    _, grad = loss_and_grad(sampled_token_opd_loss, student, teacher, tokens, mask)
    s0, q = _rows(student), _rows(teacher)
    y = tokens.reshape(-1).tolist()
    m = _flat_mask(mask, len(s0))
    rewards = [_log_softmax_row(q[t])[y[t]] - _log_softmax_row(s0[t])[y[t]] for t in range(len(s0))]

    def frozen(z: np.ndarray) -> float:
        rows = z.reshape(-1, vocab).tolist()
        total = 0.0
        for t in range(len(rows)):
            if m[t]:
                total += -rewards[t] * _log_softmax_row(rows[t])[y[t]]
        return total / sum(m)

    fd = central_differences(frozen, student.numpy().copy())
    np.testing.assert_allclose(grad.numpy(), fd, rtol=1e-5, atol=1e-8)


def test_sampled_reward_sign_and_zero_when_teacher_equals_student():
    """Teacher == student gives reward 0 everywhere: loss 0 and gradient 0 (not a KL-to-self artefact)."""
    student, _, tokens, mask = make_inputs(7, 13)
    loss, grad = loss_and_grad(sampled_token_opd_loss, student, student.clone(), tokens, mask)
    assert loss.item() == pytest.approx(0.0, abs=1e-14)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-14)


# ----------------------------------------------------------------------------------------------------------------
# topk_opd_loss
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 3, "V"])
def test_topk_value_and_gradient_match_brute_force(seed, vocab, k):
    k = vocab if k == "V" else k
    student, teacher, _, mask = make_inputs(seed, vocab)
    loss, grad = loss_and_grad(topk_opd_loss, student, teacher, mask, k=k)
    want_loss, want_grad = bf_topk(student, teacher, k, mask)
    assert loss.dtype == torch.float64 and loss.dim() == 0
    assert loss.item() == pytest.approx(want_loss, rel=1e-11, abs=1e-12)
    assert_close_np(grad, want_grad)
    assert torch.all(grad[~mask] == 0)


@pytest.mark.parametrize("seed", SEEDS)
def test_topk_k1_is_sampled_token_on_the_student_argmax(seed):
    """k = 1: w = 1 and the only id is the student argmax, i.e. sampled-token OPD on the greedy token."""
    vocab = 13
    student, teacher, _, mask = make_inputs(seed, vocab)
    greedy = student.argmax(-1)
    l1, g1 = loss_and_grad(topk_opd_loss, student, teacher, mask, k=1)
    l2, g2 = loss_and_grad(sampled_token_opd_loss, student, teacher, greedy, mask)
    torch.testing.assert_close(l1, l2, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", SEEDS)
def test_topk_k_equals_vocab_is_score_function_not_kl(seed):
    """k = V: weights are the full student distribution. The value is the score-function surrogate
    sum_v p (lp - lq) lp, not KL(p||q); its gradient (E_p[(lp - lq) grad lp]) happens to equal the analytic
    KL gradient, because E_p[grad lp] = 0."""
    vocab = 11
    student, teacher, _, mask = make_inputs(seed, vocab)
    lk, gk = loss_and_grad(topk_opd_loss, student, teacher, mask, k=vocab)
    lf, gf = loss_and_grad(full_vocab_opd_loss, student, teacher, mask)
    assert abs(lk.item() - lf.item()) > 1e-3
    torch.testing.assert_close(gk, gf, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_topk_log_ratio_is_not_renormalised_on_topk(seed):
    """The brute force (full-vocabulary lp, lq) must be distinguishable from the paper's Eq. 5 renormalised form."""
    vocab, k = 13, 3
    student, teacher, _, mask = make_inputs(seed, vocab)
    loss = topk_opd_loss(student, teacher, mask, k=k).item()
    s, q = _rows(student), _rows(teacher)
    m = _flat_mask(mask, len(s))
    renorm = 0.0
    for t in range(len(s)):
        if not m[t]:
            continue
        ids = _topk_ids(s[t], k)
        lp = _log_softmax_row([s[t][i] for i in ids])
        lq = _log_softmax_row([q[t][i] for i in ids])
        renorm += sum(math.exp(a) * (a - b) * a for a, b in zip(lp, lq))
    renorm /= sum(m)
    assert abs(loss - renorm) > 1e-3
    assert loss == pytest.approx(bf_topk(student, teacher, k, mask)[0], rel=1e-11)


def _min_boundary_gap(student: torch.Tensor, k: int) -> float:
    gaps = []
    for row in _rows(student):
        srt = sorted(row, reverse=True)
        gaps.append(min(srt[i] - srt[i + 1] for i in range(len(srt) - 1)))
    return min(gaps)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 3, 11])
def test_topk_gradient_is_gradient_of_frozen_surrogate(seed, k):
    """Finite differences of sum_j sg(w_j (lp_j - lq_j)) lp_j (ids, weights, advantages frozen) = autograd."""
    vocab = 11
    student, teacher, _, mask = make_inputs(seed, vocab, shape=(2, 3))
    assert _min_boundary_gap(student, k) > 1e-4  # perturbations of 1e-6 cannot change the top-k set
    _, grad = loss_and_grad(topk_opd_loss, student, teacher, mask, k=k)
    s0, q = _rows(student), _rows(teacher)
    m = _flat_mask(mask, len(s0))
    frozen_ids, frozen_adv = [], []
    for t in range(len(s0)):
        lp, lq = _log_softmax_row(s0[t]), _log_softmax_row(q[t])
        ids = _topk_ids(s0[t], k)
        z = sum(math.exp(lp[i]) for i in ids)
        frozen_ids.append(ids)
        frozen_adv.append([math.exp(lp[i]) / z * (lp[i] - lq[i]) for i in ids])

    def frozen(x: np.ndarray) -> float:
        rows = x.reshape(-1, vocab).tolist()
        total = 0.0
        for t in range(len(rows)):
            if m[t]:
                lp = _log_softmax_row(rows[t])
                total += sum(a * lp[i] for a, i in zip(frozen_adv[t], frozen_ids[t]))
        return total / sum(m)

    fd = central_differences(frozen, student.numpy().copy())
    np.testing.assert_allclose(grad.numpy(), fd, rtol=1e-5, atol=1e-8)

    # ... whereas the raw library forward's total derivative differs (weights/advantages are detached).
    shape = student.shape

    def raw(x: np.ndarray) -> float:
        return topk_opd_loss(torch.from_numpy(x).reshape(shape), teacher, mask, k=k).item()

    fd_raw = central_differences(raw, student.numpy().copy())
    assert np.abs(fd_raw - grad.numpy()).max() > 1e-3
    assert not torch.autograd.gradcheck(lambda z: topk_opd_loss(z, teacher, mask, k=k), (leaf(student),),
                                        raise_exception=False)


@pytest.mark.parametrize("bad_k", [0, -1, 12, 2.0, 3.5, True, False, None, "3"])
def test_topk_invalid_k_raises(bad_k):
    student, teacher, _, mask = make_inputs(0, 11)
    with pytest.raises(ValueError, match=r"topk_opd_loss: `k`"):
        topk_opd_loss(student, teacher, mask, k=bad_k)


def test_topk_k_is_keyword_only():
    student, teacher, _, mask = make_inputs(0, 11)
    with pytest.raises(TypeError):
        topk_opd_loss(student, teacher, mask, 3)  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------------------------
# full_vocab_opd_loss
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("seed", SEEDS)
def test_full_value_and_gradient_match_brute_force(seed, vocab):
    student, teacher, _, mask = make_inputs(seed, vocab)
    loss, grad = loss_and_grad(full_vocab_opd_loss, student, teacher, mask)
    want_loss, want_grad = bf_full(student, teacher, mask)
    assert loss.dtype == torch.float64 and loss.dim() == 0
    assert want_loss > 0
    assert loss.item() == pytest.approx(want_loss, rel=1e-11, abs=1e-12)
    assert_close_np(grad, want_grad)
    assert torch.all(grad[~mask] == 0)


@pytest.mark.parametrize("seed", SEEDS)
def test_full_is_zero_for_identical_distributions(seed):
    """KL(p||p) = 0; a constant shift of the teacher logits does not change q."""
    student, _, _, mask = make_inputs(seed, 13)
    shifted = student + torch.randn(B, T, 1, dtype=torch.float64) * 5
    loss, grad = loss_and_grad(full_vocab_opd_loss, student, shifted, mask)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("with_mask", [False, True])
def test_full_gradcheck(seed, with_mask):
    student, teacher, _, mask = make_inputs(seed, 11, shape=(2, 3))
    m = mask if with_mask else None
    assert torch.autograd.gradcheck(lambda z: full_vocab_opd_loss(z, teacher, m), (leaf(student),))
    assert torch.autograd.gradgradcheck(lambda z: full_vocab_opd_loss(z, teacher, m), (leaf(student),))


# ----------------------------------------------------------------------------------------------------------------
# Properties shared by the three losses
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LOSSES)
def test_teacher_gets_no_gradient(name):
    student, teacher, tokens, mask = make_inputs(3, 11)
    s, q = leaf(student), leaf(teacher)
    call(name, s, q, tokens, mask).backward()
    assert s.grad is not None and torch.any(s.grad != 0)
    assert q.grad is None or torch.all(q.grad == 0)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("seed", SEEDS)
def test_batched_and_flat_shapes_agree(name, seed):
    student, teacher, tokens, mask = make_inputs(seed, 13)
    l3, g3 = loss_and_grad(lambda z: call(name, z, teacher, tokens, mask), student)
    flat = (student.reshape(N, -1), teacher.reshape(N, -1), tokens.reshape(N), mask.reshape(N))
    l2, g2 = loss_and_grad(lambda z: call(name, z, *flat[1:]), flat[0])
    torch.testing.assert_close(l3, l2, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(g3.reshape(N, -1), g2, rtol=1e-13, atol=1e-14)
    assert g3.shape == student.shape and g2.shape == flat[0].shape


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("seed", SEEDS)
def test_mask_dtypes_agree(name, seed):
    student, teacher, tokens, mask = make_inputs(seed, 11)
    ref_l, ref_g = loss_and_grad(lambda z: call(name, z, teacher, tokens, mask), student)
    want_l, _ = brute(name, student, teacher, tokens, mask)
    assert ref_l.item() == pytest.approx(want_l, rel=1e-11, abs=1e-12)
    for m in (mask.float(), mask.double(), mask.to(torch.int64), mask.to(torch.int32), mask.to(torch.uint8),
              mask.to(torch.bfloat16)):
        l, g = loss_and_grad(lambda z: call(name, z, teacher, tokens, m), student)
        torch.testing.assert_close(l, ref_l, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(g, ref_g, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("seed", SEEDS)
def test_mask_none_equals_all_ones(name, seed):
    student, teacher, tokens, _ = make_inputs(seed, 13)
    l0, g0 = loss_and_grad(lambda z: call(name, z, teacher, tokens, None), student)
    l1, g1 = loss_and_grad(lambda z: call(name, z, teacher, tokens, torch.ones(B, T, dtype=torch.bool)), student)
    torch.testing.assert_close(l0, l1, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(g0, g1, rtol=1e-13, atol=1e-14)
    want_l, want_g = brute(name, student, teacher, tokens, None)
    assert l0.item() == pytest.approx(want_l, rel=1e-11, abs=1e-12)
    assert_close_np(g0, want_g)


@pytest.mark.parametrize("name", LOSSES)
def test_masked_positions_do_not_influence_the_loss(name):
    student, teacher, tokens, mask = make_inputs(5, 11)
    other_s = student.clone()
    other_q = teacher.clone()
    other_t = tokens.clone()
    other_s[~mask] = torch.randn_like(other_s[~mask]) * 10
    other_q[~mask] = torch.randn_like(other_q[~mask]) * 10
    other_t[~mask] = (other_t[~mask] + 1) % 11
    l0, g0 = loss_and_grad(lambda z: call(name, z, teacher, tokens, mask), student)
    l1, g1 = loss_and_grad(lambda z: call(name, z, other_q, other_t, mask), other_s)
    torch.testing.assert_close(l0, l1, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(g0, g1, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("shape", [(B, T), (N,)])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32, torch.int64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_fully_masked_is_exactly_zero_with_zero_gradient(name, shape, mask_dtype, dtype):
    student, teacher, tokens, _ = make_inputs(4, 11, shape=shape, dtype=dtype)
    mask = torch.zeros(shape, dtype=mask_dtype)
    s = leaf(student)
    loss = call(name, s, teacher, tokens, mask)
    assert loss.item() == 0.0
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and torch.all(s.grad == 0)


@pytest.mark.parametrize("name", LOSSES)
def test_empty_positions_give_zero(name):
    """N = 0 positions (empty batch) with mask=None: 0, not NaN."""
    student = torch.zeros(0, 11, dtype=torch.float64, requires_grad=True)
    teacher = torch.zeros(0, 11, dtype=torch.float64)
    tokens = torch.zeros(0, dtype=torch.int64)
    loss = call(name, student, teacher, tokens, None)
    assert loss.item() == 0.0
    loss.backward()
    assert student.grad is not None and student.grad.shape == (0, 11)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype,expected", [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                            (torch.bfloat16, torch.float32), (torch.float16, torch.float32)])
def test_result_dtype(name, dtype, expected):
    student, teacher, tokens, mask = make_inputs(1, 11, dtype=dtype)
    s = leaf(student)
    loss = call(name, s, teacher, tokens, mask)
    assert loss.dtype == expected and loss.dim() == 0
    loss.backward()
    assert s.grad.dtype == dtype and torch.isfinite(s.grad).all()


def _bf16_inputs_without_ties(seed: int, vocab: int):
    """bf16-rounded inputs whose student rows have no ties (so the top-k set is well defined after rounding)."""
    for attempt in range(100):
        student, teacher, tokens, mask = make_inputs(seed * 1000 + attempt, vocab)
        rounded = student.to(torch.bfloat16)
        if all(len(set(r)) == len(r) for r in _rows(rounded)):
            return student, teacher, tokens, mask
    raise AssertionError("could not draw tie-free bf16 logits")


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("seed", SEEDS)
def test_bf16_logits_float32_result_close_to_float64(name, seed):
    vocab = 13
    student, teacher, tokens, mask = _bf16_inputs_without_ties(seed, vocab)
    s16, q16 = student.to(torch.bfloat16), teacher.to(torch.bfloat16)
    loss, grad = loss_and_grad(lambda z: call(name, z, q16, tokens, mask), s16)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    # Exact (float32-accurate) agreement with the brute force on the bf16-rounded values ...
    want_l, want_g = brute(name, s16, q16, tokens, mask)
    assert loss.item() == pytest.approx(want_l, rel=1e-5, abs=1e-5)
    assert_close_np(grad, want_g, rtol=1e-2, atol=2e-3)
    # ... and loose agreement with the float64 brute force on the unrounded values.
    if name == "topk" and [_topk_ids(r, 3) for r in _rows(student)] != [_topk_ids(r, 3) for r in _rows(s16)]:
        pytest.skip("bf16 rounding changed a top-k set")
    exact_l, _ = brute(name, student, teacher, tokens, mask)
    assert loss.item() == pytest.approx(exact_l, rel=1e-2, abs=2e-2)


@pytest.mark.parametrize("name", LOSSES)
def test_mixed_precision_teacher(name):
    """A teacher in another floating dtype is accepted; the result dtype follows the student."""
    student, teacher, tokens, mask = make_inputs(2, 11)
    q32 = teacher.to(torch.float32)
    loss, grad = loss_and_grad(lambda z: call(name, z, q32, tokens, mask), student)
    assert loss.dtype == torch.float64
    want_l, want_g = brute(name, student, q32, tokens, mask)
    # the teacher's log-softmax is taken in the teacher's own precision (float32 here), hence the tolerance
    assert loss.item() == pytest.approx(want_l, rel=1e-6, abs=1e-7)
    assert_close_np(grad, want_g, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------

def _args(name, student, teacher, tokens, mask):
    if name == "sampled":
        return (student, teacher, tokens, mask), {}
    if name == "topk":
        return (student, teacher, mask), {"k": 3}
    return (student, teacher, mask), {}


FUNCS = {"sampled": sampled_token_opd_loss, "topk": topk_opd_loss, "full": full_vocab_opd_loss}


def _raises(name, exc, arg, student, teacher, tokens, mask):
    args, kwargs = _args(name, student, teacher, tokens, mask)
    with pytest.raises(exc, match=rf"{FUNC_NAMES[name]}: `{arg}`"):
        FUNCS[name](*args, **kwargs)


@pytest.mark.parametrize("name", LOSSES)
def test_validation_logits(name):
    student, teacher, tokens, mask = make_inputs(0, 11)
    # mismatched positions, or an empty teacher vocabulary (a different V_t is allowed: padded heads)
    _raises(name, ValueError, "teacher_logits", student, teacher[..., :0], tokens, mask)
    _raises(name, ValueError, "teacher_logits", student, teacher[:, :-1], tokens, mask)
    _raises(name, ValueError, "teacher_logits", student, teacher.reshape(N, -1), tokens, mask)
    # wrong rank
    _raises(name, ValueError, "student_logits", student[0, 0], teacher[0, 0], tokens, mask)
    _raises(name, ValueError, "student_logits", student[None], teacher[None], tokens, mask)
    # V = 0
    _raises(name, ValueError, "student_logits", student[..., :0], teacher[..., :0], tokens, mask)
    # non-tensor / non-float inputs
    _raises(name, TypeError, "student_logits", student.tolist(), teacher, tokens, mask)
    _raises(name, TypeError, "student_logits", student.numpy(), teacher, tokens, mask)
    _raises(name, TypeError, "teacher_logits", student, teacher.tolist(), tokens, mask)
    _raises(name, TypeError, "student_logits", student.to(torch.int64), teacher, tokens, mask)
    _raises(name, TypeError, "teacher_logits", student, teacher.to(torch.int32), tokens, mask)
    _raises(name, TypeError, "student_logits", student.to(torch.complex128), teacher, tokens, mask)


@pytest.mark.parametrize("name", LOSSES)
def test_validation_mask(name):
    student, teacher, tokens, mask = make_inputs(0, 11)
    _raises(name, ValueError, "mask", student, teacher, tokens, mask.reshape(N))
    _raises(name, ValueError, "mask", student, teacher, tokens, mask[:, :-1])
    _raises(name, ValueError, "mask", student, teacher, tokens, mask[..., None])
    _raises(name, TypeError, "mask", student, teacher, tokens, mask.tolist())
    _raises(name, TypeError, "mask", student, teacher, tokens, mask.numpy())
    for bad in (mask.to(torch.int64) * 2, mask.float() * 0.5, mask.float() - 1.0,
                torch.where(mask, torch.tensor(float("nan")), torch.tensor(0.0))):
        _raises(name, ValueError, "mask", student, teacher, tokens, bad)


def test_validation_tokens():
    name = "sampled"
    student, teacher, tokens, mask = make_inputs(0, 11)
    for bad in (tokens.to(torch.int32), tokens.to(torch.float64), tokens.to(torch.uint8)):
        _raises(name, TypeError, "tokens", student, teacher, bad, mask)
    _raises(name, TypeError, "tokens", student, teacher, tokens.tolist(), mask)
    _raises(name, TypeError, "tokens", student, teacher, None, mask)
    _raises(name, ValueError, "tokens", student, teacher, tokens.reshape(N), mask)
    _raises(name, ValueError, "tokens", student, teacher, tokens[:, :-1], mask)
    live = mask.nonzero()[0].tolist()  # an unmasked position
    dead = (~mask).nonzero()[0].tolist()  # a masked position
    for value in (-1, 11, 1000):
        bad = tokens.clone()
        bad[live[0], live[1]] = value
        _raises(name, ValueError, "tokens", student, teacher, bad, mask)
        _raises(name, ValueError, "tokens", student, teacher, bad, None)
        # the same id under the mask is padding (e.g. -100): accepted and ignored
        padded = tokens.clone()
        padded[dead[0], dead[1]] = value
        assert torch.equal(sampled_token_opd_loss(student, teacher, padded, mask),
                           sampled_token_opd_loss(student, teacher, tokens, mask))
    # boundary ids are fine
    ok = tokens.clone()
    ok[0, 0], ok[0, 1] = 0, 10
    sampled_token_opd_loss(student, teacher, ok, mask)


@pytest.mark.parametrize("name", ["sampled", "topk", "full"])
def test_non_finite_logits_under_the_mask_are_ignored(name):
    student, teacher, tokens, mask = make_inputs(3, 11)
    dead = (~mask).nonzero()[0].tolist()
    poisoned_s, poisoned_t = student.clone(), teacher.clone()
    poisoned_s[dead[0], dead[1], 0] = float("nan")
    poisoned_t[dead[0], dead[1], :] = float("-inf")
    s_clean, s_poisoned = leaf(student), leaf(poisoned_s)
    args_clean, kwargs_clean = _args(name, s_clean, teacher, tokens, mask)
    args_poisoned, kwargs_poisoned = _args(name, s_poisoned, poisoned_t, tokens, mask)
    clean = FUNCS[name](*args_clean, **kwargs_clean)
    poisoned = FUNCS[name](*args_poisoned, **kwargs_poisoned)
    assert torch.isfinite(poisoned) and torch.allclose(poisoned, clean, rtol=0, atol=1e-12)
    clean.backward()
    poisoned.backward()
    live = mask.unsqueeze(-1).expand_as(student)
    assert torch.equal(s_poisoned.grad[live], s_clean.grad[live])
