"""Launch grids of the alignment and Bridge kernels against CUDA's limits, without a GPU: the grid functions at sizes
far beyond what the interpreter can run (N_sel = 10^6 and more), and the grids the launches really use (recorded
under the interpreter at small sizes) are the ones those functions return.

CUDA: at most 2^31 - 1 programs along grid dimension 0 and 65,535 along dimensions 1 and 2. The first layout put the
rows in dimension 1, so alignment_loss failed above 65,535 selected rows (33 samples at last_k = 2000)."""

from __future__ import annotations

import pytest
import torch

from oprd_kernels.triton_ops import alignment as tri_align
from oprd_kernels.triton_ops import bridge as tri_bridge
from oprd_kernels.triton_ops.common import cuda_grid

X_LIMIT, YZ_LIMIT = 2**31 - 1, 65535


def within_cuda_limits(grid: tuple[int, ...]) -> bool:
    limits = (X_LIMIT, YZ_LIMIT, YZ_LIMIT)
    return 1 <= len(grid) <= 3 and all(1 <= size <= limit for size, limit in zip(grid, limits))


def proj_grad_grid(layers: int, dim: int, n_sel: int) -> tuple[int, int]:
    """The projector-gradient GEMM's grid as the launch picks it on an H200 (132 SMs)."""
    blocks = tri_bridge.PROJ_GRAD_BLOCKS["cuda"]
    target = tri_bridge.PROJ_GRAD_TARGET["cuda"] * 132
    splits, _ = tri_bridge.proj_grad_split(layers, dim, n_sel, target, blocks["BLOCK_K"], blocks["TILE_D"])
    return tri_bridge.proj_grad_grid(layers, dim, splits, blocks["TILE_D"])


GRIDS = {
    "alignment_fwd": lambda layers, n_sel: tri_align.fwd_grid(layers, n_sel),
    "alignment_bwd": lambda layers, n_sel: tri_align.bwd_grid(layers, n_sel),
    "bridge_rows": lambda layers, n_sel: tri_bridge.row_block_grid(layers, n_sel),
    "bridge_proj_grad": lambda layers, n_sel: proj_grad_grid(layers, 1536, n_sel),
}


@pytest.mark.parametrize("name", GRIDS)
@pytest.mark.parametrize("layers", [1, 28, 64, 65535])
@pytest.mark.parametrize("n_sel", [1, 65535, 65536, 10**6, 10**8])
def test_grids_stay_within_cuda_limits(name, layers, n_sel):
    grid = GRIDS[name](layers, n_sel)
    assert within_cuda_limits(grid), grid
    assert all(isinstance(size, int) for size in grid)


def test_the_old_layouts_exceeded_the_limits():
    """What the new layout fixes: (L, N_sel) for alignment, (L, cdiv(N_sel, 16)) for Bridge."""
    assert not within_cuda_limits((28, 10**6))  # alignment, forward and backward
    assert not within_cuda_limits((28, -(-2 * 10**6 // tri_bridge.BLOCK_R)))  # Bridge, beyond 1,048,560 rows
    assert within_cuda_limits(tri_align.fwd_grid(28, 10**6))
    assert within_cuda_limits(tri_bridge.row_block_grid(28, 2 * 10**6))


def test_grid_sizes_cover_every_row_and_layer():
    assert tri_align.fwd_grid(5, 70001) == (70001, 5)
    assert tri_align.bwd_grid(3, 70001) == (70001, 3)
    assert tri_align.fwd_grid(5, 70001, 16) == (4376, 5)  # 4,375 full blocks of 16 entries and a tail of 1
    assert tri_align.bwd_grid(3, 70001, 16) == (4376, 3)
    assert tri_bridge.row_block_grid(5, 70001) == (-(-70001 // tri_bridge.BLOCK_R), 5)


def test_an_impossible_grid_is_a_clear_error():
    with pytest.raises(ValueError, match=r"alignment_loss: launch grid \(10, 70000\) has 70000 programs along "
                                         r"dimension 1; CUDA allows 1 to 65535"):
        tri_align.fwd_grid(70000, 10)  # 70,000 layers
    with pytest.raises(ValueError, match="dimension 0"):
        cuda_grid("f", 2**31, 1)
    with pytest.raises(ValueError, match="dimension 0"):
        cuda_grid("f", 0, 1)


class Recorder:
    """Stands in for a @triton.jit kernel: records each launch grid and launches the real kernel."""

    def __init__(self, kernel):
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid):
        self.grids.append(tuple(grid))
        return self.kernel[grid]


def record(monkeypatch, module, *names):
    recorders = {name: Recorder(getattr(module, name)) for name in names}
    for name, rec in recorders.items():
        monkeypatch.setattr(module, name, rec)
    return recorders


@pytest.mark.parametrize("with_rows", [True, False])
@pytest.mark.parametrize("block_r", [1, 2])
def test_alignment_launches_put_rows_first(monkeypatch, with_rows, block_r):
    L, B, S, D, n_sel = 3, 2, 4, 5, 7
    monkeypatch.setattr(tri_align, "TILE_ELEMENTS", 8 * block_r)  # D = 5: tiles of 8 columns, block_r rows
    rec = record(monkeypatch, tri_align, "alignment_fwd_kernel", "alignment_bwd_kernel")
    student = [torch.randn(B, S, D, requires_grad=i != 1) for i in range(L)]
    rows = torch.tensor([6, 0, 3, 3, 7, 1, 2]) if with_rows else None
    n = n_sel if with_rows else B * S
    loss = tri_align.alignment_loss(student, torch.randn(L, n, D), rows=rows, loss_type="nmse")
    loss.backward()
    blocks = -(-n // block_r)
    assert rec["alignment_fwd_kernel"].grids == [(blocks, L)]
    assert rec["alignment_bwd_kernel"].grids == [(blocks, 2)]  # two layers want a gradient


def test_bridge_launches_put_row_blocks_first(monkeypatch):
    L, B, S, D, r, n_sel = 2, 2, 20, 9, 4, 37  # 3 row blocks, 2 layers: a swapped grid shows
    rec = record(monkeypatch, tri_bridge, "bridge_fwd_kernel", "bridge_bwd_kernel", "bridge_proj_grad_kernel")
    student = [torch.randn(B, S, D, requires_grad=True) for _ in range(L)]
    proj = torch.randn(L, r, D, requires_grad=True)
    rows = torch.randint(0, B * S, (n_sel,))
    tri_bridge.bridge_loss(student, torch.randn(L, n_sel, r), proj, rows=rows).backward()
    blocks = -(-n_sel // tri_bridge.BLOCK_R)
    assert rec["bridge_fwd_kernel"].grids == [(blocks, L)]
    assert rec["bridge_bwd_kernel"].grids == [(blocks, L)]
    opts = tri_bridge.PROJ_GRAD_BLOCKS["cpu"]
    splits, _ = tri_bridge.proj_grad_split(L, D, n_sel, tri_bridge.PROJ_GRAD_TARGET["cpu"], opts["BLOCK_K"],
                                           opts["TILE_D"])
    assert splits > 1  # 37 slots in 16-slot steps: the interpreter's target asks for a split
    assert rec["bridge_proj_grad_kernel"].grids == [tri_bridge.proj_grad_grid(L, D, splits, opts["TILE_D"])]
