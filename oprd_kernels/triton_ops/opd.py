"""The `triton` backend of the fused OPD's three vocabulary passes (the seam: oprd_kernels/opd/_passes.py).

`logit_stats`, `reverse_kl_stats` and `backprop_logits` have exactly the signatures, meaning and results of the chunked
PyTorch passes in oprd_kernels/opd/stats.py and oprd_kernels/opd/_gradient.py; the kernels are in opd_kernels.py.
The tile is computed by tl.dot in the LM head's matmul dtype (`mm_dtype(s)`) with fp32 accumulation (the chunked pass
rounds each tile to the matmul dtype first, so this is at least as accurate); all softmax quantities are fp32.
`tiling` is the chunked path's tile: the statistics kernels pick their own blocks, the gradient uses it as its slab.

Statistics (logit_stats, reverse_kl_stats): one fused pass, a grouped grid of row blocks x vocabulary splits (merged
here with [splits, n] torch ops; they keep the operand panels in flight L2-resident and fill the GPU when n is
small); nothing of size [n, V] touches memory. The logits at `ids` come from a separate kernel of n * k row dots.
Top-k runs in the statistics kernel: each split keeps its K_PAD = next_pow2(k) largest logits per row as packed
(logit, id) int64 keys (opd_kernels._merge_topk), merged here over [n, splits * K_PAD] by the project's one order
(larger logit, then smaller id: oprd_kernels._topk).

Gradient (backprop_logits): per slab of the live rows x vocabulary (`tiling`'s row_block x vocab_block), one kernel
recomputes the logits (and the teacher's for the KL form), forms d loss / d z in registers and writes it once in the
matmul dtype; two deterministic tl.dot GEMMs then add slab @ weight[slab] into the fp32 hidden-state gradient and
slab.T @ hidden[slab rows] into the fp32 weight gradient of the vocabulary slab (no atomics). Why not keep g in
registers only: at d = 1536 neither gradient's [rows, d] / [vocab, d] accumulator fits in registers, so a fully fused
kernel must read-modify-write (or atomically add) an fp32 accumulator once per 128-wide tile, ~8 * N * V * d / 128
bytes (~480 GB per gradient at N = 32768, V = 151936), against ~3 * 2 * N * V bytes (~30 GB) for writing the slab
once in bf16 and reading it twice; the products then run as plain GEMMs with K = the slab's width.

Falls back to the chunked functions: float64 (result or matmul dtype; tl.dot has no fp64 on the tensor cores), n = 0,
and top-k with k > MAX_TOPK (the running candidates live in registers).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from oprd_kernels._topk import merge_topk
from oprd_kernels.opd import _gradient as chunked_gradient
from oprd_kernels.opd import stats as chunked_stats
from oprd_kernels.opd._gradient import HeadGradients, LogitGradient
from oprd_kernels.opd._tiles import Tiling
from oprd_kernels.opd.stats import KLStats, LogitStats
from oprd_kernels.triton_ops.common import interpreting
from oprd_kernels.triton_ops.opd_grad_form import GradForm
from oprd_kernels.triton_ops.opd_kernels import (
    opd_grad_tile_kernel,
    opd_kl_stats_kernel,
    opd_logits_at_kernel,
    opd_matmul_acc_kernel,
    opd_stats_kernel,
)

MAX_TOPK = 64  # larger k: the chunked logit_stats (its torch.topk merge per tile)

# Block sizes per kernel: CUDA (sm_90 / sm_80; checked spill-free by benchmarks/compile_report.py) and the
# interpreter (CPU tensors under TRITON_INTERPRET=1, where small tiles keep the tests fast). BLOCK_D is in bytes of
# the stored dtype on CUDA (128 B: 64 bf16 or 32 fp32 columns per chunk), so fp32 fits sm_80's shared memory too.
BLOCKS = {
    "cuda": {
        "stats": dict(BLOCK_N=128, BLOCK_V=128, D_BYTES=128, num_warps=8, num_stages=3),
        "topk": dict(BLOCK_N=64, BLOCK_V=128, D_BYTES=128, num_warps=8, num_stages=3),
        "kl": dict(BLOCK_N=64, BLOCK_V=128, D_BYTES=128, num_warps=8, num_stages=3),
        "at": dict(BLOCK_P=64, D_BYTES=256, num_warps=4, num_stages=2),
        "grad": dict(BLOCK_N=128, BLOCK_V=128, D_BYTES=128, num_warps=8, num_stages=3),
        "grad_kl": dict(BLOCK_N=64, BLOCK_V=128, D_BYTES=128, num_warps=8, num_stages=3),
        "mm": dict(BLOCK_M=128, BLOCK_N=128, K_BYTES=128, GROUP_M=8, num_warps=8, num_stages=3),
    },
    "cpu": {
        "stats": dict(BLOCK_N=16, BLOCK_V=32, BLOCK_D=16),
        "topk": dict(BLOCK_N=16, BLOCK_V=32, BLOCK_D=16),
        "kl": dict(BLOCK_N=16, BLOCK_V=32, BLOCK_D=16),
        "at": dict(BLOCK_P=32, BLOCK_D=16),
        "grad": dict(BLOCK_N=16, BLOCK_V=32, BLOCK_D=16),
        "grad_kl": dict(BLOCK_N=16, BLOCK_V=32, BLOCK_D=16),
        "mm": dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2),
    },
}
# Vocabulary splits of the statistics kernels: at least MIN_SPLITS (L2 reuse, see opd_kernels.py), more when there
# are few row blocks, up to TARGET_PROGRAMS in all (two per SM on CUDA; a few on the interpreter, so that small tests
# cover the merge). GROUP_R: the row blocks of a group in flight.
MIN_SPLITS = {"cuda": 16, "cpu": 1}
GROUP_R = {"cuda": 16, "cpu": 2}
TARGET_PROGRAMS_CPU = 4
MIN_SLAB = {"cuda": 128, "cpu": 16}  # the gradient slab's least rows / vocabulary entries

_GL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _kind(device: torch.device) -> str:
    return "cuda" if device.type == "cuda" else "cpu"


def _blocks(name: str, device: torch.device, *dtypes: torch.dtype) -> dict:
    """Launch options of kernel `name`: BLOCK_D / BLOCK_K from the widest stored dtype on CUDA."""
    opts = dict(BLOCKS[_kind(device)][name])
    width = max(d.itemsize for d in dtypes) if dtypes else 2
    for key, block in (("D_BYTES", "BLOCK_D"), ("K_BYTES", "BLOCK_K")):
        if key in opts:
            opts[block] = max(16, opts.pop(key) // width)
    return opts


def _even(dim: int, opts: dict, block: str = "BLOCK_D") -> bool:
    """Whether `dim` is a multiple of the launch's block along it (the kernels' EVEN_D / EVEN_K)."""
    return dim % opts[block] == 0


def _dot_flags(mm: torch.dtype, device: torch.device, prefix: str = "") -> dict:
    """DOT/PREC for a matmul dtype: tl.dot on `mm` with fp32 accumulation (fp32: IEEE unless torch allows TF32 for
    fp32 matmuls on CUDA, as torch's own matmul would). Under the interpreter the dot is emulated exactly in fp32
    (interpreter.dot_operand)."""
    tf32 = not interpreting(device) and torch.get_float32_matmul_precision() != "highest"
    return {f"{prefix}DOT": _GL_DTYPES[mm], f"{prefix}PREC": "tf32" if tf32 else "ieee"}


def _unsupported(out_dtype: torch.dtype, *dtypes: torch.dtype) -> bool:
    return out_dtype != torch.float32 or any(d not in _GL_DTYPES for d in dtypes)


def _num_live(hidden: Tensor, rows: Tensor | None) -> int:
    return hidden.shape[0] if rows is None else rows.shape[0]


def _splits(row_programs: int, vocab: int, block_v: int, device: torch.device) -> tuple[int, int]:
    """(number of vocabulary splits, vocabulary entries per split: a multiple of block_v)."""
    if device.type == "cuda":
        target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = TARGET_PROGRAMS_CPU
    blocks = triton.cdiv(vocab, block_v)
    want = max(1, min(blocks, max(MIN_SPLITS[_kind(device)], triton.cdiv(target, max(row_programs, 1)))))
    chunk = triton.cdiv(blocks, want) * block_v
    return triton.cdiv(vocab, chunk), chunk


def _merge(m: Tensor, s: Tensor, *acc: Tensor) -> tuple[Tensor, ...]:
    """Merge per-split online statistics [S, n] into (max, sum exp, *sums), all relative to the merged max."""
    top = m.amax(dim=0)
    scale = torch.exp(m - top)
    return (top, (s * scale).sum(0), *((a * scale).sum(0) for a in acc))


def _rows_arg(rows: Tensor | None) -> Tensor | None:
    return None if rows is None else rows.contiguous()


def logits_at(hidden: Tensor, weight: Tensor, rows: Tensor | None, ids: Tensor, mm_dtype: torch.dtype) -> Tensor:
    """fp32 [n, k] logits z[r, ids[r, j]] of the live rows (same rounding as the tiles: operands in the matmul
    dtype, fp32 products and sums)."""
    n, k = ids.shape
    out = torch.empty((n, k), dtype=torch.float32, device=hidden.device)
    if n * k == 0:
        return out
    opts = _blocks("at", hidden.device, hidden.dtype, weight.dtype)
    flags = _dot_flags(mm_dtype, hidden.device)
    flags.pop("PREC")
    opd_logits_at_kernel[(triton.cdiv(n * k, opts["BLOCK_P"]),)](
        hidden, *hidden.stride(), _rows_arg(rows), weight, *weight.stride(), ids, *ids.stride(), out,
        n, k, weight.shape[1], HAS_ROWS=rows is not None, H_UNIT=hidden.stride(1) == 1,
        W_UNIT=weight.stride(1) == 1, EVEN_D=_even(weight.shape[1], opts), INTERPRET=interpreting(hidden.device),
        **flags, **opts)
    return out


def logit_stats(hidden: Tensor, weight: Tensor, rows: Tensor | None, tiling: Tiling, mm_dtype: torch.dtype,
                out_dtype: torch.dtype, *, ids: Tensor | None = None, topk: int = 0,
                entropy: bool = False) -> LogitStats:
    """As oprd_kernels.opd.stats.logit_stats (the chunked pass), fused. Falls back to it for float64 and for
    topk > MAX_TOPK."""
    n, vocab = _num_live(hidden, rows), weight.shape[0]
    if n == 0 or topk > MAX_TOPK or _unsupported(out_dtype, mm_dtype, hidden.dtype, weight.dtype):
        return chunked_stats.logit_stats(hidden, weight, rows, tiling, mm_dtype, out_dtype, ids=ids, topk=topk,
                                         entropy=entropy)
    device = hidden.device
    k_pad = triton.next_power_of_2(topk) if topk else 0
    opts = _blocks("topk" if topk else "stats", device, hidden.dtype, weight.dtype)
    opts["BLOCK_V"] = max(opts["BLOCK_V"], k_pad)  # tl.topk takes at most the tile's width
    row_programs = triton.cdiv(n, opts["BLOCK_N"])
    splits, chunk = _splits(row_programs, vocab, opts["BLOCK_V"], device)
    part = torch.empty((3, splits, n), dtype=torch.float32, device=device)
    top_v = torch.empty((splits, n, k_pad), dtype=torch.float32, device=device) if topk else None
    top_i = torch.empty((splits, n, k_pad), dtype=torch.int64, device=device) if topk else None
    with torch.no_grad():
        opd_stats_kernel[(row_programs * splits,)](
            hidden, *hidden.stride(), _rows_arg(rows), weight, *weight.stride(), part, top_v, top_i,
            n, vocab, weight.shape[1], chunk, HAS_ROWS=rows is not None, ENTROPY=entropy, K_PAD=k_pad,
            H_UNIT=hidden.stride(1) == 1, W_UNIT=weight.stride(1) == 1, GROUP_R=GROUP_R[_kind(device)],
            EVEN_D=_even(weight.shape[1], opts), INTERPRET=interpreting(device), **_dot_flags(mm_dtype, device),
            **opts)
        m, s, ez = _merge(part[0], part[1], part[2]) if entropy else (*_merge(part[0], part[1]), None)
        lse = m + torch.log(s)
        ent = lse - ez / s if entropy else None
        at_ids = logits_at(hidden, weight, rows, ids, mm_dtype) if ids is not None else None
        values = indices = None
        if topk:
            cand_v = top_v.permute(1, 0, 2).reshape(n, splits * k_pad)
            cand_i = top_i.permute(1, 0, 2).reshape(n, splits * k_pad)
            values, indices = merge_topk(cand_v, cand_i, topk)  # ties across splits: the smaller id
    return LogitStats(lse, at_ids, values, indices, ent)


def reverse_kl_stats(hidden: Tensor, weight: Tensor, t_hidden: Tensor, t_weight: Tensor, rows: Tensor | None,
                     tiling: Tiling, mm_dtypes: tuple[torch.dtype, torch.dtype], out_dtype: torch.dtype) -> KLStats:
    """As oprd_kernels.opd.stats.reverse_kl_stats, fused: both models' tiles in one kernel. Float64 falls back."""
    n, vocab = _num_live(hidden, rows), weight.shape[0]
    dtypes = (hidden.dtype, weight.dtype, t_hidden.dtype, t_weight.dtype)
    if n == 0 or _unsupported(out_dtype, *mm_dtypes, *dtypes):
        return chunked_stats.reverse_kl_stats(hidden, weight, t_hidden, t_weight, rows, tiling, mm_dtypes, out_dtype)
    device = hidden.device
    opts = _blocks("kl", device, *dtypes)
    row_programs = triton.cdiv(n, opts["BLOCK_N"])
    splits, chunk = _splits(row_programs, vocab, opts["BLOCK_V"], device)
    part = torch.empty((5, splits, n), dtype=torch.float32, device=device)
    with torch.no_grad():
        opd_kl_stats_kernel[(row_programs * splits,)](
            hidden, *hidden.stride(), weight, *weight.stride(), t_hidden, *t_hidden.stride(), t_weight,
            *t_weight.stride(), _rows_arg(rows), part, n, vocab, weight.shape[1], t_weight.shape[1], chunk,
            HAS_ROWS=rows is not None, H_UNIT=hidden.stride(1) == 1, W_UNIT=weight.stride(1) == 1,
            T_UNIT=t_hidden.stride(1) == 1, TW_UNIT=t_weight.stride(1) == 1, **_dot_flags(mm_dtypes[0], device),
            **_dot_flags(mm_dtypes[1], device, "T_"), GROUP_R=GROUP_R[_kind(device)],
            EVEN_D=_even(weight.shape[1], opts), T_EVEN_D=_even(t_weight.shape[1], opts),
            INTERPRET=interpreting(device), **opts)
        mp, sp, diff = _merge(part[0], part[1], part[2])
        mq, sq = _merge(part[3], part[4])
        lse_p, lse_q = mp + torch.log(sp), mq + torch.log(sq)
        kl = diff / sp - lse_p + lse_q
    return KLStats(kl, lse_p, lse_q)


SLAB_GEMM_ENV = "OPRD_TRITON_SLAB_GEMM"
SLAB_GEMMS = ("triton", "torch")


def slab_gemm() -> str:
    """Which GEMM runs the gradient slab's two products: "triton" (opd_matmul_acc_kernel, the default: accumulates
    into C in place and reads the gathered hidden rows in place) or "torch" (cuBLAS through torch.addmm with an fp32
    output into C; the weight gradient's hidden rows gathered first). $OPRD_TRITON_SLAB_GEMM chooses;
    benchmarks/bench_opd_tuning.py measures both side by side on the GPU."""
    choice = os.environ.get(SLAB_GEMM_ENV, "triton") or "triton"
    if choice not in SLAB_GEMMS:
        raise ValueError(f"${SLAB_GEMM_ENV} must be one of {list(SLAB_GEMMS)}, got {choice!r}")
    return choice


def _torch_matmul_acc(c: Tensor, a: Tensor, b: Tensor, b_rows: Tensor | None, k: int, mm: torch.dtype) -> None:
    """_matmul_acc by torch. fp32: torch's own fp32 GEMM into c. 16-bit on CUDA: cuBLAS's half-precision GEMM with an
    fp32 output, accumulated into c where torch offers it (torch >= 2.8; else through one fp32 product tensor).
    Elsewhere: the fp32 product of the operands rounded to `mm` (the same products, exact in fp32 for 16-bit
    operands)."""
    rows = b[:k] if b_rows is None else b.index_select(0, b_rows[:k])
    if mm == torch.float32:
        c.addmm_(a.float(), rows.float())
        return
    a_mm, rows_mm = a.to(mm), rows.to(mm)
    if c.is_cuda:
        for attempt in (lambda: torch.addmm(c, a_mm, rows_mm, out_dtype=torch.float32, out=c),
                        lambda: c.add_(torch.mm(a_mm, rows_mm, out_dtype=torch.float32))):
            try:
                attempt()
                return
            except (TypeError, RuntimeError, NotImplementedError):
                pass
    c.add_(a_mm.float() @ rows_mm.float())


def _matmul_acc(c: Tensor, a: Tensor, b: Tensor, b_rows: Tensor | None, k: int, mm: torch.dtype,
                gemm: str = "triton") -> None:
    """c (fp32 [M, N], unit column stride) += a [M, K] @ b [K', N] (rows b_rows[:K] of b, or its first K rows), by
    the `gemm` slab_gemm() names."""
    if gemm == "torch":
        _torch_matmul_acc(c, a, b, b_rows, k, mm)
        return
    m, n = c.shape
    device = c.device
    opts = _blocks("mm", device, a.dtype, b.dtype)
    layout = 1 if a.stride(1) == 1 else 2 if a.stride(0) == 1 else 0
    grid = (triton.cdiv(m, opts["BLOCK_M"]) * triton.cdiv(n, opts["BLOCK_N"]),)
    opd_matmul_acc_kernel[grid](
        a, *a.stride(), b, b_rows, *b.stride(), c, c.stride(0), m, n, k, A_LAYOUT=layout, B_ROWS=b_rows is not None,
        B_UNIT=b.stride(1) == 1, EVEN_K=_even(k, opts, "BLOCK_K"), INTERPRET=interpreting(device),
        **_dot_flags(mm, device), **opts)


def backprop_logits(hidden: Tensor, weight: Tensor, rows: Tensor | None, grad: LogitGradient, tiling: Tiling,
                    mm_dtypes: tuple[torch.dtype, torch.dtype], out_dtype: torch.dtype, *, want_hidden: bool,
                    want_weight: bool) -> HeadGradients:
    """As oprd_kernels.opd._gradient.backprop_logits: HeadGradients (d loss / d hidden [N, d] in hidden's dtype,
    d loss / d weight [V, d] in weight's dtype), None where unwanted; rows outside the live set get 0. See the
    module docstring for the scheme; memory: one slab in the matmul dtype, the fp32 hidden-state gradient of the
    live rows, and one vocabulary slab's fp32 weight gradient. Float64 falls back to the chunked pass."""
    n, (vocab, dim) = _num_live(hidden, rows), weight.shape
    dtypes = [hidden.dtype, weight.dtype]
    if grad.kl is not None:
        dtypes += [grad.kl.teacher_hidden.dtype, grad.kl.teacher_weight.dtype]
    mm = mm_dtypes[0]
    if n == 0 or not (want_hidden or want_weight) or _unsupported(out_dtype, *mm_dtypes, *dtypes):
        return chunked_gradient.backprop_logits(hidden, weight, rows, grad, tiling, mm_dtypes, out_dtype,
                                                want_hidden=want_hidden, want_weight=want_weight)
    device = hidden.device
    kind = _kind(device)
    slab_rows = min(n, max(tiling.row_block, MIN_SLAB[kind]))
    slab_vocab = min(vocab, max(tiling.vocab_block, MIN_SLAB[kind]))
    slab = torch.empty((slab_rows, slab_vocab), dtype=mm, device=device)
    d_live = torch.zeros((n, dim), dtype=torch.float32, device=device) if want_hidden else None
    d_weight = torch.empty_like(weight) if want_weight else None
    dw_slab = torch.empty((slab_vocab, dim), dtype=torch.float32, device=device) if want_weight else None
    rows_c = _rows_arg(rows)
    gemm = slab_gemm()
    form = GradForm.of(grad)
    opts = _blocks("grad_kl" if form.KL else "grad", device, *dtypes)
    # every argument by name: a reordering of the kernel's parameters cannot shift one into another's place
    args = dict(h_base=hidden, h_sn=hidden.stride(0), h_sd=hidden.stride(1), rows=rows_c, w_base=weight,
                w_sv=weight.stride(0), w_sd=weight.stride(1), lse=grad.lse.contiguous(), g=slab, g_sr=slab.stride(0),
                dim=dim, HAS_ROWS=rows is not None, H_UNIT=hidden.stride(1) == 1, W_UNIT=weight.stride(1) == 1,
                EVEN_D=_even(dim, opts), T_EVEN_D=_even(form.t_dim, opts), INTERPRET=interpreting(device),
                **form.kernel_args(), **_dot_flags(mm, device),
                **_dot_flags(mm_dtypes[1], device, "T_"), **opts)
    with torch.no_grad():
        for v0 in range(0, vocab, slab_vocab):
            vs = min(slab_vocab, vocab - v0)
            if want_weight:
                dw_slab.zero_()
            for r0 in range(0, n, slab_rows):
                rs = min(slab_rows, n - r0)
                grid = (triton.cdiv(rs, opts["BLOCK_N"]), triton.cdiv(vs, opts["BLOCK_V"]))
                opd_grad_tile_kernel[grid](r0=r0, rs=rs, v0=v0, vs=vs, **args)
                g = slab[:rs, :vs]
                if want_hidden:
                    _matmul_acc(d_live[r0:r0 + rs], g, weight[v0:v0 + vs], None, vs, mm, gemm)
                if want_weight:
                    if rows_c is None:
                        _matmul_acc(dw_slab[:vs], g.T, hidden[r0:r0 + rs], None, rs, mm, gemm)
                    else:
                        _matmul_acc(dw_slab[:vs], g.T, hidden, rows_c[r0:r0 + rs], rs, mm, gemm)
            if want_weight:
                d_weight[v0:v0 + vs] = dw_slab[:vs]
    return HeadGradients(chunked_gradient.live_to_dense(d_live, hidden, rows) if want_hidden else None, d_weight)
