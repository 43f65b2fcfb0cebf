"""Triton kernels of the multi-layer alignment loss (semantics: oprd_kernels/reference/alignment.py).

Forward: grid (N_sel, L), one selected row of one layer per program. It reads the student row in place (layer table)
and its teacher cache row once, in D tiles, accumulating in ACC (fp32; fp64 for fp64 inputs), and writes the
weighted row loss plus, for nmse/cosine, three per-row scalars (1/|s|, 1/|t|, cos) that the backward reuses.

Backward: grid (N_sel slots, layers needing a gradient). A slot is one distinct student row (_tables.row_slots); its
program re-reads that row and the teacher rows of its entries, sums their gradients in registers and writes the
row of the dense gradient once. No atomics, deterministic. The gradient is recomputed rather than kept from the
forward: the same bytes move either way (forward 2 reads + backward 2 reads + 1 write, against forward 2 reads +
1 write + backward 1 read + 1 write), and nothing [N_sel, D]-sized stays alive between the two passes.

Loss codes: 0 = mse, 1 = nmse, 2 = cosine. Zero-norm guard: 1/|x| is 0 when |x|^2 < eps^2 (NORM_EPS).
INTERPRET: the interpreter workarounds (interpreter.py).
"""

import triton
import triton.language as tl

from oprd_kernels.triton_ops.common import as_int64, inverse_norm, load_tile, row_starts
from oprd_kernels.triton_ops.interpreter import round_to


@triton.jit
def alignment_fwd_kernel(
    s_base, s_table, s_seq,  # student layer table
    t_base, t_table, t_seq,  # teacher cache layer table
    rows, weights, layer_map,
    row_loss, stats,  # out: [L, N_sel] weighted row losses; [3, L, N_sel] (1/|s|, 1/|t|, cos)
    n_sel, dim, eps_sq,
    LOSS: tl.constexpr, HAS_ROWS: tl.constexpr, HAS_WEIGHTS: tl.constexpr, HAS_MAP: tl.constexpr,
    S_UNIT: tl.constexpr, S_ALIGN: tl.constexpr, T_UNIT: tl.constexpr, T_ALIGN: tl.constexpr,
    ACC: tl.constexpr, TILE_D: tl.constexpr,
):
    entry = tl.program_id(0).to(tl.int64)
    layer = tl.program_id(1).to(tl.int64)
    zero = tl.zeros([], dtype=ACC)
    inv_n = 1.0 / (n_sel + zero)  # exact in ACC (a float argument would be rounded to fp32)
    inv_dim = 1.0 / (dim + zero)
    if HAS_ROWS:
        row = tl.load(rows + entry)
    else:
        row = entry
    if HAS_MAP:
        t_layer = tl.load(layer_map + layer)
    else:
        t_layer = layer
    s_start, s_stride = row_starts(s_table, layer, row, s_seq, S_ALIGN)
    t_start, t_stride = row_starts(t_table, t_layer, entry, t_seq, T_ALIGN)

    acc_a = tl.zeros([TILE_D], dtype=ACC)  # mse: sum (s - t)^2; else: s.s
    acc_b = tl.zeros([TILE_D], dtype=ACC)  # t.t
    acc_c = tl.zeros([TILE_D], dtype=ACC)  # s.t
    for d0 in range(0, dim, TILE_D):
        cols = d0 + tl.arange(0, TILE_D)
        mask = cols < dim
        s = load_tile(s_base, s_start, s_stride, cols, mask, S_UNIT, ACC)
        t = load_tile(t_base, t_start, t_stride, cols, mask, T_UNIT, ACC)
        if LOSS == 0:
            diff = s - t
            acc_a += diff * diff
        else:
            acc_a += s * s
            acc_b += t * t
            acc_c += s * t

    if HAS_WEIGHTS:
        w = tl.load(weights + entry).to(ACC)
    else:
        w = inv_n
    out = layer * n_sel + entry
    if LOSS == 0:
        loss = tl.sum(acc_a, axis=0) * inv_dim
    else:
        ss = tl.sum(acc_a, axis=0)
        tt = tl.sum(acc_b, axis=0)
        inv_s = inverse_norm(ss, eps_sq)
        inv_t = inverse_norm(tt, eps_sq)
        cos = tl.sum(acc_c, axis=0) * inv_s * inv_t
        if LOSS == 1:
            loss = (ss * inv_s * inv_s + tt * inv_t * inv_t - 2.0 * cos) * inv_dim
        else:
            loss = 1.0 - cos
        plane = n_sel * tl.num_programs(1).to(tl.int64)
        tl.store(stats + out, inv_s)
        tl.store(stats + plane + out, inv_t)
        tl.store(stats + 2 * plane + out, cos)
    tl.store(row_loss + out, w * loss)


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
    ACC: tl.constexpr, TILE_D: tl.constexpr, G_ALIGN: tl.constexpr, INTERPRET: tl.constexpr,
):
    slot = tl.program_id(0).to(tl.int64)
    g_index = tl.program_id(1).to(tl.int64)
    zero = tl.zeros([], dtype=ACC)
    inv_n = 1.0 / (n_sel + zero)
    inv_dim = 1.0 / (dim + zero)
    layer = tl.load(grad_layers + g_index)
    if HAS_ROWS:
        row = tl.load(slot_rows + slot)
        first = tl.load(slot_start + slot)
        last = tl.load(slot_start + slot + 1)
    else:
        row = slot
        first = slot
        last = slot + 1
    if HAS_MAP:
        t_layer = tl.load(layer_map + layer)
    else:
        t_layer = layer
    limit = tl.where(row >= 0, dim, 0)  # unused slots (fewer distinct rows than entries) touch nothing
    s_start, s_stride = row_starts(s_table, layer, tl.maximum(row, 0), s_seq, S_ALIGN)
    g_layer = tl.load(grad_out + layer).to(ACC)
    plane = as_int64(n_sel) * num_layers  # L * N_sel may pass 2^31
    g_start = tl.load(grad_offsets + g_index) + tl.maximum(row, 0) * dim
    if G_ALIGN > 1:  # checked on the host: lets the stores vectorise
        g_start = (g_start // G_ALIGN) * G_ALIGN
    g_row = grad + g_start

    for d0 in range(0, dim, TILE_D):
        cols = d0 + tl.arange(0, TILE_D)
        mask = cols < limit
        s = load_tile(s_base, s_start, s_stride, cols, mask, S_UNIT, ACC)
        acc = tl.zeros([TILE_D], dtype=ACC)
        for j in range(first, last):
            if HAS_ROWS:
                entry = tl.load(order + j)
            else:
                entry = j
            t_start, t_stride = row_starts(t_table, t_layer, entry, t_seq, T_ALIGN)
            t = load_tile(t_base, t_start, t_stride, cols, mask, T_UNIT, ACC)
            if HAS_WEIGHTS:
                coef = tl.load(weights + entry).to(ACC) * g_layer
            else:
                coef = inv_n * g_layer
            if LOSS == 0:
                acc += (2.0 * inv_dim * coef) * (s - t)
            else:
                at = layer * n_sel + entry
                inv_s = tl.load(stats + at)
                inv_t = tl.load(stats + plane + at)
                cos = tl.load(stats + 2 * plane + at)
                scale = -coef
                if LOSS == 1:
                    scale = scale * 2.0 * inv_dim
                acc += scale * (inv_s * inv_t * t - cos * inv_s * inv_s * s)
        tl.store(g_row + cols, round_to(acc, grad.dtype.element_ty, INTERPRET), mask=mask)
