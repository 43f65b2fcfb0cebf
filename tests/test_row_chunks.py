"""The rowwise backend's chunk arithmetic (oprd_kernels/opd/_row_chunks.py) against plain formulas, on padded
vocabulary-major views as the backend uses them, and its default chunking."""

import pytest
import torch

from oprd_kernels.opd._row_chunks import (
    LEADING_ALIGN,
    Workspace,
    full_kl_chunk,
    padded_rows,
    teacher_log_probs_,
    vocab_major_view,
)
from oprd_kernels.opd.rowwise import CHUNK_ELEMENTS, ROW_ALIGN, row_tiling


def test_default_chunks_are_aligned_and_bounded():
    for vocab in (151936, 152064, 32000, 4096):
        rb = row_tiling(10**6, vocab, None).row_block
        assert rb * vocab <= CHUNK_ELEMENTS and rb % ROW_ALIGN == 0, (vocab, rb)
    assert row_tiling(10**6, 151936, None).row_block == 256
    assert row_tiling(100, 151936, None).row_block == 100  # fewer rows than a chunk: one chunk
    assert row_tiling(100, 151936, 7).row_block == 7  # the caller's row_block as given
    assert row_tiling(10, 10**8, None).row_block == 1  # at least one row


@pytest.mark.parametrize("rows", [1, 15, 16, 37])
def test_vocab_major_view_pads_the_leading_dimension(rows):
    ws = Workspace.of("full_vocab", rows, 50, 50, torch.float32, torch.device("cpu"))
    view = vocab_major_view(ws.student, 50, rows)
    assert view.shape == (50, rows) and view.stride() == (padded_rows(rows), 1)
    assert padded_rows(rows) % LEADING_ALIGN == 0 and padded_rows(rows) - rows < LEADING_ALIGN
    assert ws.student.numel() >= 50 * padded_rows(rows)


@pytest.mark.parametrize("rows, vocab, shared_vocab", [(37, 301, None), (5, 64, None), (9, 70, 64)])
@pytest.mark.parametrize("want_grad", [True, False])
def test_full_kl_chunk_equals_the_formula(rows, vocab, shared_vocab, want_grad):
    gen = torch.Generator().manual_seed(rows)
    t_vocab = shared_vocab or vocab
    z = torch.randn(rows, vocab, generator=gen, dtype=torch.float64) * 3
    t = torch.randn(rows, t_vocab, generator=gen, dtype=torch.float64) * 3
    ws = Workspace.of("full_vocab", rows, vocab, t_vocab, torch.float64, torch.device("cpu"))
    zt, tt = vocab_major_view(ws.student, vocab, rows), vocab_major_view(ws.teacher, t_vocab, rows)
    tt.copy_(t.T)
    teacher_log_probs_(tt, None)
    zt.copy_(z.T)
    row_w = 1 / 11
    loss, g_t = full_kl_chunk(zt, tt, min(vocab, t_vocab), row_w, want_grad)
    zr = z.clone().requires_grad_()
    log_p, log_q = torch.log_softmax(zr, 1), torch.log_softmax(t, 1)
    s = min(vocab, t_vocab)
    want = row_w * (log_p.exp()[:, :s] * (log_p[:, :s] - log_q[:, :s])).sum()
    torch.testing.assert_close(loss, want.detach(), rtol=1e-12, atol=1e-12)
    if want_grad:
        (grad,) = torch.autograd.grad(want, zr)
        torch.testing.assert_close(g_t.T, grad, rtol=1e-10, atol=1e-12)
    else:
        assert g_t is None


def test_full_kl_chunk_keeps_a_small_kl_precise_in_fp32():
    """Teacher close to the student (KL ~ 1e-3, log |V| ~ 9): the fp32 chunk KL stays within 3e-5 of the fp64 truth
    on the same fp32 logits, relative (measured 1.8e-5). Subtracting log S from the summed sum_v p u (two ~9-sized
    terms) instead was off by 4.9e-5 here, and made a micro-batched loss differ from the one-batch loss by 5e-5."""
    gen = torch.Generator().manual_seed(0)
    rows, vocab = 48, 8000
    z = torch.randn(rows, vocab, generator=gen, dtype=torch.float64) * 2 + 3
    t = z + 0.05 * torch.randn(rows, vocab, generator=gen, dtype=torch.float64)
    z, t = z.float().double(), t.float().double()  # the fp32 logits the chunk sees, exactly
    truth = (torch.softmax(z, 1) * (torch.log_softmax(z, 1) - torch.log_softmax(t, 1))).sum() / rows
    ws = Workspace.of("full_vocab", rows, vocab, vocab, torch.float32, torch.device("cpu"))
    zt, tt = vocab_major_view(ws.student, vocab, rows), vocab_major_view(ws.teacher, vocab, rows)
    tt.copy_(t.T)
    teacher_log_probs_(tt, None)
    zt.copy_(z.T)
    loss, _ = full_kl_chunk(zt, tt, vocab, 1 / rows, True)
    assert abs(float(loss) - float(truth)) < 3e-5 * float(truth), (float(loss), float(truth))
