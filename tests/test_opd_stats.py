"""fused_opd_loss_and_stats: the fused OPD losses' diagnostics (reward, entropies, top-k overlap) from their own
statistics passes, against the same numbers from materialised logits, for every backend and kind, padded heads and
masks included; the loss and gradients are those of the plain fused losses; and no extra LM-head pass runs for the
sampled-token and top-k losses."""

from __future__ import annotations

import pytest
import torch

import oprd_kernels
from oprd_kernels import fused_opd_loss_and_stats
from oprd_kernels.opd import stats as chunked_stats

N, D = 13, 12
def plain(kind, h, w, th, tw, tokens, mask, k, backend):
    """The plain fused loss of `kind`, at the same tiles."""
    common = dict(vocab_block=8, backend=backend)
    if kind == "sampled_token":
        return oprd_kernels.fused_sampled_token_opd_loss(h, w, th, tw, tokens, mask, **common)
    if kind == "topk":
        return oprd_kernels.fused_topk_opd_loss(h, w, th, tw, mask, k=k, **common)
    return oprd_kernels.fused_full_vocab_opd_loss(h, w, th, tw, mask, **common)


def inputs(gen, v_s, v_t):
    h = torch.randn(N, D, generator=gen, dtype=torch.float32) * 2
    th = torch.randn(N, D + 2, generator=gen) * 2
    w, tw = torch.randn(v_s, D, generator=gen), torch.randn(v_t, D + 2, generator=gen)
    tokens = torch.randint(0, min(v_s, v_t), (N,), generator=gen)
    mask = torch.rand(N, generator=gen) > 0.25
    return h, w, th, tw, tokens, mask


def expected(h, w, th, tw, tokens, mask, k):
    z, zt = (h @ w.T).double(), (th @ tw.T).double()
    log_p, log_q = torch.log_softmax(z, -1)[mask], torch.log_softmax(zt, -1)[mask]
    tok = tokens[mask][:, None]
    shared = min(w.shape[0], tw.shape[0])
    top_p = oprd_kernels.ordered_topk(z[mask][:, :shared], k)[1]
    top_q = oprd_kernels.ordered_topk(zt[mask][:, :shared], k)[1]
    return {"reward": (log_q.gather(1, tok) - log_p.gather(1, tok)).squeeze(1),
            "entropy_student": -(log_p.exp() * log_p).sum(-1), "entropy_teacher": -(log_q.exp() * log_q).sum(-1),
            "overlap": (top_p[:, :, None] == top_q[:, None, :]).any(-1).double().mean(-1)}


@pytest.mark.parametrize("v_s, v_t", [(37, 37), (37, 29), (29, 37)])
@pytest.mark.parametrize("kind", ["sampled_token", "topk", "full_vocab"])
def test_stats_equal_the_logits_and_the_loss_is_the_plain_one(gen, opd_backend, kind, v_s, v_t):
    h, w, th, tw, tokens, mask = inputs(gen, v_s, v_t)
    k, stats_k = 3, 5
    hs, ws = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss, st = fused_opd_loss_and_stats(kind, hs, ws, th, tw, tokens, mask, k=k, stats_k=stats_k, vocab_block=8,
                                        backend=opd_backend)
    loss.backward()
    hp, wp = h.clone().requires_grad_(), w.clone().requires_grad_()
    base = plain(kind, hp, wp, th, tw, tokens, mask, k, opd_backend)
    base.backward()
    torch.testing.assert_close(loss, base, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hs.grad, hp.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ws.grad, wp.grad, rtol=1e-5, atol=1e-6)
    want = expected(h, w, th, tw, tokens, mask, stats_k)
    assert st.k == stats_k and not any(t.requires_grad for t in st.as_tuple())
    for name, value in want.items():
        got = getattr(st, name)
        assert got.shape == (int(mask.sum()),), name
        torch.testing.assert_close(got.double(), value, rtol=1e-4, atol=1e-4, msg=name)
    means = st.means()
    assert set(means) == {"opd/reward", "entropy/student", "entropy/teacher", f"overlap/top{stats_k}"}
    assert float(means["opd/reward"]) == pytest.approx(float(want["reward"].mean()), rel=1e-4, abs=1e-5)


def test_an_empty_mask_gives_empty_stats_and_no_metrics(gen):
    h, w, th, tw, tokens, mask = inputs(gen, 19, 19)
    loss, st = fused_opd_loss_and_stats("topk", h, w, th, tw, tokens, torch.zeros_like(mask), k=2, stats_k=2)
    assert float(loss) == 0.0 and st.reward.numel() == 0 and st.means() == {}


def test_bad_arguments_are_named(gen):
    h, w, th, tw, tokens, mask = inputs(gen, 19, 17)
    with pytest.raises(ValueError, match="fused_opd_loss_and_stats: `kind`"):
        fused_opd_loss_and_stats("at_ids", h, w, th, tw, tokens, mask)
    with pytest.raises(ValueError, match=r"fused_opd_loss_and_stats: `stats_k` must be an int in \[1, V = 17\]"):
        fused_opd_loss_and_stats("topk", h, w, th, tw, tokens, mask, k=2, stats_k=18)
    with pytest.raises(TypeError, match="fused_opd_loss_and_stats: `tokens`"):
        fused_opd_loss_and_stats("full_vocab", h, w, th, tw, None, mask)


@pytest.mark.parametrize("kind", ["sampled_token", "topk"])
def test_the_stats_add_no_lm_head_pass(gen, kind, monkeypatch):
    """The vocabulary-tiled passes: as many statistics passes with the diagnostics as without (they ride along)."""
    calls = []
    real = chunked_stats.logit_stats

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(chunked_stats, "logit_stats", counting)
    h, w, th, tw, tokens, mask = inputs(gen, 23, 23)
    plain(kind, h, w, th, tw, tokens, mask, 3, "chunked")
    plain_passes = len(calls)
    calls.clear()
    fused_opd_loss_and_stats(kind, h, w, th, tw, tokens, mask, k=3, stats_k=4, backend="chunked", vocab_block=8)
    assert plain_passes == 2 and len(calls) == plain_passes
    assert all(c.get("entropy") for c in calls) and all(c.get("topk", 0) >= 4 for c in calls)
