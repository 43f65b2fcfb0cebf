"""LM heads of different row counts (padded vocabularies: one tokenizer, heads padded to different sizes, as
Qwen2.5-1.5B's 151,936 and Qwen2.5-7B's 152,064 rows). Each model normalises over its own head; the losses compare
the shared ids [0, min(V_s, V_t)). The reference is checked against a loop written from that rule, and every fused
backend against the reference on the same rule, in values and gradients."""

from __future__ import annotations

import pytest
import torch

import oprd_kernels
from oprd_kernels import reference

N, D_S, D_T = 13, 6, 5


def heads(gen, v_s: int, v_t: int, dtype=torch.float64):
    h = torch.randn(N, D_S, generator=gen, dtype=dtype)
    w = torch.randn(v_s, D_S, generator=gen, dtype=dtype)
    th = torch.randn(N, D_T, generator=gen, dtype=dtype)
    tw = torch.randn(v_t, D_T, generator=gen, dtype=dtype)
    mask = torch.rand(N, generator=gen) < 0.75
    return h, w, th, tw, mask


def oracle(kind: str, s_logits, t_logits, tokens, mask, k: int) -> torch.Tensor:
    """The rule, one position at a time in fp64."""
    shared = min(s_logits.shape[-1], t_logits.shape[-1])
    total, count = 0.0, 0
    for r in range(s_logits.shape[0]):
        if not mask[r]:
            continue
        log_p = torch.log_softmax(s_logits[r].double(), 0)  # over the student's whole head
        log_q = torch.log_softmax(t_logits[r].double(), 0)  # over the teacher's whole head
        if kind == "sampled":
            y = int(tokens[r])
            total += -float(log_q[y] - log_p[y]) * float(log_p[y])
        elif kind == "topk":
            ids = sorted(range(shared), key=lambda v: (-float(s_logits[r, v]), v))[:k]
            lp, lq = log_p[ids], log_q[ids]
            total += float((torch.softmax(lp, 0) * (lp - lq) * lp).sum())
        else:
            total += float((log_p[:shared].exp() * (log_p[:shared] - log_q[:shared])).sum())
        count += 1
    return torch.tensor(total / max(count, 1), dtype=torch.float64)


SIZES = [(37, 29), (29, 37), (40, 40)]


@pytest.mark.parametrize("kind", ["sampled", "topk", "full"])
@pytest.mark.parametrize("v_s, v_t", SIZES)
def test_reference_losses_follow_the_shared_id_rule(gen, kind, v_s, v_t):
    h, w, th, tw, mask = heads(gen, v_s, v_t)
    s, t = h @ w.T, th @ tw.T
    tokens = torch.randint(0, min(v_s, v_t), (N,), generator=gen)
    if kind == "sampled":
        got = reference.sampled_token_opd_loss(s, t, tokens, mask)
    elif kind == "topk":
        got = reference.topk_opd_loss(s, t, mask, k=5)
    else:
        got = reference.full_vocab_opd_loss(s, t, mask)
    torch.testing.assert_close(got, oracle(kind, s, t, tokens, mask, 5), rtol=1e-12, atol=1e-12)


def _fused(kind, h, w, th, tw, tokens, mask, backend, vocab_block):
    common = dict(backend=backend, vocab_block=vocab_block)
    if kind == "sampled":
        return oprd_kernels.fused_sampled_token_opd_loss(h, w, th, tw, tokens, mask, **common)
    if kind == "topk":
        return oprd_kernels.fused_topk_opd_loss(h, w, th, tw, mask, k=5, **common)
    return oprd_kernels.fused_full_vocab_opd_loss(h, w, th, tw, mask, **common)


def _reference(kind, s, t, tokens, mask):
    if kind == "sampled":
        return reference.sampled_token_opd_loss(s, t, tokens, mask)
    if kind == "topk":
        return reference.topk_opd_loss(s, t, mask, k=5)
    return reference.full_vocab_opd_loss(s, t, mask)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["sampled", "topk", "full"])
@pytest.mark.parametrize("v_s, v_t", SIZES)
def test_fused_losses_on_unequal_heads_equal_the_reference(gen, opd_backend, dtype, kind, v_s, v_t):
    if opd_backend == "triton" and dtype == torch.float64:
        pytest.skip("triton falls back to chunked for float64 (covered by the chunked case)")
    h, w, th, tw, mask = heads(gen, v_s, v_t, dtype)
    tokens = torch.randint(0, min(v_s, v_t), (N,), generator=gen)
    hf, wf = h.clone().requires_grad_(), w.clone().requires_grad_()
    got = _fused(kind, hf, wf, th, tw, tokens, mask, opd_backend, 8)  # several tiles, the padding in its own
    got.backward()
    hr, wr = h.clone().requires_grad_(), w.clone().requires_grad_()
    want = _reference(kind, hr @ wr.T, th @ tw.T, tokens, mask)
    want.backward()
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(hf.grad, hr.grad, **tol)
    torch.testing.assert_close(wf.grad, wr.grad, **tol)
    assert wf.grad.shape == (v_s, D_S)


def test_sampled_tokens_must_be_ids_both_heads_have(gen):
    h, w, th, tw, mask = heads(gen, 37, 29)
    tokens = torch.full((N,), 30)
    with pytest.raises(ValueError, match=r"`tokens` must be token ids in \[0, 28\]"):
        oprd_kernels.fused_sampled_token_opd_loss(h, w, th, tw, tokens, torch.ones(N, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"`tokens` must be token ids in \[0, 28\]"):
        reference.sampled_token_opd_loss(h @ w.T, th @ tw.T, tokens)
    with pytest.raises(ValueError, match="`k` must be an int in"):
        oprd_kernels.fused_topk_opd_loss(h, w, th, tw, k=30)


@pytest.mark.parametrize("vocab_block", [None, 7])
def test_head_stats_topk_among_the_shared_ids(gen, opd_backend, vocab_block):
    h, w, _, _, _ = heads(gen, 37, 29, torch.float32)
    ids = torch.randint(0, 29, (N, 2), generator=gen)
    st = oprd_kernels.lm_head_stats(h, w, ids=ids, topk=4, entropy=True, topk_among=29, vocab_block=vocab_block,
                                    backend=opd_backend)
    logits = (h @ w.T).double()
    log_p = torch.log_softmax(logits, -1)
    want_ids = oprd_kernels.ordered_topk(logits[:, :29], 4)[1]
    assert torch.equal(st.topk_ids, want_ids)
    torch.testing.assert_close(st.topk_log_probs.double(), log_p.gather(1, want_ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.log_probs.double(), log_p.gather(1, ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.logsumexp.double(), torch.logsumexp(logits, -1), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(st.entropy.double(), -(log_p.exp() * log_p).sum(-1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="`ids` must be below topk_among"):
        oprd_kernels.lm_head_stats(h, w, ids=torch.full((N, 1), 30), topk=4, topk_among=29)
    with pytest.raises(ValueError, match="`topk_among`"):
        oprd_kernels.lm_head_stats(h, w, topk=4, topk_among=38)


def padded_model(seed: int, extra_rows: int):
    from test_trainer import TOKENIZER
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(TOKENIZER) + extra_rows, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, pad_token_id=TOKENIZER.pad_token_id,
                         bos_token_id=TOKENIZER.bos_token_id, eos_token_id=TOKENIZER.eos_token_id)
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("student_extra, teacher_extra", [(8, 0), (0, 8)])
@pytest.mark.parametrize("method, impl", [("opd_top1", "fused"), ("opd_topk", "fused"), ("opd_full", "fused"),
                                          ("oprd+opd", "fused"), ("opd_topk", "naive")])
def test_trainer_distils_across_padded_heads(tmp_path, method, impl, student_extra, teacher_extra):
    from test_trainer import TOKENIZER, prompts

    from oprd.train.config import load_config
    from oprd.train.trainer import Trainer

    config = load_config(overrides=[f"run.dir={tmp_path / 'run'}", "optim.steps=2", "run.device=cpu",
                                    f"method.name={method}", f"method.opd_impl={impl}", "method.topk=4",
                                    "rollout.prompts_per_step=2", "rollout.max_new_tokens=8", "optim.lr=1e-3"])
    student, teacher = padded_model(0, student_extra), padded_model(1, teacher_extra)
    with torch.no_grad():  # make the student's padding rows the likeliest tokens: only the limit keeps them out
        student.lm_head.weight[len(TOKENIZER):] = 50 * student.lm_head.weight[:1].sign()
    trainer = Trainer(config, student, teacher, TOKENIZER, prompts(8))
    batch = trainer._rollouts()
    assert int(batch.responses.max()) < len(TOKENIZER) + teacher_extra
    last = trainer.run(progress=False)
    assert last["step"] == 2 and torch.isfinite(torch.tensor(last["loss/opd"]))
    assert "overlap/top4" in last
