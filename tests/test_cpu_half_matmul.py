"""16-bit LM-head products on a CPU (oprd_kernels.opd._tiles.gemm_dtype): without native bf16/fp16 matrix units they
run in float32 on the upcast operands and are rounded to the 16-bit dtype after, which must give the 16-bit GEMM's
logits up to summation order and the same fused losses; $OPRD_CPU_HALF_MATMUL chooses either way on any host, so
both are tested here whatever this CPU has."""

from __future__ import annotations

import pytest
import torch
from test_fused_opd import KINDS, _rel_err, draw, fused_vg, reference_vg

from oprd_kernels.opd import _tiles
from oprd_kernels.opd._tiles import CPU_HALF_MATMUL_ENV, gemm_dtype, logits_tile

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_policy(monkeypatch, native):
    monkeypatch.setattr(_tiles, "_native_half_matmul", lambda dtype: native)
    monkeypatch.delenv(CPU_HALF_MATMUL_ENV, raising=False)
    for half in (BF16, FP16):
        assert gemm_dtype(half, FP32, CPU) == (half if native else FP32)  # auto: by what the CPU has
        assert gemm_dtype(half, FP32, CUDA) == half  # GPUs multiply 16-bit matrices natively
        assert gemm_dtype(half, half, CPU) == half  # a 16-bit result dtype: nothing to upcast to
    assert gemm_dtype(FP32, FP32, CPU) == FP32 and gemm_dtype(torch.float64, torch.float64, CPU) == torch.float64
    for choice, want in (("native", BF16), ("float32", FP32), ("auto", BF16 if native else FP32)):
        monkeypatch.setenv(CPU_HALF_MATMUL_ENV, choice)
        assert gemm_dtype(BF16, FP32, CPU) == want, choice


def test_bad_choice_names_the_variable(monkeypatch):
    monkeypatch.setenv(CPU_HALF_MATMUL_ENV, "fp32")
    with pytest.raises(ValueError, match=r"\$OPRD_CPU_HALF_MATMUL must be one of \['auto', 'native', 'float32'\], "
                                         r"got 'fp32'"):
        gemm_dtype(BF16, FP32, CPU)


@pytest.mark.parametrize("half", [BF16, FP16])
@pytest.mark.parametrize("buffered", [True, False])
def test_upcast_tile_is_the_exact_product_rounded(monkeypatch, half, buffered):
    """The upcast tile is representable in the 16-bit dtype and is the exact product rounded to it (one step off at
    most, where fp32 summation moves a value across a rounding midpoint or near zero): at least as accurate as the
    16-bit GEMM's own logits (torch's CPU fp16 GEMM is off by up to 4 steps against the exact product)."""
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(37, 300, generator=gen).to(half)
    w = (torch.randn(517, 300, generator=gen) / 300 ** 0.5).to(half)
    exact = h.double() @ w.double().T
    monkeypatch.setenv(CPU_HALF_MATMUL_ENV, "native")
    native = logits_tile(h, w, half, FP32)
    monkeypatch.setenv(CPU_HALF_MATMUL_ENV, "float32")
    buffer = torch.full((37 * 517 + 5,), float("nan")) if buffered else None
    upcast = logits_tile(h, w, half, FP32, buffer)
    assert upcast.dtype == FP32 and upcast.shape == (37, 517)
    assert torch.equal(upcast, upcast.to(half).to(FP32))
    rounded = exact.to(half).double()
    step = torch.finfo(half).eps * exact.abs().clamp_min(torch.finfo(half).tiny)
    summation = 300 * 2.0 ** -24 * (h.double().abs() @ w.double().abs().T)  # fp32's error bound over 300 terms
    assert bool(((upcast.double() - rounded).abs() <= step + summation).all())
    assert float((upcast.double() == rounded).double().mean()) > 0.99
    assert float((upcast.double() - exact).abs().max()) <= float((native.double() - exact).abs().max())
    if buffered:  # written into the reused tile, not a fresh tensor
        assert upcast.data_ptr() == buffer.data_ptr()


@pytest.mark.parametrize("backend", ["chunked", "rowwise"])
@pytest.mark.parametrize("kind", KINDS)
def test_fused_losses_agree_across_modes(monkeypatch, gen, kind, backend):
    """Both ways give the same loss and gradients (to the 16-bit rounding of a few logits), and the upcast way is no
    worse than the reference's own bf16 error against an fp64 truth."""
    inp = draw(gen, (4, 7), 96, 40, 24, dtype=BF16, mask="random")
    results = {}
    for choice in ("native", "float32"):
        monkeypatch.setenv(CPU_HALF_MATMUL_ENV, choice)
        results[choice] = fused_vg(kind, inp, k=4, row_block=5, vocab_block=32, backend=backend)
    native, upcast = results["native"], results["float32"]
    torch.testing.assert_close(upcast[0], native[0], rtol=2e-3, atol=1e-5)
    for i in (1, 2):
        assert upcast[i].dtype == BF16 and _rel_err(upcast[i], native[i]) < 2e-2
    if kind != "topk":  # (top-k's bf16 ties: test_fused_opd's bf16 test handles them)
        truth = reference_vg(kind, inp.to(torch.float64), k=4)
        ref = reference_vg(kind, inp, k=4)
        err_ref, err_got = abs(float(ref[0]) - float(truth[0])), abs(float(upcast[0]) - float(truth[0]))
        assert err_got <= err_ref + 1e-3 * abs(float(truth[0])) + 1e-6


def test_a_ready_weight_is_used_as_it_is(monkeypatch):
    """weight_ready: a weight block prepared once (as_operand) is not rounded or copied again per tile; without it
    the block is rounded to the 16-bit dtype first (what autocast does to an fp32 weight)."""
    monkeypatch.setenv(CPU_HALF_MATMUL_ENV, "float32")
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(9, 64, generator=gen).to(BF16)
    w = torch.randn(33, 64, generator=gen)  # fp32, not representable in bf16
    ready = logits_tile(h, w, BF16, FP32, weight_ready=True)
    rounded = logits_tile(h, w, BF16, FP32)
    torch.testing.assert_close(ready, (h.float() @ w.T).to(BF16).float(), rtol=0, atol=0)
    torch.testing.assert_close(rounded, (h.float() @ w.to(BF16).float().T).to(BF16).float(), rtol=0, atol=0)
    assert not torch.equal(ready, rounded)
