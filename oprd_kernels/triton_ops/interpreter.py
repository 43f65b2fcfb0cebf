"""Where the kernels' Triton interpreter workarounds live, and the one constexpr that switches them: INTERPRET.

CI runs the kernels on CPU tensors under TRITON_INTERPRET=1, where Triton executes each kernel as NumPy code. Two
things the kernels rely on behave differently there than in the code compiled for the GPU:

- Casting fp32 to bf16 truncates in the interpreter. The GPU rounds to nearest even. Without a fix, every bf16
  gradient on a CPU test run would carry twice the GPU's rounding error, and the bf16 tests (DESIGN.md's "no worse
  than the reference" rule) would test a kernel that does not exist. `round_to(x, DTYPE, INTERPRET)` casts. Under the
  interpreter, for bf16, it rounds in integer ops (`bf16_round_nearest_even`).
- The interpreter's `tl.dot` is a NumPy matmul. NumPy has no bf16, so bf16 tiles are held as their 16-bit patterns,
  and a dot of two bf16 tiles multiplies the raw integers. `dot_operand(x, DOT, INTERPRET)` casts a tile to the
  matmul dtype DOT. Under the interpreter it rounds the tile to DOT (bf16: nearest even; fp16: NumPy's cast, also
  nearest even) and widens it back to fp32. The product of two 16-bit values is exact in fp32, so an fp32 dot of
  these operands equals a tensor-core dot with fp32 accumulation up to summation order.

Every kernel that needs one of these takes `INTERPRET: tl.constexpr`. Its launcher sets it from
`common.interpreting(device)`: True for CPU tensors (which only the interpreter runs), False for CUDA tensors. On
CUDA each `if INTERPRET` branch is removed at compile time and each helper is the plain cast, so the compiled code is
the same as without the helpers. These helpers replaced earlier per-kernel flags (EMULATE, G_RNE, BF16_RNE, and the
Bridge's device check in NATIVE_DOT). The SASS of every variant benchmarks/compile_report.py compiles, for sm_90 and
sm_80, was byte-identical before and after.

Not a workaround for the interpreter: `common.as_int64`. It was written as `slot * 0 + n_sel` and makes an int
argument int64 before a product that can pass 2^31. The GPU needs it too, since int32 arguments multiply in int32
there.
"""

import triton
import triton.language as tl


@triton.jit
def bf16_round_nearest_even(x):
    """fp32 -> bf16 rounding to nearest even (ties to the even mantissa), spelled out in integer ops; infinities and
    the canonical NaN are kept. Unlike the GPU's cast, a NaN whose payload carries into the sign bit (0x7FFFFFFF)
    comes out as -0.0."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + (((bits >> 16) & 1) + 0x7FFF)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def round_to(x, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """x.to(DTYPE), rounding to nearest even as the GPU's cast does (the interpreter's bf16 cast truncates)."""
    if INTERPRET:
        if DTYPE == tl.bfloat16:
            return bf16_round_nearest_even(x.to(tl.float32))
    return x.to(DTYPE)


@triton.jit
def dot_operand(x, DOT: tl.constexpr, INTERPRET: tl.constexpr):
    """A loaded tile as a tl.dot operand in the matmul dtype DOT. Under the interpreter, the tile is rounded to DOT
    and given as fp32, exact for 16-bit values, because the interpreter's dot cannot multiply 16-bit floats."""
    if INTERPRET:
        if DOT == tl.bfloat16:
            return bf16_round_nearest_even(x.to(tl.float32)).to(tl.float32)
        elif DOT == tl.float16:
            return x.to(tl.float16).to(tl.float32)
    return x.to(DOT)
