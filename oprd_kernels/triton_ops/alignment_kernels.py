"""Triton kernels of the multi-layer alignment loss (semantics: oprd_kernels/reference/alignment.py).

Forward: grid (cdiv(N_sel, BLOCK_R), L), BLOCK_R selected rows of one layer per program. It reads the student rows
in place (layer table) and their teacher cache rows once, in [BLOCK_R, TILE_D] tiles, accumulating in ACC (fp32;
fp64 for fp64 inputs), and writes the weighted row losses plus, for nmse/cosine, three per-row scalars (1/|s|, 1/|t|,
cos) that the backward reuses.

Backward: grid (cdiv(N_sel, BLOCK_R) slot blocks, layers needing a gradient). A slot is one distinct student row
(_tables.row_slots); a program re-reads its BLOCK_R slots' rows and the teacher rows of their entries (as many rounds
as the block's largest slot has entries), sums the gradients in registers and writes each row of the dense gradient
once. No atomics, deterministic. The gradient is recomputed rather than kept from the
forward: the same bytes move either way (forward 2 reads + backward 2 reads + 1 write, against forward 2 reads +
1 write + backward 1 read + 1 write), and nothing [N_sel, D]-sized stays alive between the two passes.

Several rows per program (BLOCK_R > 1) are for small D: with one row of D <= 128 per 4-warp program, each thread
held one element and read bf16 rows 2 bytes at a time (compile_report); a [BLOCK_R, TILE_D] tile of ~2048 elements
gives every thread 16 bytes (alignment.launch_options). The tail block's rows are clamped to the last entry for the
loads (in bounds, never stored). EVEN_D (D a multiple of TILE_D) drops the column masks.

Loss codes: 0 = mse, 1 = nmse, 2 = cosine. Zero-norm guard: 1/|x| is 0 when |x|^2 < eps^2 (NORM_EPS).
INTERPRET: the interpreter workarounds (interpreter.py).
"""

import triton
import triton.language as tl

from oprd_kernels.triton_ops.common import as_int64, inverse_norm, load_rows, row_starts
from oprd_kernels.triton_ops.interpreter import round_to


@triton.jit
def _tile(base, starts, stride_d, cols, ok, dim, UNIT: tl.constexpr, EVEN_D: tl.constexpr, ACC: tl.constexpr):
    """[BLOCK_R, TILE_D] of rows at `starts` (columns `cols`), in ACC; rows where `ok` is False and columns past
    `dim` read 0. With EVEN_D every column is in range, so only the rows are masked."""
    if EVEN_D:
        mask = ok[:, None]  # broadcast along the columns
    else:
        mask = ok[:, None] & (cols < dim)[None, :]
    return load_rows(base, starts, stride_d, cols, mask, UNIT).to(ACC)


@triton.jit
def alignment_fwd_kernel(
    s_base, s_table, s_seq,  # student layer table
    t_base, t_table, t_seq,  # teacher cache layer table
    rows, weights, layer_map,
    row_loss, stats,  # out: [L, N_sel] weighted row losses; [3, L, N_sel] (1/|s|, 1/|t|, cos)
    n_sel, dim, eps_sq,
    LOSS: tl.constexpr, HAS_ROWS: tl.constexpr, HAS_WEIGHTS: tl.constexpr, HAS_MAP: tl.constexpr,
    S_UNIT: tl.constexpr, S_ALIGN: tl.constexpr, T_UNIT: tl.constexpr, T_ALIGN: tl.constexpr,
    ACC: tl.constexpr, TILE_D: tl.constexpr, BLOCK_R: tl.constexpr, EVEN_D: tl.constexpr,
):
    entries = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    layer = tl.program_id(1).to(tl.int64)
    ok = entries < n_sel
    entries = tl.minimum(entries, n_sel - 1)  # the tail's rows: in-bounds loads of the last entry, never stored
    zero = tl.zeros([], dtype=ACC)
    inv_n = 1.0 / (n_sel + zero)  # exact in ACC (a float argument would be rounded to fp32)
    inv_dim = 1.0 / (dim + zero)
    if HAS_ROWS:
        row = tl.load(rows + entries)
    else:
        row = entries
    if HAS_MAP:
        t_layer = tl.load(layer_map + layer)
    else:
        t_layer = layer
    s_start, s_stride = row_starts(s_table, layer, row, s_seq, S_ALIGN)
    t_start, t_stride = row_starts(t_table, t_layer, entries, t_seq, T_ALIGN)
    everything = entries >= 0  # clamped rows are in bounds: the loads need no row mask

    acc_a = tl.zeros([BLOCK_R, TILE_D], dtype=ACC)  # mse: sum (s - t)^2; else: s.s
    acc_b = tl.zeros([BLOCK_R, TILE_D], dtype=ACC)  # t.t
    acc_c = tl.zeros([BLOCK_R, TILE_D], dtype=ACC)  # s.t
    for d0 in range(0, dim, TILE_D):
        cols = d0 + tl.arange(0, TILE_D)
        s = _tile(s_base, s_start, s_stride, cols, everything, dim, S_UNIT, EVEN_D, ACC)
        t = _tile(t_base, t_start, t_stride, cols, everything, dim, T_UNIT, EVEN_D, ACC)
        if LOSS == 0:
            diff = s - t
            acc_a += diff * diff
        else:
            acc_a += s * s
            acc_b += t * t
            acc_c += s * t

    if HAS_WEIGHTS:
        w = tl.load(weights + entries).to(ACC)
    else:
        w = inv_n
    out = layer * n_sel + entries
    if LOSS == 0:
        loss = tl.sum(acc_a, axis=1) * inv_dim
    else:
        ss = tl.sum(acc_a, axis=1)
        tt = tl.sum(acc_b, axis=1)
        inv_s = inverse_norm(ss, eps_sq)
        inv_t = inverse_norm(tt, eps_sq)
        cos = tl.sum(acc_c, axis=1) * inv_s * inv_t
        if LOSS == 1:
            loss = (ss * inv_s * inv_s + tt * inv_t * inv_t - 2.0 * cos) * inv_dim
        else:
            loss = 1.0 - cos
        plane = n_sel * tl.num_programs(1).to(tl.int64)
        tl.store(stats + out, inv_s, mask=ok)
        tl.store(stats + plane + out, inv_t, mask=ok)
        tl.store(stats + 2 * plane + out, cos, mask=ok)
    tl.store(row_loss + out, w * loss, mask=ok)


@triton.jit
def alignment_bwd_kernel(
    s_base, s_table, s_seq,
    t_base, t_table, t_seq,
    order, slot_rows, slot_start,  # _tables.RowSlots (unused without rows)
    weights, layer_map, grad_layers, stats, grad_out,
    grad, grad_offsets,  # out: dense gradients [B*S, D], contiguous, at grad + grad_offsets[i] for wanted layer i
    n_sel, num_layers, dim,
    LOSS: tl.constexpr, HAS_ROWS: tl.constexpr, HAS_WEIGHTS: tl.constexpr, HAS_MAP: tl.constexpr,
    S_UNIT: tl.constexpr, S_ALIGN: tl.constexpr, T_UNIT: tl.constexpr, T_ALIGN: tl.constexpr,
    ACC: tl.constexpr, TILE_D: tl.constexpr, BLOCK_R: tl.constexpr, EVEN_D: tl.constexpr, G_ALIGN: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    slots = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    g_index = tl.program_id(1).to(tl.int64)
    in_range = slots < n_sel
    slots = tl.minimum(slots, n_sel - 1)
    zero = tl.zeros([], dtype=ACC)
    inv_n = 1.0 / (n_sel + zero)
    inv_dim = 1.0 / (dim + zero)
    layer = tl.load(grad_layers + g_index)
    if HAS_ROWS:
        row = tl.load(slot_rows + slots)
        first = tl.load(slot_start + slots)
        count = tl.load(slot_start + slots + 1) - first
    else:
        row = slots
        first = slots
        count = tl.full([BLOCK_R], 1, dtype=tl.int64)
    if HAS_MAP:
        t_layer = tl.load(layer_map + layer)
    else:
        t_layer = layer
    used = in_range & (row >= 0)  # unused slots (fewer distinct rows than entries) touch nothing
    count = tl.where(used, count, 0)
    row = tl.maximum(row, 0)
    s_start, s_stride = row_starts(s_table, layer, row, s_seq, S_ALIGN)
    g_layer = tl.load(grad_out + layer).to(ACC)
    plane = as_int64(n_sel) * num_layers  # L * N_sel may pass 2^31
    g_start = tl.load(grad_offsets + g_index) + row * dim
    if G_ALIGN > 1:  # checked on the host: lets the stores vectorise
        g_start = (g_start // G_ALIGN) * G_ALIGN
    rounds = tl.max(count, axis=0)

    for d0 in range(0, dim, TILE_D):
        cols = d0 + tl.arange(0, TILE_D)
        s = _tile(s_base, s_start, s_stride, cols, used, dim, S_UNIT, EVEN_D, ACC)
        acc = tl.zeros([BLOCK_R, TILE_D], dtype=ACC)
        for j in range(0, rounds):
            live = j < count
            at_entry = tl.where(live, first + j, 0)
            if HAS_ROWS:
                entry = tl.load(order + at_entry, mask=live, other=0)
            else:
                entry = at_entry
            t_start, t_stride = row_starts(t_table, t_layer, entry, t_seq, T_ALIGN)
            t = _tile(t_base, t_start, t_stride, cols, live, dim, T_UNIT, EVEN_D, ACC)
            if HAS_WEIGHTS:
                coef = tl.load(weights + entry, mask=live, other=0.0).to(ACC) * g_layer
            else:
                coef = tl.where(live, inv_n * g_layer, 0.0)
            if LOSS == 0:
                acc += ((2.0 * inv_dim * coef)[:, None]) * (s - t)
            else:
                at = layer * n_sel + entry
                inv_s = tl.load(stats + at, mask=live, other=0.0)
                inv_t = tl.load(stats + plane + at, mask=live, other=0.0)
                cos = tl.load(stats + 2 * plane + at, mask=live, other=0.0)
                scale = -coef
                if LOSS == 1:
                    scale = scale * 2.0 * inv_dim
                acc += scale[:, None] * ((inv_s * inv_t)[:, None] * t - (cos * inv_s * inv_s)[:, None] * s)
        if EVEN_D:
            mask = used[:, None]
        else:
            mask = used[:, None] & (cols < dim)[None, :]
        tl.store(grad + g_start[:, None] + cols[None, :], round_to(acc, grad.dtype.element_ty, INTERPRET), mask=mask)
