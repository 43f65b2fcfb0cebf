"""Triton kernels of the fused OPD passes (host side and semantics: oprd_kernels/triton_ops/opd.py, which matches
oprd_kernels/opd/stats.py and oprd_kernels/opd/_gradient.py).

Every kernel here computes tiles of the logits z = hidden @ weight.T with tl.dot over D in BLOCK_D chunks: the
operands are read in place through their strides (live rows through `rows` when given), cast in registers to the
LM head's matmul dtype (DOT) and multiplied with an fp32 accumulator; everything after the dot is fp32.

    opd_stats_kernel        grid (row blocks x vocab splits): online max / sum exp / sum exp * z, optional top-k
    opd_kl_stats_kernel     grid (row blocks x vocab splits): the same for the student and the teacher side by side,
                            with the running sum exp(z_p) * (z_p - z_q)
    opd_logits_at_kernel    grid (blocks of (row, j) pairs): z[r, ids[r, j]] as a dot of two gathered rows
    opd_grad_tile_kernel    grid (row blocks, vocab blocks) of one slab: d loss / d z, written in the matmul dtype
    opd_matmul_acc_kernel   C (fp32) += A @ B, B's rows optionally gathered: the two gradient products of a slab

A vocabulary split writes its partial statistics ([fields, splits, n], each relative to its own running max); the
host merges the splits with a few [splits, n] torch ops. The statistics grids are 1-D and grouped (GROUP_R row
blocks x all splits run at once): every program streams d for each of its tiles, so the programs in flight should
share few hidden-row panels and few weight panels. With one split, the ~2 x 132 programs in flight on an H200 would
hold ~100 MB of distinct hidden rows, more than L2, and re-read them from HBM for every vocabulary block; with 16
row blocks x 16 splits they hold ~6 MB of each.

DOT / T_DOT: the student's / teacher's matmul dtype; PREC / T_PREC: tl.dot's input precision for fp32 operands.
EVEN_D / T_EVEN_D / EVEN_K: the student's / teacher's d (the GEMM's K) is a multiple of the block along it, so the
operand loads are masked by row only (d = 896, 1536, 2048, 3584, 4096 with 64-wide bf16 blocks).
INTERPRET: the interpreter workarounds (interpreter.py): under the interpreter the operands are rounded to DOT and
multiplied in fp32 (dot_operand), and a bf16 gradient slab is rounded to nearest even (round_to).
"""

import triton
import triton.language as tl

from oprd_kernels.triton_ops.common import load_rows
from oprd_kernels.triton_ops.interpreter import dot_operand, round_to


@triton.jit
def logits_tile(h_base, h_offs, h_sd, row_ok, w_base, w_offs, w_sd, col_ok, dim,
                H_UNIT: tl.constexpr, W_UNIT: tl.constexpr, DOT: tl.constexpr, INTERPRET: tl.constexpr,
                PREC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                EVEN_D: tl.constexpr):
    """fp32 [BLOCK_N, BLOCK_V] = h[rows] @ w[cols].T for hidden rows at element offsets `h_offs` and weight rows at
    `w_offs`; masked rows/columns read zeros (so give logit 0). EVEN_D: dim is a multiple of BLOCK_D, so the loads
    are masked by row only (no per-element column test in the operand loads)."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        if EVEN_D:
            h_mask = row_ok[:, None]
            w_mask = col_ok[:, None]
        else:
            h_mask = row_ok[:, None] & (d < dim)[None, :]
            w_mask = col_ok[:, None] & (d < dim)[None, :]
        h = load_rows(h_base, h_offs, h_sd, d, h_mask, H_UNIT)
        w = load_rows(w_base, w_offs, w_sd, d, w_mask, W_UNIT)
        acc = tl.dot(dot_operand(h, DOT, INTERPRET), tl.trans(dot_operand(w, DOT, INTERPRET)), acc,
                     input_precision=PREC, out_dtype=tl.float32)
    return acc


@triton.jit
def _row_offsets(rows, local, row_ok, h_sn, HAS_ROWS: tl.constexpr):
    """Element offsets of the hidden rows of live rows `local` (through `rows` when given; 0 for masked rows)."""
    if HAS_ROWS:
        idx = tl.load(rows + local, mask=row_ok, other=0)
    else:
        idx = tl.where(row_ok, local, 0)
    return idx.to(tl.int64) * h_sn


@triton.jit
def grouped(pid, tiles_m, tiles_n, GROUP: tl.constexpr):
    """(tile along M, tile along N) of program `pid` in a 1-D grid ordered in groups GROUP tiles deep along M: the
    programs running at once cover ~GROUP M-tiles x the N-tiles, so both operand panels they read stay in L2."""
    group = GROUP * tiles_n
    first = (pid // group) * GROUP
    height = tl.minimum(tiles_m - first, GROUP)
    return (first + (pid % group) % height).to(tl.int64), ((pid % group) // height).to(tl.int64)


@triton.jit
def _pack(z, cols):
    """int64 keys whose signed order is (logit, then the smaller vocabulary id): the float's bits made
    order-preserving in the high word, 0x7FFFFFFF - id in the low word."""
    bits = (z + 0.0).to(tl.int32, bitcast=True)  # + 0.0: -0.0 becomes +0.0, so equal zeros tie (and go by id)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (key.to(tl.int64) << 32) | (0x7FFFFFFF - cols).to(tl.int64)


@triton.jit
def _unpack(keys):
    key = (keys >> 32).to(tl.int32)
    bits = key ^ ((key >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True), 0x7FFFFFFF - (keys & 0x7FFFFFFF)


@triton.jit
def _merge_topk(run, keys):
    """Fold a tile's keys [BLOCK_N, BLOCK_V] into each row's running K_PAD largest keys `run` (distinct keys).
    Only keys above the row's current K_PAD-th can enter; the tile's largest such key replaces the row's smallest,
    as many times as the most such keys in any row (at most K_PAD, and after the first tiles usually 0 to 2), so the
    cost is a few vector ops per logit instead of a sort of the tile."""
    K_PAD: tl.constexpr = run.shape[1]
    removed = -0x7FFFFFFFFFFFFFFF  # below every key (a -inf logit's key is about -2^63 + 2^55)
    above = keys > tl.min(run, axis=1)[:, None]
    rounds = tl.minimum(tl.max(tl.sum(above.to(tl.int32), axis=1), axis=0), K_PAD)
    keys = tl.where(above, keys, removed)
    for _ in range(0, rounds):
        best = tl.max(keys, axis=1)
        worst = tl.min(run, axis=1)
        enter = (run == worst[:, None]) & (best > worst)[:, None]
        run = tl.where(enter, best[:, None], run)
        keys = tl.where(keys == best[:, None], removed, keys)
    return run


@triton.jit
def opd_stats_kernel(
    h_base, h_sn, h_sd, rows,  # hidden [N, d] (strided), rows: int64 [n] live rows or unused
    w_base, w_sv, w_sd,  # weight [V, d] (strided)
    part,  # out fp32 [3, S, n]: per split, running max m, sum exp(z - m), sum exp(z - m) * z
    top_v, top_i,  # out [S, n, K_PAD] fp32 logits / int64 ids of each split's K_PAD largest logits (TOPK only)
    n, vocab, dim, v_chunk,
    HAS_ROWS: tl.constexpr, ENTROPY: tl.constexpr, K_PAD: tl.constexpr,
    H_UNIT: tl.constexpr, W_UNIT: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
    GROUP_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_D: tl.constexpr, INTERPRET: tl.constexpr,
):
    """One program: BLOCK_N live rows against the vocabulary split [split * v_chunk, +v_chunk) (v_chunk is a multiple
    of BLOCK_V). K_PAD > 0 also keeps each row's K_PAD largest logits as packed (logit, id) keys (_merge_topk)."""
    splits = tl.cdiv(vocab, v_chunk)
    pid, split = grouped(tl.program_id(0), tl.cdiv(n, BLOCK_N), splits, GROUP_R)
    local = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = local < n
    h_offs = _row_offsets(rows, local, row_ok, h_sn, HAS_ROWS)
    v_start = split * v_chunk
    v_stop = tl.minimum(v_start + v_chunk, vocab)

    m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    s = tl.zeros([BLOCK_N], dtype=tl.float32)
    ez = tl.zeros([BLOCK_N], dtype=tl.float32)
    if K_PAD > 0:  # placeholders: -inf logits under ids no column has (distinct keys, below every real logit)
        run = _pack(tl.full([BLOCK_N, K_PAD], float("-inf"), dtype=tl.float32),
                    0x40000000 + tl.arange(0, K_PAD).to(tl.int64)[None, :])
    for v0 in range(v_start, v_stop, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_stop
        zt = logits_tile(h_base, h_offs, h_sd, row_ok, w_base, cols * w_sv, w_sd, col_ok, dim,
                         H_UNIT, W_UNIT, DOT, INTERPRET, PREC, BLOCK_N, BLOCK_V, BLOCK_D, EVEN_D)  # 0: masked cols
        z = tl.where(col_ok[None, :], zt, float("-inf"))
        tile_max = tl.max(z, axis=1)
        m_new = tl.maximum(m, tile_max)
        scale = tl.exp(m - m_new)
        e = tl.exp(z - m_new[:, None])
        s = s * scale + tl.sum(e, axis=1)
        if ENTROPY:
            ez = ez * scale + tl.sum(e * zt, axis=1)
        m = m_new
        if K_PAD > 0:
            run = _merge_topk(run, _pack(z, cols[None, :]))
    out = split * n + local
    plane = n * splits
    tl.store(part + out, m, mask=row_ok)
    tl.store(part + plane + out, s, mask=row_ok)
    if ENTROPY:
        tl.store(part + 2 * plane + out, ez, mask=row_ok)
    if K_PAD > 0:
        vals, ids = _unpack(run)
        at = out[:, None] * K_PAD + tl.arange(0, K_PAD)[None, :]
        tl.store(top_v + at, vals, mask=row_ok[:, None])
        tl.store(top_i + at, ids, mask=row_ok[:, None])


@triton.jit
def opd_kl_stats_kernel(
    h_base, h_sn, h_sd, w_base, w_sv, w_sd,  # student hidden [N, d_s], weight [V, d_s]
    t_base, t_sn, t_sd, tw_base, tw_sv, tw_sd,  # teacher hidden [N, d_t], weight [V, d_t]
    rows, part,  # out fp32 [5, S, n]: m_p, sum exp(z_p - m_p), sum exp(z_p - m_p) (z_p - z_q), m_q, sum exp(z_q - m_q)
    n, vocab, dim, t_dim, v_chunk,
    HAS_ROWS: tl.constexpr, H_UNIT: tl.constexpr, W_UNIT: tl.constexpr, T_UNIT: tl.constexpr,
    TW_UNIT: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr, T_DOT: tl.constexpr, T_PREC: tl.constexpr,
    GROUP_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_D: tl.constexpr, T_EVEN_D: tl.constexpr, INTERPRET: tl.constexpr,
):
    """Student and teacher tiles of the same (rows, vocabulary block), two dots per tile, one pass: both online
    log-sum-exps and E_p[z_p - z_q] (with p's rescaling), as stats.reverse_kl_stats."""
    splits = tl.cdiv(vocab, v_chunk)
    pid, split = grouped(tl.program_id(0), tl.cdiv(n, BLOCK_N), splits, GROUP_R)
    local = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = local < n
    h_offs = _row_offsets(rows, local, row_ok, h_sn, HAS_ROWS)
    t_offs = _row_offsets(rows, local, row_ok, t_sn, HAS_ROWS)
    v_start = split * v_chunk
    v_stop = tl.minimum(v_start + v_chunk, vocab)

    mp = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    mq = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    sp = tl.zeros([BLOCK_N], dtype=tl.float32)
    sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    diff = tl.zeros([BLOCK_N], dtype=tl.float32)
    for v0 in range(v_start, v_stop, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_stop
        zp = logits_tile(h_base, h_offs, h_sd, row_ok, w_base, cols * w_sv, w_sd, col_ok, dim,
                         H_UNIT, W_UNIT, DOT, INTERPRET, PREC, BLOCK_N, BLOCK_V, BLOCK_D, EVEN_D)
        zq = logits_tile(t_base, t_offs, t_sd, row_ok, tw_base, cols * tw_sv, tw_sd, col_ok, t_dim,
                         T_UNIT, TW_UNIT, T_DOT, INTERPRET, T_PREC, BLOCK_N, BLOCK_V, BLOCK_D, T_EVEN_D)
        delta = tl.where(col_ok[None, :], zp - zq, 0.0)
        zp = tl.where(col_ok[None, :], zp, float("-inf"))
        zq = tl.where(col_ok[None, :], zq, float("-inf"))
        mp_new = tl.maximum(mp, tl.max(zp, axis=1))
        scale = tl.exp(mp - mp_new)
        e = tl.exp(zp - mp_new[:, None])
        sp = sp * scale + tl.sum(e, axis=1)
        diff = diff * scale + tl.sum(e * delta, axis=1)
        mp = mp_new
        mq_new = tl.maximum(mq, tl.max(zq, axis=1))
        sq = sq * tl.exp(mq - mq_new) + tl.sum(tl.exp(zq - mq_new[:, None]), axis=1)
        mq = mq_new

    out = split * n + local
    plane = n * splits
    tl.store(part + out, mp, mask=row_ok)
    tl.store(part + plane + out, sp, mask=row_ok)
    tl.store(part + 2 * plane + out, diff, mask=row_ok)
    tl.store(part + 3 * plane + out, mq, mask=row_ok)
    tl.store(part + 4 * plane + out, sq, mask=row_ok)


@triton.jit
def opd_logits_at_kernel(
    h_base, h_sn, h_sd, rows, w_base, w_sv, w_sd,
    ids, ids_sr, ids_sk,  # int64 [n, k] (strided)
    out,  # fp32 [n, k] contiguous: the logits z[r, ids[r, j]]
    n, k, dim,
    HAS_ROWS: tl.constexpr, H_UNIT: tl.constexpr, W_UNIT: tl.constexpr, DOT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, INTERPRET: tl.constexpr,
):
    """The logits at given ids as n * k row dots (operands rounded to the matmul dtype, exact products, fp32 sums):
    2 * n * k * d bytes read instead of a compare-and-select on every [rows, vocab] tile, which would cost k
    vector ops per logit in the statistics pass."""
    pairs = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    ok = pairs < n * k
    r = pairs // k
    j = pairs - r * k
    h_offs = _row_offsets(rows, r, ok, h_sn, HAS_ROWS)
    w_offs = tl.load(ids + r * ids_sr + j * ids_sk, mask=ok, other=0) * w_sv
    acc = tl.zeros([BLOCK_P], dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        if EVEN_D:
            mask = ok[:, None]
        else:
            mask = ok[:, None] & (d < dim)[None, :]
        h = dot_operand(load_rows(h_base, h_offs, h_sd, d, mask, H_UNIT), DOT, INTERPRET).to(tl.float32)
        w = dot_operand(load_rows(w_base, w_offs, w_sd, d, mask, W_UNIT), DOT, INTERPRET).to(tl.float32)
        acc += tl.sum(h * w, axis=1)
    tl.store(out + pairs, acc, mask=ok)


@triton.jit
def opd_grad_tile_kernel(
    h_base, h_sn, h_sd, rows, w_base, w_sv, w_sd,
    lse,  # fp32 [n] student log-sum-exp
    dense, ids, ids_sr, ids_sk, sparse, sp_sr, sp_sk,  # dense/sparse form: [n], int64 [n, k], fp32 [n, k]
    t_base, t_sn, t_sd, tw_base, tw_sv, tw_sd, lse_q, kl, row_w,  # KL form: teacher hidden/weight, [n] x 3
    g, g_sr,  # out: [rs, vs] slab of d loss / d logits (row stride g_sr), in the matmul dtype
    r0, rs, v0, vs, dim, t_dim, k,
    KL: tl.constexpr, HAS_ROWS: tl.constexpr, H_UNIT: tl.constexpr, W_UNIT: tl.constexpr, T_UNIT: tl.constexpr,
    TW_UNIT: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr, T_DOT: tl.constexpr, T_PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    T_EVEN_D: tl.constexpr, INTERPRET: tl.constexpr,
):
    """d loss / d z on the slab rows [r0, r0 + rs) x vocabulary [v0, v0 + vs), formed in registers from the
    recomputed tile (see oprd_kernels/opd/_gradient.py for the two forms):
        g = dense * p + sum_j sparse_j [v == ids_j]            (KL = False)
        g = row_w * p * (log p - log q - KL)                     (KL = True; the teacher tile is recomputed too)
    The host passes the form's arguments by name (opd_grad_form.GradForm); the other form's pointers are None."""
    r_loc = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    c_loc = tl.program_id(1).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = r_loc < rs
    col_ok = c_loc < vs
    live = r0 + r_loc
    cols = v0 + c_loc
    h_offs = _row_offsets(rows, live, row_ok, h_sn, HAS_ROWS)
    z = logits_tile(h_base, h_offs, h_sd, row_ok, w_base, cols * w_sv, w_sd, col_ok, dim,
                    H_UNIT, W_UNIT, DOT, INTERPRET, PREC, BLOCK_N, BLOCK_V, BLOCK_D, EVEN_D)
    log_p = z - tl.load(lse + live, mask=row_ok, other=0.0)[:, None]
    p = tl.exp(log_p)
    if KL:
        t_offs = _row_offsets(rows, live, row_ok, t_sn, HAS_ROWS)
        zq = logits_tile(t_base, t_offs, t_sd, row_ok, tw_base, cols * tw_sv, tw_sd, col_ok, t_dim,
                         T_UNIT, TW_UNIT, T_DOT, INTERPRET, T_PREC, BLOCK_N, BLOCK_V, BLOCK_D, T_EVEN_D)
        log_q = zq - tl.load(lse_q + live, mask=row_ok, other=0.0)[:, None]
        kl_r = tl.load(kl + live, mask=row_ok, other=0.0)
        w_r = tl.load(row_w + live, mask=row_ok, other=0.0)
        grad = p * (log_p - log_q - kl_r[:, None]) * w_r[:, None]
    else:
        grad = p * tl.load(dense + live, mask=row_ok, other=0.0)[:, None]
        for j in range(0, k):
            tok = tl.load(ids + live * ids_sr + j * ids_sk, mask=row_ok, other=-1)
            coef = tl.load(sparse + live * sp_sr + j * sp_sk, mask=row_ok, other=0.0)
            grad += tl.where(cols[None, :] == tok[:, None], coef[:, None], 0.0)
    at = g + r_loc[:, None] * g_sr + c_loc[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    tl.store(at, round_to(grad, g.dtype.element_ty, INTERPRET), mask=mask)


@triton.jit
def opd_matmul_acc_kernel(
    a, a_sm, a_sk,  # A [M, K] in the matmul dtype (strided: the gradient slab or its transpose)
    b, b_rows, b_sk, b_sn,  # B [K, N]: row kk at b + (b_rows[kk] if B_ROWS else kk) * b_sk
    c, c_sm,  # C fp32 [M, N], unit column stride; C += A @ B
    M, N, K,
    A_LAYOUT: tl.constexpr, B_ROWS: tl.constexpr, B_UNIT: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
    GROUP_M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, INTERPRET: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of C += A @ B with an fp32 accumulator; C is read and written once per tile (the
    caller owns it: no atomics, deterministic). A_LAYOUT: 1 = A's K stride is 1, 2 = A's M stride is 1, 0 = any.
    EVEN_K: K is a multiple of BLOCK_K.
    Programs are grouped GROUP_M tiles deep along M (grouped)."""
    pid_m, pid_n = grouped(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        if EVEN_K:  # K is a multiple of BLOCK_K: no per-element test along K
            k_ok = kk >= 0
        else:
            k_ok = kk < K
        a_mask = m_ok[:, None] & k_ok[None, :]
        if A_LAYOUT == 1:
            x = tl.load(a + rm[:, None] * a_sm + kk[None, :], mask=a_mask, other=0.0)
        elif A_LAYOUT == 2:
            x = tl.load(a + rm[:, None] + kk[None, :] * a_sk, mask=a_mask, other=0.0)
        else:
            x = tl.load(a + rm[:, None] * a_sm + kk[None, :] * a_sk, mask=a_mask, other=0.0)
        if B_ROWS:
            b_offs = tl.load(b_rows + kk, mask=k_ok, other=0) * b_sk
        else:
            b_offs = kk * b_sk
        y = load_rows(b, b_offs, b_sn, rn, k_ok[:, None] & n_ok[None, :], B_UNIT)
        acc = tl.dot(dot_operand(x, DOT, INTERPRET), dot_operand(y, DOT, INTERPRET), acc, input_precision=PREC,
                     out_dtype=tl.float32)
    at = c + rm[:, None] * c_sm + rn[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    tl.store(at, tl.load(at, mask=mask, other=0.0) + acc, mask=mask)
