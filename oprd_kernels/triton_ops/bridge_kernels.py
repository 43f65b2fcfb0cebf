"""Triton kernels of the OPRD-Bridge loss (semantics: oprd_kernels/reference/bridge.py).

The projection z = P_S h ([r] per row, r <= 64) lives only in registers: a program takes BLOCK_R rows of one layer,
forms Z = S @ P^T with tl.dot over D tiles, and compares Z with the precomputed teacher rows.

Forward: grid (cdiv(N_sel, BLOCK_R), L) over cache entries; writes the weighted row losses [L, N_sel].
Backward: grid (cdiv(N_sel, BLOCK_R), L) over row slots (_tables.row_slots). Pass 1 recomputes Z for the slot's
student row; the gradients dZ of the slot's entries are summed in registers; pass 2 writes dS = dZ @ P into the
row of the dense student gradient (skipped for layers that want none). When P_S needs a gradient (Stage 1), dZ is
also written to an [L, N_sel, r] buffer (per slot, in the accumulation dtype), and bridge_proj_grad_kernel forms
dP_l = dZ_l^T @ S_l: a GEMM over the slots that reads the student rows in place, with a fixed summation order and
no atomics, so the projector gradient is deterministic.

Loss codes: 0 = mse, 1 = nmse, 2 = cosine; all over the r-dimensional projected rows. NATIVE_DOT: the student
rows and the projector are 16-bit floats of one dtype and accumulate in fp32, so Z is formed on the tensor cores
(exact products); otherwise the operands are upcast to ACC and multiplied in IEEE arithmetic. INTERPRET: the
interpreter workarounds (interpreter.py).
"""

import triton
import triton.language as tl

from oprd_kernels.triton_ops.common import inverse_norm, load_rows, row_starts
from oprd_kernels.triton_ops.interpreter import dot_operand, round_to


@triton.jit
def _load_proj(p_ptr, ranks, cols, p_stride_r, p_stride_d, mask, P_UNIT: tl.constexpr):
    """A [R_PAD, TILE_D] tile of one layer's projector."""
    if P_UNIT:
        return tl.load(p_ptr + ranks[:, None] * p_stride_r + cols[None, :], mask=mask, other=0.0)
    return tl.load(p_ptr + ranks[:, None] * p_stride_r + cols[None, :] * p_stride_d, mask=mask, other=0.0)


@triton.jit
def _project(s_base, s_starts, s_stride, row_mask, p_ptr, p_stride_r, p_stride_d, rank, dim,
             S_UNIT: tl.constexpr, P_UNIT: tl.constexpr, NATIVE_DOT: tl.constexpr, ACC: tl.constexpr,
             BLOCK_R: tl.constexpr, R_PAD: tl.constexpr, TILE_D: tl.constexpr, INTERPRET: tl.constexpr):
    """Z [BLOCK_R, R_PAD] = S @ P^T for the rows at `s_starts` (masked rows and padded ranks give 0)."""
    ranks = tl.arange(0, R_PAD)
    z = tl.zeros([BLOCK_R, R_PAD], dtype=ACC)
    for d0 in range(0, dim, TILE_D):
        cols = d0 + tl.arange(0, TILE_D)
        s = load_rows(s_base, s_starts, s_stride, cols, row_mask[:, None] & (cols[None, :] < dim), S_UNIT)
        p = _load_proj(p_ptr, ranks, cols, p_stride_r, p_stride_d, (ranks[:, None] < rank) & (cols[None, :] < dim),
                       P_UNIT)
        if NATIVE_DOT:  # bf16/fp16 operands: exact products, fp32 accumulation
            z += tl.dot(dot_operand(s, s.dtype, INTERPRET), tl.trans(dot_operand(p, s.dtype, INTERPRET)),
                        out_dtype=ACC)
        else:
            z += tl.dot(s.to(ACC), tl.trans(p.to(ACC)), input_precision="ieee", out_dtype=ACC)
    return z


@triton.jit
def _row_terms(z, zt, inv_rank, eps_sq, LOSS: tl.constexpr):
    """Per-row loss [BLOCK_R] and the factors of its gradient: dloss/dz = a * z + b * zt."""
    if LOSS == 0:
        diff = z - zt
        return tl.sum(diff * diff, axis=1) * inv_rank, 2.0 * inv_rank, -2.0 * inv_rank
    zz = tl.sum(z * z, axis=1)
    tt = tl.sum(zt * zt, axis=1)
    inv_z = inverse_norm(zz, eps_sq)
    inv_t = inverse_norm(tt, eps_sq)
    cos = tl.sum(z * zt, axis=1) * inv_z * inv_t
    if LOSS == 1:
        loss = (zz * inv_z * inv_z + tt * inv_t * inv_t - 2.0 * cos) * inv_rank
        scale = 2.0 * inv_rank
    else:
        loss = 1.0 - cos
        scale = 1.0
    return loss, scale * cos * inv_z * inv_z, -scale * inv_z * inv_t


@triton.jit
def bridge_fwd_kernel(
    s_base, s_table, s_seq,
    z_base, z_table, z_seq,  # teacher_z layer table ([N_sel, r] per layer)
    proj, p_stride_l, p_stride_r, p_stride_d,
    rows, weights, row_loss,
    n_sel, rank, dim, eps_sq,
    LOSS: tl.constexpr, HAS_ROWS: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
    S_UNIT: tl.constexpr, S_ALIGN: tl.constexpr, P_UNIT: tl.constexpr, NATIVE_DOT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, R_PAD: tl.constexpr, TILE_D: tl.constexpr, INTERPRET: tl.constexpr,
):
    entries = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    layer = tl.program_id(1).to(tl.int64)
    live = entries < n_sel
    zero = tl.zeros([], dtype=ACC)
    if HAS_ROWS:
        rows_blk = tl.load(rows + entries, mask=live, other=0)
    else:
        rows_blk = tl.where(live, entries, 0)
    s_starts, s_stride = row_starts(s_table, layer, rows_blk, s_seq, S_ALIGN)
    z = _project(s_base, s_starts, s_stride, live, proj + layer * p_stride_l, p_stride_r, p_stride_d, rank, dim,
                 S_UNIT, P_UNIT, NATIVE_DOT, ACC, BLOCK_R, R_PAD, TILE_D, INTERPRET)
    ranks = tl.arange(0, R_PAD)
    z_starts, z_stride = row_starts(z_table, layer, tl.where(live, entries, 0), z_seq, 1)
    zt = tl.load(z_base + z_starts[:, None] + ranks[None, :] * z_stride,
                 mask=live[:, None] & (ranks[None, :] < rank), other=0.0).to(ACC)
    loss, _, _ = _row_terms(z, zt, 1.0 / (rank + zero), eps_sq, LOSS)
    if HAS_WEIGHTS:
        w = tl.load(weights + entries, mask=live, other=0.0).to(ACC)
    else:
        w = 1.0 / (n_sel + zero)
    tl.store(row_loss + layer * n_sel + entries, w * loss, mask=live)


@triton.jit
def bridge_bwd_kernel(
    s_base, s_table, s_seq,
    z_base, z_table, z_seq,
    proj, p_stride_l, p_stride_r, p_stride_d,
    order, slot_rows, slot_start,
    weights, grad_out, grad_index,  # grad_index: int64 [L], slot of each layer in `grad`, -1 when not wanted
    grad, grad_offsets, dz_out,  # dense gradients [B*S, D] at grad + grad_offsets[slot]; [L, N_sel, r] or unused
    n_sel, rank, dim, eps_sq,
    LOSS: tl.constexpr, HAS_ROWS: tl.constexpr, HAS_WEIGHTS: tl.constexpr, PROJ_GRAD: tl.constexpr,
    S_UNIT: tl.constexpr, S_ALIGN: tl.constexpr, P_UNIT: tl.constexpr, NATIVE_DOT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, R_PAD: tl.constexpr, TILE_D: tl.constexpr, G_ALIGN: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    slots = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    layer = tl.program_id(1).to(tl.int64)
    in_range = slots < n_sel
    zero = tl.zeros([], dtype=ACC)
    if HAS_ROWS:
        rows_blk = tl.load(slot_rows + slots, mask=in_range, other=-1)
        first = tl.load(slot_start + slots, mask=in_range, other=0)
        last = tl.load(slot_start + slots + 1, mask=in_range, other=0)
    else:
        rows_blk = tl.where(in_range, slots, -1)
        first = slots
        last = tl.where(in_range, slots + 1, slots)
    live = rows_blk >= 0
    rows_blk = tl.maximum(rows_blk, 0)
    s_starts, s_stride = row_starts(s_table, layer, rows_blk, s_seq, S_ALIGN)
    p_layer = proj + layer * p_stride_l
    z = _project(s_base, s_starts, s_stride, live, p_layer, p_stride_r, p_stride_d, rank, dim,
                 S_UNIT, P_UNIT, NATIVE_DOT, ACC, BLOCK_R, R_PAD, TILE_D, INTERPRET)

    ranks = tl.arange(0, R_PAD)
    g_layer = tl.load(grad_out + layer).to(ACC)
    inv_rank = 1.0 / (rank + zero)
    dz = tl.zeros([BLOCK_R, R_PAD], dtype=ACC)
    for k in range(0, tl.max(last - first, axis=0)):  # the longest run of repeated rows in this block
        j = first + k
        has = live & (j < last)
        if HAS_ROWS:
            entries = tl.load(order + j, mask=has, other=0)
        else:
            entries = tl.where(has, j, 0)
        z_starts, z_stride = row_starts(z_table, layer, entries, z_seq, 1)
        zt = tl.load(z_base + z_starts[:, None] + ranks[None, :] * z_stride,
                     mask=has[:, None] & (ranks[None, :] < rank), other=0.0).to(ACC)
        _, a, b = _row_terms(z, zt, inv_rank, eps_sq, LOSS)
        if HAS_WEIGHTS:
            w = tl.load(weights + entries, mask=has, other=0.0).to(ACC)
        else:
            w = tl.where(has, 1.0 / (n_sel + zero), 0.0)
        coef = w * g_layer
        dz += (coef * a)[:, None] * z + (coef * b)[:, None] * zt

    if PROJ_GRAD:  # unused slots store their zero dZ
        tl.store(dz_out + (layer * n_sel + slots)[:, None] * rank + ranks[None, :], dz,
                 mask=in_range[:, None] & (ranks[None, :] < rank))
    g_slot = tl.load(grad_index + layer)
    if g_slot >= 0:
        g_starts = tl.load(grad_offsets + g_slot) + rows_blk * dim
        if G_ALIGN > 1:  # checked on the host: lets the stores vectorise
            g_starts = (g_starts // G_ALIGN) * G_ALIGN
        g_rows = grad + g_starts
        for d0 in range(0, dim, TILE_D):
            cols = d0 + tl.arange(0, TILE_D)
            col_ok = cols[None, :] < dim
            p = _load_proj(p_layer, ranks, cols, p_stride_r, p_stride_d, (ranks[:, None] < rank) & col_ok,
                           P_UNIT).to(ACC)
            ds = tl.dot(dz, p, input_precision="ieee", out_dtype=ACC)  # [BLOCK_R, TILE_D]
            g_mask = live[:, None] & col_ok
            tl.store(g_rows[:, None] + cols[None, :], round_to(ds, grad.dtype.element_ty, INTERPRET), mask=g_mask)


@triton.jit
def bridge_proj_grad_kernel(
    s_base, s_table, s_seq,
    slot_rows,  # int64 [N_sel]: the student row of each slot, -1 for unused ones (unused without rows)
    dz, out,  # in: dZ [L, N_sel, r]; out: [splits, L, r, D], one partial dP per split of the slots (ACC dtype)
    n_sel, rank, dim, k_chunk,  # k_chunk: slots per split, a multiple of BLOCK_K
    HAS_ROWS: tl.constexpr, S_UNIT: tl.constexpr, S_ALIGN: tl.constexpr, ACC: tl.constexpr,
    BLOCK_K: tl.constexpr, R_PAD: tl.constexpr, TILE_D: tl.constexpr,
):
    """One [r, TILE_D] tile of sum over the slots of split `split` of dZ_u^T s_u, for one layer; slots in order."""
    d_tiles = tl.cdiv(dim, TILE_D)
    pid = tl.program_id(0).to(tl.int64)
    split = pid // d_tiles
    cols = (pid - split * d_tiles) * TILE_D + tl.arange(0, TILE_D)
    layer = tl.program_id(1).to(tl.int64)
    ranks = tl.arange(0, R_PAD)
    col_ok = cols < dim
    acc = tl.zeros([R_PAD, TILE_D], dtype=ACC)
    k_start = split * k_chunk
    k_stop = tl.minimum(k_start + k_chunk, n_sel)
    for k0 in range(k_start, k_stop, BLOCK_K):
        slots = k0 + tl.arange(0, BLOCK_K)
        in_range = slots < k_stop
        if HAS_ROWS:
            rows_blk = tl.load(slot_rows + slots, mask=in_range, other=-1)
        else:
            rows_blk = tl.where(in_range, slots, -1)
        live = rows_blk >= 0
        s_starts, s_stride = row_starts(s_table, layer, tl.maximum(rows_blk, 0), s_seq, S_ALIGN)
        s = load_rows(s_base, s_starts, s_stride, cols, live[:, None] & col_ok[None, :], S_UNIT).to(ACC)
        g = tl.load(dz + (layer * n_sel + slots)[:, None] * rank + ranks[None, :],
                    mask=live[:, None] & (ranks[None, :] < rank), other=0.0)
        acc += tl.dot(tl.trans(g), s, input_precision="ieee", out_dtype=ACC)
    at = ((split * tl.num_programs(1) + layer) * rank + ranks[:, None]) * dim + cols[None, :]
    tl.store(out + at, acc, mask=(ranks[:, None] < rank) & col_ok[None, :])
