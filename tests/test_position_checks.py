"""The per-position checks written once (oprd_kernels._position_checks): the same rules and messages for every
caller, and on CUDA asynchronous device asserts instead of host reads."""

from __future__ import annotations

import pytest
import torch
from host_reads import HostReads

from oprd.positions import select_positions
from oprd_kernels import _position_checks as checks
from oprd_kernels import lm_head_stats, reference
from oprd_kernels.opd import _inputs
from oprd_kernels.opd import _lm_head_stats as head_stats_module


def test_mask_rules_are_the_same_for_the_trainer_and_the_losses():
    good = torch.tensor([[1, 0, 1]])
    assert torch.equal(checks.check_mask("f", "mask", good, good.shape, good.device), good)
    for bad, exc, text in [(good.tolist(), TypeError, "f: `mask` must be a bool or 0/1 tensor"),
                           (good * 2, ValueError, r"f: `mask` must hold only 0 and 1; got values \[2\]"),
                           (good[0], ValueError, r"f: `mask` must have the positions' shape \(1, 3\)")]:
        with pytest.raises(exc, match=text):
            checks.check_mask("f", "mask", bad, good.shape, good.device)
    floats = good.float()
    checks.check_mask("f", "mask", floats, good.shape, good.device)  # the OPD losses take 0/1 floats
    with pytest.raises(TypeError, match="dtype"):
        checks.check_mask("f", "mask", floats, good.shape, good.device, floats=False)
    # the same function answers for select_positions and the reference OPD losses
    with pytest.raises(ValueError, match=r"select_positions: `response_mask` must hold only 0 and 1"):
        select_positions(good * 2)
    logits = torch.randn(1, 3, 5)
    with pytest.raises(ValueError, match=r"full_vocab_opd_loss: `mask` must hold only 0 and 1"):
        reference.full_vocab_opd_loss(logits, logits, good * 2)


def test_id_range_ignores_masked_positions_and_names_the_values():
    ids = torch.tensor([[0, 4], [9, -100]])
    mask = torch.tensor([[True, True], [False, False]])
    checks.check_id_range("f", "ids", ids, 5, mask)  # -100 and 9 sit under the mask
    with pytest.raises(ValueError, match=r"f: `ids` must be token ids in \[0, 4\] at unmasked positions; got values "
                                         r"in \[-100, 9\]"):
        checks.check_id_range("f", "ids", ids, 5, mask | True)
    with pytest.raises(ValueError, match=r"`ids`"):  # [..., k] ids under a [...] mask
        checks.check_id_range("f", "ids", ids[:, None, :].expand(2, 3, 2), 5, torch.ones(2, 3, dtype=torch.bool))


def test_device_checks_read_nothing_back_and_still_fail(monkeypatch):
    ids, mask = torch.tensor([[0, 4], [9, -100]]), torch.tensor([[1, 1], [0, 0]])
    reads = HostReads(monkeypatch)
    checks.check_mask("f", "mask", mask, mask.shape, mask.device, on_device=True)
    checks.check_id_range("f", "ids", ids, 5, mask, on_device=True)
    assert reads.count == 0
    checks.check_id_range("f", "ids", ids, 5, mask)  # the host path reads
    assert reads.count > 0
    # On CPU torch._assert_async fails at once; on CUDA at the next synchronisation, with the same message.
    with pytest.raises(RuntimeError, match=r"f: `mask` must hold only 0 and 1"):
        checks.check_mask("f", "mask", mask * 3, mask.shape, mask.device, on_device=True)
    with pytest.raises(RuntimeError, match=r"f: `ids` must be token ids in \[0, 4\]"):
        checks.check_id_range("f", "ids", ids, 5, None, on_device=True)


def _opd_call(gen, n=6, d=8, vocab=11):
    h, th = torch.randn(2, n, d, generator=gen), torch.randn(2, n, d, generator=gen)
    w, tw = torch.randn(vocab, d, generator=gen), torch.randn(vocab, d, generator=gen)
    tokens = torch.randint(0, vocab, (2, n), generator=gen)
    mask = torch.rand(2, n, generator=gen) > 0.3
    return h, w, th, tw, tokens, mask


def test_the_fused_opd_checks_on_cuda_read_back_only_the_live_row_count(gen, monkeypatch):
    """On CUDA (simulated: reads_on_device patched) the only host read left is the nonzero that sizes the passes."""
    h, w, th, tw, tokens, mask = _opd_call(gen)
    monkeypatch.setattr(_inputs, "reads_on_device", lambda device: True)
    monkeypatch.setattr(head_stats_module, "reads_on_device", lambda device: True)
    reads = HostReads(monkeypatch)
    inp = _inputs.check_opd_inputs("f", h, w, th, tw, tokens, mask.int(), needs_tokens=True)
    ids = tokens.unsqueeze(-1)
    _inputs.check_at_ids_inputs("f", h, w, ids, torch.randn(2, 6, 1, generator=gen), mask.int())
    head_stats_module._check_ids("lm_head_stats", ids, h.shape[:-1], 11, 11, h.device)
    assert reads.count == 0
    assert inp.num_live == int(mask.sum()) and torch.equal(inp.tokens, tokens[mask])
    bad = tokens.clone()
    bad[mask] = 11
    with pytest.raises(RuntimeError, match="f: `tokens` must be token ids in"):
        _inputs.check_opd_inputs("f", h, w, th, tw, bad, mask, needs_tokens=True)


def test_lm_head_stats_and_the_fused_losses_share_the_hidden_and_head_messages(gen):
    h, w, th, tw, tokens, mask = _opd_call(gen)
    from oprd_kernels import fused_sampled_token_opd_loss

    for call in (lambda hh, ww: lm_head_stats(hh, ww), lambda hh, ww: fused_sampled_token_opd_loss(hh, ww, th, tw,
                                                                                                    tokens, mask)):
        with pytest.raises(ValueError, match=r"`hidden` must have shape \[N, d\] or \[B, T, d\] with d >= 1"):
            call(h[0, 0], w)
        with pytest.raises(ValueError, match=r"`weight` must be an LM-head weight \[V, 8\] \(V >= 1\)"):
            call(h, w[:, :-1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_checks_of_an_unmasked_call_make_no_synchronisation():
    gen = torch.Generator().manual_seed(0)
    h, w, th, tw, tokens, _ = (t.cuda() for t in _opd_call(gen))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _inputs.check_opd_inputs("f", h, w, th, tw, tokens, None, needs_tokens=True)
        head_stats_module._check_ids("lm_head_stats", tokens[..., None], h.shape[:-1], 11, 11, h.device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
