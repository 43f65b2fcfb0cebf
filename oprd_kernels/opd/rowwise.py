"""The `rowwise` OPD backend: one pass per chunk of rows over the whole vocabulary (Liger's fused linear loss layout).

Each chunk's whole-vocabulary logits are computed once by one GEMM, and the chunk's loss, its logits gradient and
both input gradients are finished from them before the next chunk: three student LM-head products in all (as many as
the naive path) instead of the vocabulary-tiled path's four, and the top-k over whole rows (ties to the smaller id,
as everywhere). The chunk arithmetic runs in place in two chunk buffers allocated once per call (_row_chunks.py).
Memory: those two buffers (CHUNK_ELEMENTS logits each unless row_block says otherwise) and the fp32 weight gradient
[|V|, d]; for a weight stored below fp32 that accumulator is twice the gradient's own size, which is why `auto`
picks the vocabulary tiles for such weights. This is the CPU default for fp32 heads (measured in docs/benchmarks.md:
at 512 rows, d = 1024, |V| = 151,936 it runs the full KL as fast as Liger's compiled chunked loss at 0.6x its
memory)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from oprd_kernels.opd._gradient import live_to_dense, product
from oprd_kernels.opd._inputs import OPDInputs
from oprd_kernels.opd._jsd import jsd_chunk
from oprd_kernels.opd._row_chunks import Workspace, full_kl_chunk, sparse_chunk, teacher_log_probs_, vocab_major_view
from oprd_kernels.opd._tiles import Tiling, as_operand, gemm_dtype, logits_tile, round_to_
from oprd_kernels.opd.diagnostics import OPDStats, concat_stats, stats_from_logits
from oprd_kernels.opd.stats import gather_rows

# Logits per chunk buffer when row_block is not given (at most 160 MiB in fp32; two buffers), in chunks of a multiple
# of ROW_ALIGN rows: 256 rows at V = 151,936, where MKL's LM-head GEMMs run near their large-batch rate (220-row
# chunks measured 1.2x slower than 256-row ones, interleaved in one process, 3 chunks against 2 at 512 rows, before
# the leading dimension was aligned; benchmarks/lm_head_gemm_probe.py align).
CHUNK_ELEMENTS = 40 << 20
ROW_ALIGN = 32


def row_tiling(rows: int, vocab: int, row_block: int | None) -> Tiling:
    """Whole-vocabulary tiles of row_block rows (default: at most CHUNK_ELEMENTS logits, a multiple of ROW_ALIGN rows
    when that many fit, at least one row)."""
    rb = row_block
    if rb is None:
        rb = max(1, CHUNK_ELEMENTS // max(vocab, 1))
        rb = rb - rb % ROW_ALIGN if rb >= ROW_ALIGN else rb
    return Tiling(max(1, min(rb, max(rows, 1))), max(vocab, 1))


def _hidden_grad(g: Tensor, w_mm: Tensor, mm: torch.dtype, out: Tensor) -> None:
    """out = g @ w_mm in out's dtype (g [rows, V], possibly a transposed view)."""
    if w_mm.dtype == out.dtype:  # fp32 heads, and 16-bit ones whose products run upcast (gemm_dtype)
        torch.matmul(g, w_mm, out=out)
    elif g.is_cuda:  # the half-precision GEMM with an fp32 output where torch offers it
        out.copy_(product(g, w_mm, mm, out.dtype))
    else:  # a CPU with native 16-bit products: no fp32 copy of the whole head per chunk
        out.copy_(g.to(mm) @ w_mm)


def _logits_t(h: Tensor, w_mm: Tensor, mm: torch.dtype, buffer: Tensor) -> Tensor:
    """The vocabulary-major logits w_mm @ h.T [V, rows] of a chunk, in `mm`'s precision, in the buffer's dtype."""
    zt = vocab_major_view(buffer, w_mm.shape[0], h.shape[0])
    if w_mm.dtype == buffer.dtype:
        torch.matmul(w_mm, as_operand(h, mm, w_mm.dtype).T, out=zt)
        return zt if w_mm.dtype == mm else round_to_(zt, mm)
    return zt.copy_(w_mm @ h.to(mm).T)


@dataclass(frozen=True)
class LossGrads:
    """What loss_and_grads (the `rowwise` whole_loss pass) returns, for an incoming gradient of 1."""

    loss: Tensor  # scalar, in the result dtype
    d_hidden: Tensor | None  # d loss / d hidden in hidden's [N, d] layout and dtype; None when not wanted
    d_weight: Tensor | None  # d loss / d weight [V, d] in weight's dtype; None when not wanted
    stats: OPDStats | None = None  # the diagnostics, when asked for (stats_k > 0)


def loss_and_grads(kind: str, inp: OPDInputs, weight: Tensor, t_weight: Tensor, k: int, tiling: Tiling,
                   mm_dtypes: tuple[torch.dtype, torch.dtype], *, want_hidden: bool,
                   want_weight: bool, stats_k: int = 0, beta: float = 0.5) -> LossGrads:
    """The loss and its gradients (LossGrads) in one pass per chunk of rows; with stats_k > 0 also the OPDStats with
    a top-`stats_k` overlap, from the same chunks (needs the sampled tokens in `inp`). `beta`: the generalised JSD's
    (kind "jsd", _jsd.py), which shares the full KL's vocabulary-major chunks."""
    n, out = inp.num_live, inp.out_dtype
    vocab, dim = weight.shape
    device = weight.device
    mm = mm_dtypes[0]
    loss = torch.zeros((), dtype=out, device=device)
    d_live = torch.empty((n, dim), dtype=out, device=device) if want_hidden else None
    d_weight = torch.zeros((vocab, dim), dtype=out, device=device) if want_weight else None
    want_grad = want_hidden or want_weight
    stats: list[OPDStats] | None = [] if stats_k else None
    with torch.no_grad():
        # the heads in their products' dtypes once (no copy when they are stored in it), not once per chunk
        w_mm = as_operand(weight, mm, gemm_dtype(mm, out, device))
        t_gemm = gemm_dtype(mm_dtypes[1], out, device)
        t_mm = t_weight if kind == "at_ids" else as_operand(t_weight, mm_dtypes[1], t_gemm)
        shared = inp.shared_vocab or vocab
        ws = Workspace.of(kind, tiling.row_block, vocab, t_weight.shape[0], out, device)
        for r0, r1 in tiling.row_ranges(n):
            h = gather_rows(inp.hidden, inp.rows, r0, r1)
            th = None if kind == "at_ids" else gather_rows(inp.teacher_hidden, inp.rows, r0, r1)
            if kind in ("full_vocab", "jsd"):  # vocabulary-major chunks (_row_chunks.py)
                tt = _logits_t(th, t_mm, mm_dtypes[1], ws.teacher)
                if stats is None:
                    teacher_log_probs_(tt, ws.student)  # the student's buffer is free until its GEMM
                    zt = _logits_t(h, w_mm, mm, ws.student)
                else:  # from both models' logits, before they are overwritten
                    zt = _logits_t(h, w_mm, mm, ws.student)
                    stats.append(stats_from_logits(zt.T, tt.T, inp.tokens[r0:r1], shared, stats_k))
                    teacher_log_probs_(tt, None)
                part, g_t = (full_kl_chunk(zt, tt, shared, 1.0 / n, want_grad) if kind == "full_vocab" else
                             jsd_chunk(zt, tt, shared, beta, 1.0 / n, want_grad))
                g = g_t.T if g_t is not None else None
            else:
                z = logits_tile(h, w_mm, mm, out, ws.student, weight_ready=True)
                t = None if th is None else logits_tile(th, t_mm, mm_dtypes[1], out, ws.teacher, weight_ready=True)
                if stats is not None:
                    stats.append(stats_from_logits(z, t, inp.tokens[r0:r1], shared, stats_k))
                part, g = sparse_chunk(kind, inp, z, t, r0, r1, k, shared, 1.0 / n)
            loss += part
            if want_hidden:  # one GEMM over the whole vocabulary per chunk
                _hidden_grad(g, w_mm, mm, d_live[r0:r1])
            if want_weight:  # summed over chunks, so in the result dtype from unrounded operands
                d_weight.addmm_(g.T, h.to(out))
    d_hidden = live_to_dense(d_live, inp.hidden, inp.rows) if want_hidden else None
    return LossGrads(loss=loss, d_hidden=d_hidden, d_weight=d_weight.to(weight.dtype) if want_weight else None,
                     stats=concat_stats(stats, stats_k, out, device) if stats is not None else None)
