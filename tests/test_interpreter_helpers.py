"""The interpreter workarounds (oprd_kernels/triton_ops/interpreter.py), the int64 promotion, and the named
structures that replaced positional tuples across module boundaries: GradForm (the gradient kernel's form arguments)
and FusedCall (what the fused OPD Function is called with). The kernels here run under the interpreter (conftest.py
sets TRITON_INTERPRET=1 without CUDA); on a CUDA machine the kernel tests run compiled, with INTERPRET=False."""

import dataclasses
import inspect

import pytest
import torch
import triton
import triton.language as tl

from oprd_kernels.opd._gradient import KLTerms, LogitGradient
from oprd_kernels.opd._tiles import Tiling
from oprd_kernels.opd.fused import FusedCall
from oprd_kernels.opd.rowwise import LossGrads
from oprd_kernels.triton_ops import alignment_kernels, bridge_kernels, opd_kernels
from oprd_kernels.triton_ops.common import as_int64, interpreting
from oprd_kernels.triton_ops.interpreter import dot_operand, round_to
from oprd_kernels.triton_ops.opd_grad_form import GradForm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRET = interpreting(torch.device(DEVICE))
TORCH_TO_TL = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


@triton.jit
def _round_kernel(x, out, n, DTYPE: tl.constexpr, INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    tl.store(out + offs, round_to(tl.load(x + offs, mask=ok), DTYPE, INTERPRET), mask=ok)


@triton.jit
def _plain_cast_kernel(x, out, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    tl.store(out + offs, tl.load(x + offs, mask=ok).to(out.dtype.element_ty), mask=ok)


@triton.jit
def _dot_kernel(a, b, out, DOT: tl.constexpr, INTERPRET: tl.constexpr, M: tl.constexpr, N: tl.constexpr,
                K: tl.constexpr):
    rm, rn, rk = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
    x = tl.load(a + rm[:, None] * K + rk[None, :])
    y = tl.load(b + rk[:, None] * N + rn[None, :])
    acc = tl.dot(dot_operand(x, DOT, INTERPRET), dot_operand(y, DOT, INTERPRET), input_precision="ieee",
                 out_dtype=tl.float32)
    tl.store(out + rm[:, None] * N + rn[None, :], acc)


@triton.jit
def _int64_kernel(out, n, layers):
    tl.store(out, as_int64(n) * layers)


def _ties_and_edges() -> torch.Tensor:
    """fp32 values at and next to bf16 rounding ties (both parities of the kept bit, both signs), subnormals,
    values that round up to the next binade or to inf, and specials."""
    one_ulp = 2.0 ** -7  # bf16 spacing at [1, 2)
    base = [1.0, 1.0 + one_ulp, 1.5, 1.5 + one_ulp, 3.0, 1000.0 + 8.0]
    vals = []
    for b in base:
        spacing = 2.0 ** (torch.tensor(b).abs().log2().floor().item() - 7)
        for frac in (0.5, 0.5 - 2**-16, 0.5 + 2**-16, 0.25, 0.75):
            vals += [b + frac * spacing, -(b + frac * spacing)]
    vals += [2.0 - 2.0**-9, 1.0e-40, -3.0e-39, 2.0**-133 * 1.5, 3.3895e38, -3.3895e38, 0.0, -0.0, float("inf"),
             float("-inf"), float("nan")]
    return torch.tensor(vals, dtype=torch.float32)


def test_round_to_bf16_is_round_to_nearest_even(gen):
    x = torch.cat([_ties_and_edges(), torch.randn(1000, generator=gen) * 10.0 ** torch.randint(-30, 30, (1000,),
                                                                                               generator=gen)])
    x = x.to(DEVICE)
    out = torch.empty(x.shape, dtype=torch.bfloat16, device=DEVICE)
    _round_kernel[(triton.cdiv(x.numel(), 128),)](x, out, x.numel(), DTYPE=tl.bfloat16, INTERPRET=INTERPRET,
                                                  BLOCK=128)
    want = x.to(torch.bfloat16)
    assert torch.equal(out.isnan(), want.isnan())
    ok = ~want.isnan()
    # bitwise, so that -0.0 / +0.0 and every tie count
    assert torch.equal(out[ok].view(torch.int16), want[ok].view(torch.int16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_round_to_other_dtypes_is_the_plain_cast(gen, dtype):
    x = (torch.randn(300, generator=gen) * 100).to(DEVICE)
    out = torch.empty(x.shape, dtype=dtype, device=DEVICE)
    _round_kernel[(3,)](x, out, x.numel(), DTYPE=TORCH_TO_TL[dtype], INTERPRET=INTERPRET, BLOCK=128)
    assert torch.equal(out, x.to(dtype))


@pytest.mark.skipif(not INTERPRET, reason="what the interpreter's own cast does")
def test_the_interpreters_bf16_cast_still_needs_the_workaround():
    x = _ties_and_edges()
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    _plain_cast_kernel[(1,)](x, out, x.numel(), BLOCK=128)
    if torch.equal(out.view(torch.int16), x.to(torch.bfloat16).view(torch.int16)):
        pytest.skip("this Triton's interpreter rounds fp32 -> bf16 to nearest even: round_to's branch can go")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("stored", [torch.float32, "same"])
def test_dot_operand_gives_the_tensor_core_product(gen, dtype, stored):
    """fp32 tiles (rounded to the matmul dtype) or tiles stored in it: the product of the rounded operands,
    accumulated in fp32."""
    m, n, k = 16, 32, 64
    a = torch.randn(m, k, generator=gen)
    b = torch.randn(k, n, generator=gen)
    if stored == "same":
        a, b = a.to(dtype), b.to(dtype)
    a, b = a.to(DEVICE), b.to(DEVICE)
    out = torch.empty(m, n, dtype=torch.float32, device=DEVICE)
    _dot_kernel[(1,)](a, b, out, DOT=TORCH_TO_TL[dtype], INTERPRET=INTERPRET, M=m, N=n, K=k)
    want = a.to(dtype).double() @ b.to(dtype).double()  # exact products of the rounded operands
    torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-4)
    unrounded = a.double() @ b.double()
    if dtype != torch.float32 and stored != "same":  # the operands really were rounded to the matmul dtype
        assert (out.double() - unrounded).abs().max() > 1e-3


@pytest.mark.parametrize("n, layers", [(2**30, 4), (1, 2**31 - 1), (70_000, 40_000)])
def test_as_int64_keeps_products_of_int_arguments_exact(n, layers):
    out = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    _int64_kernel[(1,)](out, n, layers)
    assert out.item() == n * layers


def test_workaround_flags_are_one_constexpr():
    """No kernel keeps a flag of its own for an interpreter workaround; those using a helper take INTERPRET."""
    old = {"EMULATE", "T_EMULATE", "G_RNE", "BF16_RNE"}
    kernels = [obj for mod in (alignment_kernels, bridge_kernels, opd_kernels) for name, obj in vars(mod).items()
               if name.endswith("_kernel") and callable(getattr(obj, "fn", None))]  # jitted or interpreted
    assert len(kernels) >= 10
    for kern in kernels:
        params = set(inspect.signature(kern.fn).parameters)
        assert not params & old, (kern.fn.__name__, params & old)
        source = inspect.getsource(kern.fn)
        if "round_to(" in source or "dot_operand(" in source or "logits_tile(" in source or "_project(" in source:
            assert "INTERPRET" in params, kern.fn.__name__


def test_interpreting_follows_the_device():
    assert interpreting(torch.device("cpu")) is True
    assert interpreting(torch.device("cuda")) is False
    assert interpreting(torch.device("cuda", 1)) is False


# GradForm: the form arguments of opd_grad_tile_kernel by name


def _sparse_grad(n=5, k=3, vocab=11):
    ids = torch.randint(0, vocab, (n, k))
    return LogitGradient(torch.randn(n), dense=torch.randn(n), ids=ids, sparse=torch.randn(n, k))


def _kl_grad(n=5, vocab=11, d_t=6):
    t_hidden = torch.randn(n, d_t)
    t_weight = torch.randn(vocab, 2 * d_t)[:, ::2]  # a strided teacher head
    return LogitGradient(torch.randn(n), kl=KLTerms(t_hidden, t_weight, torch.randn(n), torch.randn(n)),
                         row_weight=torch.rand(n))


GRAD_TILE_PARAMS = set(inspect.signature(opd_kernels.opd_grad_tile_kernel.fn).parameters)


@pytest.mark.parametrize("make", [_sparse_grad, _kl_grad])
def test_grad_form_names_only_kernel_parameters(make):
    form = GradForm.of(make())
    args = form.kernel_args()
    assert set(args) == {f.name for f in dataclasses.fields(GradForm)}
    assert set(args) <= GRAD_TILE_PARAMS, set(args) - GRAD_TILE_PARAMS


def test_grad_form_sparse_arguments():
    grad = _sparse_grad()
    args = GradForm.of(grad).kernel_args()
    assert args["KL"] is False and args["k"] == grad.ids.shape[1] and args["t_dim"] == 0
    assert args["ids"] is grad.ids and args["sparse"] is grad.sparse
    assert (args["ids_sr"], args["ids_sk"]) == grad.ids.stride()
    assert (args["sp_sr"], args["sp_sk"]) == grad.sparse.stride()
    assert torch.equal(args["dense"], grad.dense)
    assert all(args[name] is None for name in ("t_base", "tw_base", "lse_q", "kl", "row_w"))


def test_grad_form_kl_arguments():
    grad = _kl_grad()
    terms = grad.kl
    t_hidden, t_weight, lse_q, kl = terms.teacher_hidden, terms.teacher_weight, terms.lse_teacher, terms.kl
    args = GradForm.of(grad).kernel_args()
    assert args["KL"] is True and args["k"] == 0 and args["t_dim"] == t_weight.shape[1]
    assert args["t_base"] is t_hidden and args["tw_base"] is t_weight
    assert (args["t_sn"], args["t_sd"]) == t_hidden.stride()
    assert (args["tw_sv"], args["tw_sd"]) == t_weight.stride() and args["TW_UNIT"] is False
    assert torch.equal(args["lse_q"], lse_q) and torch.equal(args["kl"], kl)  # not swapped: both fp32 [n]
    assert torch.equal(args["row_w"], grad.row_weight)
    assert all(args[name] is None for name in ("dense", "ids", "sparse"))


def test_grad_form_rejects_the_wrong_kind():
    with pytest.raises(ValueError, match="KL form"):
        GradForm.sparse_form(_kl_grad())
    with pytest.raises(ValueError, match="sparse form"):
        GradForm.kl_form(_sparse_grad())
    with pytest.raises(TypeError, match="LogitGradient"):
        GradForm.of((None, None))
    with pytest.raises(ValueError, match="KL form"):
        GradForm(KL=True, dense=torch.zeros(2))  # a KL form without the teacher's tensors
    with pytest.raises(dataclasses.FrozenInstanceError):
        GradForm.of(_sparse_grad()).k = 7


# FusedCall and the rowwise pass's LossGrads


def test_fused_call_is_named_and_checked():
    call = FusedCall(passes=object(), kind="topk", inp=None, k=4, tiling=Tiling(8, 8),
                     mm_dtypes=(torch.float32, torch.bfloat16), want_hidden=True, want_weight=False)
    assert call.mm_dtypes == (torch.float32, torch.bfloat16) and call.want_hidden and not call.want_weight
    with pytest.raises(ValueError, match="kind"):
        dataclasses.replace(call, kind="full")
    with pytest.raises(ValueError, match="mm_dtypes"):
        dataclasses.replace(call, mm_dtypes=(torch.float32,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.k = 5
    with pytest.raises(TypeError):
        tuple(call)  # no positional unpacking


def test_rowwise_whole_loss_returns_named_gradients():
    from oprd_kernels.opd._inputs import check_opd_inputs
    from oprd_kernels.opd.rowwise import loss_and_grads, row_tiling

    g = torch.Generator().manual_seed(0)
    n, d, vocab = 6, 4, 9  # d_hidden [6, 4] and d_weight [9, 4]: a swap would show
    hidden, weight = torch.randn(n, d, generator=g), torch.randn(vocab, d, generator=g)
    t_hidden, t_weight = torch.randn(n, 3, generator=g), torch.randn(vocab, 3, generator=g)
    inp = check_opd_inputs("test", hidden, weight, t_hidden, t_weight, None, None, needs_tokens=False)
    out = loss_and_grads("full_vocab", inp, weight, t_weight, 1, row_tiling(n, vocab, None),
                         (torch.float32, torch.float32), want_hidden=True, want_weight=True)
    assert isinstance(out, LossGrads)
    assert out.d_hidden.shape == (n, d) and out.d_weight.shape == (vocab, d) and out.loss.shape == ()
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    p = torch.log_softmax(h @ w.T, dim=1)
    q = torch.log_softmax(t_hidden @ t_weight.T, dim=1)
    loss = (p.exp() * (p - q)).sum(1).mean()
    loss.backward()
    torch.testing.assert_close(out.loss, loss.detach())
    torch.testing.assert_close(out.d_hidden, h.grad)
    torch.testing.assert_close(out.d_weight, w.grad)
