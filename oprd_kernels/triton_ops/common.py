"""Small @triton.jit helpers shared by the loss kernels: addressing rows through a layer table, loading tiles in
the accumulation dtype, the zero-norm guard, and bf16 rounding."""

import triton
import triton.language as tl


@triton.jit
def load_tile(base, start, stride_d, cols, mask, UNIT_STRIDE: tl.constexpr, ALIGN: tl.constexpr,
               ACC: tl.constexpr):
    if ALIGN > 1:  # the host checked that every row starts on a 16-byte boundary (ALIGN elements)
        start = tl.multiple_of(start, ALIGN)
    if UNIT_STRIDE:
        x = tl.load(base + start + cols, mask=mask, other=0.0)
    else:
        x = tl.load(base + start + cols * stride_d, mask=mask, other=0.0)
    return x.to(ACC)


@triton.jit
def bf16_round_nearest_even(x):
    """fp32 -> bf16 rounding to nearest even, spelled out in integer ops. The GPU's cast already rounds so; the
    interpreter's truncates, which would double the gradient's rounding error on CPU test runs."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + (((bits >> 16) & 1) + 0x7FFF)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def inverse_norm(sq, eps_sq):
    return tl.where(sq >= eps_sq, 1.0 / tl.sqrt(tl.maximum(sq, eps_sq)), 0.0)


@triton.jit
def row_starts(table, layer, rows, seq_len):
    """Element offsets from the table's base of row(s) `rows` of layer `layer` (a scalar or a [BLOCK] vector), and
    that layer's stride along D."""
    entry = table + layer * 4
    sample = rows // seq_len
    starts = tl.load(entry) + sample * tl.load(entry + 1) + (rows - sample * seq_len) * tl.load(entry + 2)
    return starts, tl.load(entry + 3)


@triton.jit
def load_rows(base, starts, stride_d, cols, mask, UNIT_STRIDE: tl.constexpr, ALIGN: tl.constexpr):
    """A [BLOCK, TILE] tile of rows starting at `starts`, in the stored dtype (masked entries read as 0)."""
    if ALIGN > 1:
        starts = tl.multiple_of(starts, ALIGN)
    if UNIT_STRIDE:
        return tl.load(base + starts[:, None] + cols[None, :], mask=mask, other=0.0)
    return tl.load(base + starts[:, None] + cols[None, :] * stride_d, mask=mask, other=0.0)
