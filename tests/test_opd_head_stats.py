"""Tests of oprd_kernels.lm_head_stats: per-position statistics of softmax(hidden @ weight.T) (log-probs at given ids,
top-k log-probs and ids, entropy, log-sum-exp) computed tile by tile, against torch.log_softmax on the full logits.
Fresh random inputs from the per-test generator `gen`; odd vocabularies and tiles; [N, d] and [B, T, d] positions."""

from __future__ import annotations

import warnings

import pytest
import torch

from oprd_kernels import HeadStats, lm_head_stats
from oprd_kernels.opd import _passes


def draw(gen: torch.Generator, positions: tuple[int, ...], vocab: int, dim: int, num_ids: int,
         dtype: torch.dtype = torch.float64, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hidden = torch.randn(*positions, dim, generator=gen, dtype=torch.float64)
    weight = torch.randn(vocab, dim, generator=gen, dtype=torch.float64) * (scale / dim ** 0.5)
    ids = torch.randint(0, vocab, (*positions, num_ids), generator=gen)
    return hidden.to(dtype), weight.to(dtype), ids


def expected(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, k: int, out: torch.dtype) -> dict:
    """The statistics from the materialised logits (computed in the inputs' precision, then in `out`)."""
    logits = (hidden @ weight.T).to(out)
    log_p = torch.log_softmax(logits, dim=-1)
    top = log_p.topk(k, dim=-1) if k else None
    return dict(logsumexp=torch.logsumexp(logits, dim=-1), log_probs=log_p.gather(-1, ids),
                topk_log_probs=top.values if k else None, topk_ids=top.indices if k else None,
                entropy=-(log_p.exp() * log_p).sum(-1))


TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def check(stats: HeadStats, want: dict, out: torch.dtype, k: int) -> None:
    assert isinstance(stats, HeadStats)
    for name in ("logsumexp", "log_probs", "topk_log_probs", "entropy"):
        got = getattr(stats, name)
        assert got.dtype == out and not got.requires_grad, name
        torch.testing.assert_close(got, want[name], **TOL[out], msg=lambda m: f"{name}: {m}")
    if k:
        assert stats.topk_ids.dtype == torch.int64
        assert torch.equal(stats.topk_ids, want["topk_ids"])
        assert bool((stats.topk_log_probs[..., :-1] >= stats.topk_log_probs[..., 1:]).all())


# positions, V, d, num_ids, topk, row_block, vocab_block: tiny (the triton interpreter is slow), odd on purpose
CASES = [
    pytest.param((13,), 37, 24, 3, 5, 4, 8, id="N13-V37-rb4-vb8-k5"),
    pytest.param((2, 7), 77, 40, 1, 1, 3, 16, id="B2T7-V77-k1"),
    pytest.param((24,), 80, 33, 90, 80, 1, 1, id="N24-V80-blocks1-k=V-more-ids-than-V"),
    pytest.param((3, 5), 37, 7, 2, 9, 64, 64, id="B3T5-big-blocks"),
    pytest.param((4, 6), 50, 20, 4, 6, None, None, id="B4T6-default-tiles"),
    pytest.param((1,), 1, 6, 2, 1, 1, 1, id="N1-V1"),
]


@pytest.mark.parametrize("positions, vocab, dim, num_ids, k, row_block, vocab_block", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_log_softmax(opd_backend, gen, dtype, positions, vocab, dim, num_ids, k, row_block, vocab_block):
    hidden, weight, ids = draw(gen, positions, vocab, dim, num_ids, dtype)
    stats = lm_head_stats(hidden, weight, ids=ids, topk=k, entropy=True, row_block=row_block,
                          vocab_block=vocab_block, backend=opd_backend)
    assert stats.logsumexp.shape == positions and stats.entropy.shape == positions
    assert stats.log_probs.shape == (*positions, num_ids)
    assert stats.topk_log_probs.shape == stats.topk_ids.shape == (*positions, k)
    check(stats, expected(hidden, weight, ids, k, dtype), dtype, k)


@pytest.mark.parametrize("vocab, row_block, vocab_block", [(101, 8, 32), (257, 100, 13), (130, 1, 129)])
def test_chunked_larger_odd_sizes(gen, vocab, row_block, vocab_block):
    hidden, weight, ids = draw(gen, (3, 11), vocab, 48, 5)
    stats = lm_head_stats(hidden, weight, ids=ids, topk=20, entropy=True, row_block=row_block,
                          vocab_block=vocab_block, backend="chunked")  # k above the vocabulary block
    check(stats, expected(hidden, weight, ids, 20, torch.float64), torch.float64, 20)


def test_optional_fields(gen):
    hidden, weight, ids = draw(gen, (2, 5), 23, 9, 3)
    want = expected(hidden, weight, ids, 4, torch.float64)
    only = lm_head_stats(hidden, weight)
    assert only.log_probs is None and only.topk_log_probs is None and only.topk_ids is None and only.entropy is None
    torch.testing.assert_close(only.logsumexp, want["logsumexp"], **TOL[torch.float64])
    at_ids = lm_head_stats(hidden, weight, ids=ids, topk=0)
    assert at_ids.topk_log_probs is None and at_ids.topk_ids is None and at_ids.entropy is None
    torch.testing.assert_close(at_ids.log_probs, want["log_probs"], **TOL[torch.float64])
    top = lm_head_stats(hidden, weight, topk=4, entropy=True)
    assert top.log_probs is None
    assert torch.equal(top.topk_ids, want["topk_ids"])
    torch.testing.assert_close(top.entropy, want["entropy"], **TOL[torch.float64])


def test_no_gradient_is_tracked(gen):
    hidden, weight, ids = draw(gen, (6,), 17, 5, 2)
    stats = lm_head_stats(hidden.requires_grad_(True), weight.requires_grad_(True), ids=ids, topk=3, entropy=True)
    for name in ("logsumexp", "log_probs", "topk_log_probs", "entropy"):
        assert not getattr(stats, name).requires_grad and getattr(stats, name).grad_fn is None


def test_tiling_does_not_change_the_result(gen):
    hidden, weight, ids = draw(gen, (3, 4), 45, 11, 6)
    base = lm_head_stats(hidden, weight, ids=ids, topk=9, entropy=True, row_block=1, vocab_block=1)
    for row_block, vocab_block in ((2, 4), (5, 44), (100, 100), (None, 7)):
        stats = lm_head_stats(hidden, weight, ids=ids, topk=9, entropy=True, row_block=row_block,
                              vocab_block=vocab_block)
        assert torch.equal(stats.topk_ids, base.topk_ids)
        for name in ("logsumexp", "log_probs", "topk_log_probs", "entropy"):
            torch.testing.assert_close(getattr(stats, name), getattr(base, name), **TOL[torch.float64])


def test_no_positions(gen):
    hidden, weight, ids = draw(gen, (2, 0), 9, 4, 3)
    stats = lm_head_stats(hidden, weight, ids=ids, topk=2, entropy=True)
    assert stats.logsumexp.shape == (2, 0) and stats.log_probs.shape == (2, 0, 3)
    assert stats.topk_ids.shape == (2, 0, 2) and stats.entropy.shape == (2, 0)


def test_bf16_inputs(gen):
    """bf16 head: the logits are the bf16 matmul's, the statistics float32; equal to log_softmax of those logits."""
    hidden, weight, ids = draw(gen, (4, 5), 64, 40, 3, torch.bfloat16)
    stats = lm_head_stats(hidden, weight, ids=ids, entropy=True, vocab_block=16, row_block=3)
    want = expected(hidden, weight, ids, 0, torch.float32)
    for name in ("logsumexp", "log_probs", "entropy"):
        assert getattr(stats, name).dtype == torch.float32
        torch.testing.assert_close(getattr(stats, name), want[name], rtol=1e-5, atol=1e-5)


def test_autocast_cpu_bf16(gen):
    hidden, weight, ids = draw(gen, (3, 5), 48, 24, 2, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stats = lm_head_stats(hidden, weight, ids=ids, entropy=True, vocab_block=16)
    rounded = lm_head_stats(hidden.bfloat16(), weight.bfloat16(), ids=ids, entropy=True, vocab_block=16)
    full = expected(hidden, weight, ids, 0, torch.float32)
    for name in ("logsumexp", "log_probs", "entropy"):
        got = getattr(stats, name)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, getattr(rounded, name), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got, full[name], rtol=5e-2, atol=5e-2)


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------

def _raises(exc: type[Exception], arg: str, hidden, weight, **kwargs) -> None:
    with pytest.raises(exc, match=f"lm_head_stats: `{arg}`"):
        lm_head_stats(hidden, weight, **kwargs)


def test_validation_hidden_and_weight(gen):
    hidden, weight, _ = draw(gen, (2, 3), 11, 6, 2)
    _raises(ValueError, "hidden", hidden[0, 0], weight)
    _raises(ValueError, "hidden", hidden[None], weight)
    _raises(ValueError, "hidden", hidden[..., :0], weight[:, :0])
    _raises(TypeError, "hidden", hidden.tolist(), weight)
    _raises(TypeError, "hidden", hidden.to(torch.int64), weight)
    _raises(ValueError, "weight", hidden, weight[:, :-1])
    _raises(ValueError, "weight", hidden, weight[None])
    _raises(ValueError, "weight", hidden, weight[:0])
    _raises(TypeError, "weight", hidden, weight.to(torch.int32))


def test_validation_ids(gen):
    hidden, weight, ids = draw(gen, (2, 3), 11, 6, 2)
    _raises(TypeError, "ids", hidden, weight, ids=ids.to(torch.int32))
    _raises(TypeError, "ids", hidden, weight, ids=ids.to(torch.float64))
    _raises(TypeError, "ids", hidden, weight, ids=ids.tolist())
    _raises(ValueError, "ids", hidden, weight, ids=ids[..., 0])  # no k dimension
    _raises(ValueError, "ids", hidden, weight, ids=ids.reshape(6, 2))
    _raises(ValueError, "ids", hidden, weight, ids=ids[:, :-1])
    _raises(ValueError, "ids", hidden.reshape(6, 6), weight, ids=ids)
    for value in (-1, -100, 11, 1000):
        bad = ids.clone()
        bad[1, 2, 1] = value
        _raises(ValueError, "ids", hidden, weight, ids=bad)
    ok = ids.clone()
    ok[0, 0] = torch.tensor([0, 10])
    lm_head_stats(hidden, weight, ids=ok)


def test_validation_topk_and_backend(gen):
    hidden, weight, _ = draw(gen, (5,), 11, 6, 2)
    for bad in (-1, 12, True, False, 2.0, "3", None):
        _raises(ValueError, "topk", hidden, weight, topk=bad)
    for ok in (0, 1, 11):
        lm_head_stats(hidden, weight, topk=ok)
    for bad in ("cuda", "", "tritonn"):
        _raises(ValueError, "backend", hidden, weight, backend=bad)


def test_validation_blocks(gen):
    hidden, weight, _ = draw(gen, (5,), 11, 6, 2)
    for arg in ("row_block", "vocab_block"):
        for bad in (0, -3, True, 2.5):
            _raises(ValueError, arg, hidden, weight, **{arg: bad})


@pytest.mark.parametrize("how", ["real", "simulated"])
def test_unavailable_triton_warns_and_falls_back(monkeypatch, gen, how):
    if how == "simulated":
        real = _passes.opd_unavailable_reason
        monkeypatch.setattr(_passes, "opd_unavailable_reason",
                            lambda backend, device: "simulated" if backend == "triton" else real(backend, device))
    elif _passes.opd_unavailable_reason("triton", torch.device("cpu")) is None:
        pytest.skip("the triton OPD backend can run here: there is no fallback to test (see the simulated case)")
    monkeypatch.setattr(_passes, "_WARNED", set())
    hidden, weight, ids = draw(gen, (2, 5), 23, 8, 3)
    want = lm_head_stats(hidden, weight, ids=ids, topk=4, entropy=True, backend="chunked")
    with pytest.warns(RuntimeWarning, match="falling back to 'chunked'"):
        got = lm_head_stats(hidden, weight, ids=ids, topk=4, entropy=True, backend="triton")
    for name in ("logsumexp", "log_probs", "topk_log_probs", "topk_ids", "entropy"):
        assert torch.equal(getattr(got, name), getattr(want, name))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm_head_stats(hidden, weight, backend="triton")
