"""GPU tests at realistic shapes (run by the GPU check; skipped without CUDA).

1. Every fused OPD backend (chunked, rowwise, triton) at d = 1536, |V| = 151,936, N = 4,096 rows in bf16, against
   the chunked pass in fp32 on the same bf16 values upcast (exact logits up to fp32 summation): several tiles,
   vocabulary splits and gradient slabs in every dimension, which the interpreter tests cannot reach.
2. The alignment and Bridge kernels at N_sel = 70,000 selected rows, more than CUDA's 65,535 programs along grid
   dimensions 1 and 2 (the first launch layout failed there), against the fp64 reference; and the Bridge projector
   gradient bitwise repeatable (the first version added it with atomics).

Tolerances for (1), from bf16's unit roundoff u = 2^-9 ~ 2e-3. chunked and rowwise round each logit to bf16, an
absolute error up to |z| u (~0.03 at the largest logits, |z| ~ 12 here); the gradients are rounded to bf16 once more.
The sampled-token gradient scales with log p - log q, of order 10, so its relative error is ~ u; the top-k, at-ids
and full-vocabulary gradients scale with differences of order 1 (log p - log q - KL), so it is ~10 u. Measured on
CPU at the same d and |V| (N = 24): sampled-token 2.7e-3, top-k 1.6e-2, full-vocabulary 1.7e-2; losses 1.1e-3
(sampled), 1.2e-4 (top-k), 2.3e-5 (full). The bounds below leave ~2.5x. The triton kernels compute the logits in
fp32 from exact bf16 products, so only the gradient slab and the result are rounded: measured under the interpreter
(d = 128, |V| = 1,024, every kind) gradients 2.2e-3 to 2.7e-3 (~u), losses 1e-7; a tighter bound.
Top-k compares rows whose top-k set the backend finds equal to the fp32 one: rounding the logits to bf16 legitimately
changes the set where the k-th and (k+1)-th logits are closer than bf16's spacing (~25% of rows here).
"""

from __future__ import annotations

import pytest
import torch

import oprd_kernels
from oprd_kernels import reference as ref
from oprd_kernels.opd._passes import OPD_BACKENDS, opd_unavailable_reason
from oprd_kernels.triton_ops import alignment as tri_align
from oprd_kernels.triton_ops import bridge as tri_bridge

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

DEVICE = "cuda"
N, DIM, VOCAB, K = 4096, 1536, 151_936, 16
KINDS = ("sampled_token", "topk", "at_ids", "full_vocab")
# (loss relative error, gradient relative error in norm) against the fp32 chunked pass
TOL_ROUNDED_LOGITS = {"sampled_token": (5e-3, 1e-2), "topk": (2e-3, 4e-2), "at_ids": (2e-3, 4e-2),
                      "full_vocab": (1e-3, 4e-2)}
TOL_TRITON = (1e-4, 1e-2)


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


@pytest.fixture(scope="module")
def head():
    """bf16 student and teacher states and heads (logits with std ~2), sampled tokens; the fp32 top-k ids and the
    teacher's fp32 log-probs there (the update phase's precomputed teacher side)."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 oracle in IEEE fp32
    g = torch.Generator(device=DEVICE).manual_seed(11)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=DEVICE) * scale).bfloat16()

    h, w = randn(N, DIM), randn(VOCAB, DIM, scale=2 * DIM**-0.5)
    th, tw = randn(N, DIM), randn(VOCAB, DIM, scale=2 * DIM**-0.5)
    tokens = torch.randint(0, VOCAB, (N,), generator=g, device=DEVICE)
    ids = oprd_kernels.lm_head_stats(h.float(), w.float(), topk=K, backend="chunked").topk_ids
    teacher_lp = oprd_kernels.lm_head_stats(th.float(), tw.float(), ids=ids, backend="chunked").log_probs
    yield dict(h=h, w=w, th=th, tw=tw, tokens=tokens, ids=ids, teacher_lp=teacher_lp)
    ORACLE.clear()
    torch.backends.cuda.matmul.allow_tf32 = prev


ORACLE: dict[str, tuple] = {}  # the fp32 chunked results without a mask, computed once per kind


def oracle(kind: str, hd: dict, mask=None) -> tuple:
    if mask is not None:
        return fused(kind, hd, True, "chunked", mask)
    if kind not in ORACLE:
        ORACLE[kind] = fused(kind, hd, True, "chunked")
    return ORACLE[kind]


def fused(kind: str, hd: dict, upcast: bool, backend: str, mask=None):
    """(loss, d hidden, d weight) of one fused OPD loss; upcast: the student and teacher in fp32."""
    cast = (lambda x: x.float()) if upcast else (lambda x: x.detach())
    h, w = cast(hd["h"]).requires_grad_(), cast(hd["w"]).requires_grad_()
    th, tw = cast(hd["th"]), cast(hd["tw"])
    if kind == "sampled_token":
        loss = oprd_kernels.fused_sampled_token_opd_loss(h, w, th, tw, hd["tokens"], mask, backend=backend)
    elif kind == "topk":
        loss = oprd_kernels.fused_topk_opd_loss(h, w, th, tw, mask, k=K, backend=backend)
    elif kind == "at_ids":
        loss = oprd_kernels.fused_opd_loss_at_ids(h, w, hd["ids"], hd["teacher_lp"], mask, backend=backend)
    else:
        loss = oprd_kernels.fused_full_vocab_opd_loss(h, w, th, tw, mask, backend=backend)
    d_h, d_w = torch.autograd.grad(loss, [h, w])
    return loss.detach(), d_h, d_w


def same_topk_rows(hd: dict, backend: str) -> torch.Tensor:
    ids = oprd_kernels.lm_head_stats(hd["h"], hd["w"], topk=K, backend=backend).topk_ids
    return (ids.sort(-1).values == hd["ids"].sort(-1).values).all(-1)


def check_backend(backend: str) -> None:
    reason = opd_unavailable_reason(backend, torch.device(DEVICE))
    assert reason is None, f"{backend} cannot run here: {reason}"  # no silent fallback to another backend


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", OPD_BACKENDS)
def test_fused_opd_at_full_vocabulary(head, backend, kind):
    check_backend(backend)
    mask = None
    if kind == "topk":
        mask = same_topk_rows(head, backend)
        assert int(mask.sum()) >= N // 4, f"only {int(mask.sum())} rows with the fp32 top-k set"
    want = oracle(kind, head, mask)
    got = fused(kind, head, False, backend, mask)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.bfloat16
    loss_tol, grad_tol = TOL_TRITON if backend == "triton" else TOL_ROUNDED_LOGITS[kind]
    assert torch.isfinite(got[0]) and abs(float(got[0] - want[0])) <= loss_tol * abs(float(want[0])), (got[0], want[0])
    for name, g, w in (("d hidden", got[1], want[1]), ("d weight", got[2], want[2])):
        assert torch.isfinite(g).all(), name
        assert rel(g, w) <= grad_tol, (name, rel(g, w))
    if mask is not None:
        assert (got[1][~mask] == 0).all()


@pytest.mark.parametrize("backend", OPD_BACKENDS)
def test_lm_head_stats_at_full_vocabulary(head, backend):
    """bf16 logits are off by |dz| <= 2^-8 |z|, and the log-sum-exp by a p-weighted mean of such errors: log-probs
    within 2^-7 max|z| of the fp32 ones. Relative errors in norm measured on CPU at this d and |V| (chunked and
    rowwise; N = 24): logsumexp 1.9e-5, log-probs 3e-4, top-k log-probs 2.1e-3, entropy 1.3e-4; bounds ~5-25x above
    (a lost vocabulary split would move the log-sum-exp by ~5e-3 relative)."""
    check_backend(backend)
    probe = head["ids"][:, :3].flip(0)  # ids that are another row's top-k: log-probs of every size
    got = oprd_kernels.lm_head_stats(head["h"], head["w"], ids=probe, topk=K, entropy=True, backend=backend)
    want = oprd_kernels.lm_head_stats(head["h"].float(), head["w"].float(), ids=probe, topk=K, entropy=True,
                                      backend="chunked")
    assert rel(got.logsumexp, want.logsumexp) <= 5e-4
    assert rel(got.log_probs, want.log_probs) <= 2e-3
    assert rel(got.entropy, want.entropy) <= 2e-3
    rows = same_topk_rows(head, backend)
    assert int(rows.sum()) >= N // 4
    top_got = got.topk_log_probs[rows].sort(-1).values
    top_want = want.topk_log_probs[rows].sort(-1).values
    assert rel(top_got, top_want) <= 1e-2
    assert float((top_got - top_want).abs().max()) <= 2**-7 * float(want.logsumexp.abs().max())


# ------------------------------------------------------------------------- more rows than grid dimension 1 allows
# mse and nmse: the two code paths (nmse and cosine share the per-row statistics); each loss type is one more compile.

N_SEL, ROWS_B, ROWS_S, LAYERS = 70_000, 5, 16_384, 3


def selected_rows(g: torch.Generator) -> torch.Tensor:
    rows = torch.randperm(ROWS_B * ROWS_S, generator=g, device=DEVICE)[:N_SEL].sort().values
    rows[-7:] = rows[-8]  # repeats, at the end of the cache order (beyond entry 65,535)
    return rows


def assert_close_to(got: torch.Tensor, truth: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(got.double(), truth, rtol=1e-4, atol=1e-4 * float(truth.abs().max()),
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("loss_type", ["mse", "nmse"])
def test_alignment_beyond_65535_rows(loss_type):
    assert tri_align.fwd_grid(LAYERS, N_SEL, tri_align.launch_options(DIM)["BLOCK_R"])[0] > 65535  # grid dim 0
    g = torch.Generator(device=DEVICE).manual_seed(12)
    student = [torch.randn(ROWS_B, ROWS_S, DIM, generator=g, device=DEVICE).requires_grad_() for _ in range(LAYERS)]
    rows = selected_rows(g)
    teacher = torch.randn(LAYERS + 1, N_SEL, DIM, generator=g, device=DEVICE)
    layer_map = torch.tensor([0, 2, 3], device=DEVICE)
    weights = torch.rand(N_SEL, generator=g, device=DEVICE)
    kw = dict(rows=rows, weights=weights, layer_map=layer_map, loss_type=loss_type, reduction="none")
    got = tri_align.alignment_loss(student, teacher, **kw)
    got_g = torch.autograd.grad(got, student, torch.tensor([1.0, -0.5, 2.0], device=DEVICE))
    leaves = [s.detach().double().requires_grad_() for s in student]
    truth = ref.alignment_loss(leaves, teacher.double(), **{**kw, "weights": weights.double()})
    truth_g = torch.autograd.grad(truth, leaves, torch.tensor([1.0, -0.5, 2.0], device=DEVICE, dtype=torch.float64))
    assert_close_to(got, truth, "loss")
    for i, (a, b) in enumerate(zip(got_g, truth_g)):
        assert_close_to(a, b, f"layer {i} gradient")
        last = a.reshape(-1, DIM)[rows[-1]]
        assert bool(last.abs().sum() > 0)  # the rows beyond entry 65,535 got their gradient


@pytest.mark.parametrize("loss_type", ["mse", "nmse"])
def test_bridge_beyond_65535_rows_and_repeatable_projector_gradient(loss_type):
    rank = 64
    g = torch.Generator(device=DEVICE).manual_seed(13)
    student = [torch.randn(ROWS_B, ROWS_S, DIM, generator=g, device=DEVICE).requires_grad_() for _ in range(LAYERS)]
    rows = selected_rows(g)
    proj = (torch.randn(LAYERS, rank, DIM, generator=g, device=DEVICE) / DIM**0.5).requires_grad_()
    teacher_z = torch.randn(LAYERS, N_SEL, rank, generator=g, device=DEVICE)
    kw = dict(rows=rows, loss_type=loss_type, reduction="none")
    scale = torch.tensor([1.0, -0.5, 2.0], device=DEVICE)

    def run():
        out = tri_bridge.bridge_loss(student, teacher_z, proj, **kw)
        return out.detach(), torch.autograd.grad(out, [*student, proj], scale)

    got, got_g = run()
    leaves = [s.detach().double().requires_grad_() for s in student]
    p64 = proj.detach().double().requires_grad_()
    truth = ref.bridge_loss(leaves, teacher_z.double(), p64, **kw)
    truth_g = torch.autograd.grad(truth, [*leaves, p64], scale.double())
    assert_close_to(got, truth, "loss")
    for i, (a, b) in enumerate(zip(got_g, truth_g)):
        assert_close_to(a, b, f"gradient {i}")
    again = run()[1][-1]
    assert torch.equal(again, got_g[-1])  # no atomics: the same summation order every call
