"""Small @triton.jit helpers shared by the loss kernels: addressing rows through a layer table, loading tiles of
rows, the zero-norm guard, int64 promotion; and `interpreting`, the value of every kernel's
INTERPRET constexpr (the interpreter workarounds are in interpreter.py).

Row starts are made visibly aligned by arithmetic, `(start // ALIGN) * ALIGN`, an identity once the host has
checked the alignment. The compiler's alignment analysis sees through that even across helper calls, where a
`tl.multiple_of` hint on a helper's result is lost on Triton 3.6. benchmarks/compile_report.py showed it: 2-byte
loads with the hint, 16-byte loads with the arithmetic, on 3.6 and 3.9.

Launch grids: CUDA allows up to 2^31 - 1 programs along grid dimension 0 but only 65,535 along 1 and 2, so every
launch puts its unbounded dimension (rows, row blocks) first and layers second; `cuda_grid` checks a grid."""

import torch
import triton
import triton.language as tl

CUDA_GRID_LIMITS = (2**31 - 1, 65535, 65535)


def cuda_grid(func: str, *grid: int) -> tuple[int, ...]:
    """`grid` itself, after checking it against CUDA's limits (a clear error instead of a failed launch)."""
    for axis, (size, limit) in enumerate(zip(grid, CUDA_GRID_LIMITS)):
        if not 0 < size <= limit:
            raise ValueError(f"{func}: launch grid {grid} has {size} programs along dimension {axis}; CUDA allows "
                             f"1 to {limit} there")
    return tuple(grid)


def interpreting(device: torch.device) -> bool:
    """Whether kernels launched on `device`'s tensors run under the Triton interpreter: True for CPU tensors (only
    TRITON_INTERPRET=1 runs those), False for CUDA tensors. The launchers pass it as INTERPRET (interpreter.py)."""
    return device.type != "cuda"


@triton.jit
def as_int64(x):
    """An int argument as an int64 scalar, before a product that may pass 2^31 (int32 arguments multiply in int32,
    on the GPU and in the interpreter alike). An addition rather than x.to(tl.int64): Triton passes an int argument
    equal to 1 as a constexpr, which has no .to."""
    return tl.zeros([], dtype=tl.int64) + x


@triton.jit
def inverse_norm(sq, eps_sq):
    return tl.where(sq >= eps_sq, 1.0 / tl.sqrt(tl.maximum(sq, eps_sq)), 0.0)


@triton.jit
def row_starts(table, layer, rows, seq_len, ALIGN: tl.constexpr):
    """Element offsets from the table's base of row(s) `rows` of layer `layer` (a scalar or a [BLOCK] vector), and
    that layer's stride along D. ALIGN > 1 promises that every offset is a multiple of ALIGN."""
    entry = table + layer * 4
    sample = rows // seq_len
    starts = tl.load(entry) + sample * tl.load(entry + 1) + (rows - sample * seq_len) * tl.load(entry + 2)
    if ALIGN > 1:  # every row starts on a 16-byte boundary (checked on the host): say so, to vectorise the loads
        starts = (starts // ALIGN) * ALIGN
    return starts, tl.load(entry + 3)


@triton.jit
def load_rows(base, starts, stride_d, cols, mask, UNIT_STRIDE: tl.constexpr):
    """A [BLOCK, TILE] tile of rows starting at `starts`, in the stored dtype (masked entries read as 0)."""
    if UNIT_STRIDE:
        return tl.load(base + starts[:, None] + cols[None, :], mask=mask, other=0.0)
    return tl.load(base + starts[:, None] + cols[None, :] * stride_d, mask=mask, other=0.0)
