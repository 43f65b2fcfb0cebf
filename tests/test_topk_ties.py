"""Top-k ties have one order everywhere: larger logit first, then the smaller vocabulary id (oprd_kernels._topk).

The backend tests use small-integer hidden states and LM-head weights, so every logit is an exact integer in fp32
whatever the summation order: ties are exact ties in every backend, and only the tie rule decides the top-k set.
"""

from __future__ import annotations

import pytest
import torch

import oprd_kernels
from oprd_kernels import reference
from oprd_kernels._topk import merge_topk, ordered_topk


def oracle(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row's (value, id) pairs by (-value, id) in Python; NaN last."""
    flat = x.reshape(-1, x.shape[-1]).double().tolist()
    vals, ids = [], []
    for row in flat:
        ranked = sorted(range(len(row)), key=lambda i: (row[i] != row[i], -row[i] if row[i] == row[i] else 0, i))
        ids.append(ranked[:k])
        vals.append([row[i] if row[i] == row[i] else float("-inf") for i in ranked[:k]])
    shape = (*x.shape[:-1], k)
    return torch.tensor(vals, dtype=torch.float64).view(shape), torch.tensor(ids, dtype=torch.int64).view(shape)


def tied(gen: torch.Generator, *shape: int, levels: int = 4) -> torch.Tensor:
    return torch.randint(-levels, levels + 1, shape, generator=gen).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("m, k", [(1, 1), (7, 1), (7, 7), (37, 5), (101, 16), (300, 64)])
def test_ordered_topk_matches_the_oracle_on_heavily_tied_rows(gen, dtype, m, k):
    x = tied(gen, 9, m).to(dtype)
    values, ids = ordered_topk(x, k)
    want_v, want_i = oracle(x, k)
    assert torch.equal(ids, want_i)
    assert torch.equal(values.double(), want_v)


def test_ordered_topk_keeps_leading_dims_and_handles_nan_and_signed_zeros(gen):
    x = tied(gen, 2, 3, 11)
    x[0, 1] = float("nan")  # a whole garbage row: NaN ranks last, so the first ids come out
    x[1, 2, :4] = torch.tensor([-0.0, 0.0, float("nan"), -0.0])
    x[1, 2, 4:] = -1.0
    values, ids = ordered_topk(x, 3)
    assert ids.shape == (2, 3, 3)
    assert ids[0, 1].tolist() == [0, 1, 2]
    assert ids[1, 2].tolist() == [0, 1, 3]  # -0.0 == +0.0: by id; the NaN at id 2 is below every number
    assert torch.equal(ids, oracle(x, 3)[1])


def test_merge_topk_orders_shuffled_candidates(gen):
    values = tied(gen, 6, 40)
    ids = torch.stack([torch.randperm(1000, generator=gen)[:40] for _ in range(6)])
    got_v, got_i = merge_topk(values, ids, 9)
    for r in range(6):
        ranked = sorted(range(40), key=lambda j: (-values[r, j].item(), ids[r, j].item()))[:9]
        assert got_i[r].tolist() == [ids[r, j].item() for j in ranked]
        assert got_v[r].tolist() == [values[r, j].item() for j in ranked]


def _tied_head(gen, n: int, d: int, vocab: int):
    hidden = tied(gen, n, d, levels=2)
    weight = tied(gen, vocab, d, levels=1)
    weight[vocab // 2:] = weight[: vocab - vocab // 2].clone()  # duplicated rows: ties across tiles and splits
    return hidden, weight


@pytest.mark.parametrize("vocab_block", [None, 8, 13])
def test_head_stats_topk_ids_follow_the_rule_in_every_backend(gen, opd_backend, vocab_block):
    hidden, weight = _tied_head(gen, 19, 6, 77)
    k = 12
    stats = oprd_kernels.lm_head_stats(hidden, weight, topk=k, vocab_block=vocab_block, backend=opd_backend)
    logits = hidden @ weight.T  # exact: small integers
    want_v, want_i = oracle(logits, k)
    assert torch.equal(stats.topk_ids, want_i)
    lse = torch.logsumexp(logits.double(), dim=-1, keepdim=True)
    torch.testing.assert_close(stats.topk_log_probs.double(), want_v - lse, rtol=0, atol=1e-5)


@pytest.mark.parametrize("k", [1, 5, 16])
def test_fused_topk_opd_on_tied_logits_equals_the_reference(gen, opd_backend, k):
    hidden, weight = _tied_head(gen, 23, 5, 61)
    t_hidden, t_weight = tied(gen, 23, 7, levels=2), tied(gen, 61, 7, levels=1)
    mask = torch.rand(23, generator=gen) < 0.8
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss = oprd_kernels.fused_topk_opd_loss(h, w, t_hidden, t_weight, mask, k=k, vocab_block=16,
                                            backend=opd_backend)
    loss.backward()
    h_ref, w_ref = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = reference.topk_opd_loss(h_ref @ w_ref.T, t_hidden @ t_weight.T, mask, k=k)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-4, atol=1e-5)


def test_reference_topk_opd_picks_the_smaller_id_among_ties():
    # two ids tied for the last place: ids 1 and 3 both have logit 1; k = 2 must take ids 0 and 1
    student = torch.tensor([[2.0, 1.0, -5.0, 1.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 3.0, 0.0, -3.0]])
    loss = reference.topk_opd_loss(student, teacher, k=2)
    log_p = torch.log_softmax(student.detach(), -1)[0]
    log_q = torch.log_softmax(teacher, -1)[0]
    picked = torch.tensor([0, 1])
    w = torch.softmax(log_p[picked], 0)
    expected = (w * (log_p[picked] - log_q[picked]) * log_p[picked]).sum()
    torch.testing.assert_close(loss, expected)
