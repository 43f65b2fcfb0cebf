"""The triton backend of the fused OPD passes (oprd_kernels/triton_ops/opd.py) against the chunked PyTorch passes, and
the fused losses with backend="triton" against the reference losses on hidden @ weight.T.

Without CUDA the kernels run under the interpreter on CPU tensors (tests/conftest.py), with small blocks, so the
shapes here are tiny but cover every edge: V not a multiple of the vocabulary block (37, 70), d not a power of two
(20, 40; student and teacher hidden sizes differ), row counts that leave a partial row block, vocabulary splits,
several gradient slabs, live rows given and not, k = 1 and k > 1. The oracle for bf16 is the chunked pass with a
float32 matmul on the same bf16 tensors: bf16 products are exact in float32, which is what the kernels' tl.dot with
an fp32 accumulator computes (the chunked bf16 pass rounds each logits tile to bf16 and is less accurate).
The kernels also compile for sm_90 and sm_80 without spills (benchmarks/compile_report.py --opd).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import oprd_kernels.opd as fused
from oprd_kernels.opd import _gradient, stats
from oprd_kernels.opd._passes import resolve_passes
from oprd_kernels.opd._tiles import Tiling
from oprd_kernels.reference import opd as reference
from oprd_kernels.triton_ops import opd as triton_opd

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F32 = torch.float32
# name: (positions N, student d, teacher d_t, V, ids per row k, top-k)
# "even": d and d_t multiples of the interpreter's BLOCK_D (16), the kernels' EVEN_D / T_EVEN_D path
CASES = {"small": (21, 20, 40, 37, 1, 1), "wide": (37, 40, 20, 70, 3, 5), "even": (19, 32, 48, 37, 2, 3)}
TILING = Tiling(16, 32)  # the chunked oracle's tiles; for the triton gradient, 3 x 3 slabs at N = 37, V = 70


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def make(gen, case: str, dtype: torch.dtype, with_rows: bool):
    """Student/teacher hidden states and heads (logits of order 1-3), live rows (or None) and ids [n, k]."""
    n_pos, dim, t_dim, vocab, k, _ = CASES[case]

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(DEVICE)

    h, w = rand(n_pos, dim), rand(vocab, dim, scale=dim ** -0.5 * 2)
    th, tw = rand(n_pos, t_dim), rand(vocab, t_dim, scale=t_dim ** -0.5 * 2)
    rows = None
    if with_rows:
        keep = torch.rand(n_pos, generator=gen) < 0.7
        keep[0] = keep[-1] = True
        rows = keep.nonzero().squeeze(1).to(DEVICE)
    n = n_pos if rows is None else rows.shape[0]
    ids = torch.randint(0, vocab, (n, k), generator=gen).to(DEVICE)
    return h, w, th, tw, rows, ids


def full_logits(h, w, rows):
    hf = h.float() if rows is None else h.float().index_select(0, rows)
    return hf @ w.float().T


def test_even_d_is_set_exactly_when_the_blocks_divide_d():
    opts = triton_opd._blocks("stats", torch.device("cpu"), F32)
    assert [triton_opd._even(d, opts) for d in (16, 32, 48, 20, 40, 15)] == [True] * 3 + [False] * 3
    cuda = triton_opd._blocks("stats", torch.device("cuda"), torch.bfloat16)
    assert cuda["BLOCK_D"] == 64 and all(triton_opd._even(d, cuda) for d in (896, 1536, 2048, 3584, 4096))
    assert not triton_opd._even(1000, cuda)  # the masked path


def test_backend_resolves_to_these_kernels():
    assert resolve_passes("test", "triton", torch.device(DEVICE)).logit_stats is triton_opd.logit_stats


@pytest.mark.parametrize("with_rows", [False, True], ids=["all_rows", "rows"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [F32, torch.bfloat16], ids=["fp32", "bf16"])
def test_logit_stats_matches_chunked(gen, dtype, case, with_rows):
    h, w, _, _, rows, ids = make(gen, case, dtype, with_rows)
    topk = CASES[case][5]
    got = triton_opd.logit_stats(h, w, rows, TILING, dtype, F32, ids=ids, topk=topk, entropy=True)
    want = stats.logit_stats(h, w, rows, TILING, F32, F32, ids=ids, topk=topk, entropy=True)
    for name in ("logsumexp", "at_ids", "topk_values", "entropy"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == F32 and a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    assert got.topk_ids.dtype == torch.int64 and got.topk_ids.shape == want.topk_ids.shape
    z = full_logits(h, w, rows)  # the ids hold the values, whatever order ties took
    torch.testing.assert_close(z.gather(1, got.topk_ids), got.topk_values, rtol=1e-5, atol=1e-5)
    assert (got.topk_values[:, :-1] >= got.topk_values[:, 1:]).all()
    plain = triton_opd.logit_stats(h, w, rows, TILING, dtype, F32)
    assert plain.at_ids is None and plain.topk_values is None and plain.topk_ids is None and plain.entropy is None
    torch.testing.assert_close(plain.logsumexp, want.logsumexp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case,with_rows", [("small", False), ("wide", True), ("even", True)])
@pytest.mark.parametrize("dtype", [F32, torch.bfloat16], ids=["fp32", "bf16"])
def test_reverse_kl_stats_matches_chunked(gen, dtype, case, with_rows):
    h, w, th, tw, rows, _ = make(gen, case, dtype, with_rows)
    got = triton_opd.reverse_kl_stats(h, w, th, tw, rows, TILING, (dtype, dtype), F32)
    want = stats.reverse_kl_stats(h, w, th, tw, rows, TILING, (F32, F32), F32)
    for name in ("kl", "lse_student", "lse_teacher"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-5, msg=name)
    assert (got.kl > 0).all()


def _gradient_of(form: str, gen, h, w, th, tw, rows, ids, dtype):
    n = ids.shape[0]
    if form == "kl":
        st = stats.reverse_kl_stats(h, w, th, tw, rows, TILING, (dtype, dtype), F32)
        row_w = torch.rand(n, generator=gen).to(DEVICE)
        terms = _gradient.KLTerms(th, tw, st.lse_teacher, st.kl)
        return _gradient.LogitGradient(st.lse_student, kl=terms, row_weight=row_w)
    lse = stats.logit_stats(h, w, rows, TILING, dtype, F32).logsumexp
    ids = ids[:, :1] if form == "sparse_k1" else ids
    return _gradient.LogitGradient(lse, dense=torch.randn(n, generator=gen).to(DEVICE), ids=ids,
                                   sparse=torch.randn(ids.shape, generator=gen).to(DEVICE))


@pytest.mark.parametrize("form,case,with_rows", [("sparse_k1", "small", False), ("sparse_k3", "wide", True),
                                                  ("kl", "wide", False), ("kl", "small", True),
                                                  ("sparse_k3", "even", False), ("kl", "even", True)])
@pytest.mark.parametrize("dtype", [F32, torch.bfloat16], ids=["fp32", "bf16"])
def test_backprop_logits_matches_chunked(gen, dtype, form, case, with_rows):
    h, w, th, tw, rows, ids = make(gen, case, dtype, with_rows)
    grad = _gradient_of(form, gen, h, w, th, tw, rows, ids, dtype)
    got = triton_opd.backprop_logits(h, w, rows, grad, TILING, (dtype, dtype), F32, want_hidden=True,
                                     want_weight=True)
    ref = _gradient.backprop_logits(h, w, rows, grad, TILING, (F32, F32), F32, want_hidden=True, want_weight=True)
    d_h, d_w, ref_h, ref_w = got.hidden, got.weight, ref.hidden, ref.weight
    assert d_h.dtype == h.dtype and d_h.shape == h.shape and d_w.dtype == w.dtype and d_w.shape == w.shape
    tol = 1e-5 if dtype == F32 else 1e-2  # bf16: the logits gradient is rounded to bf16 before its products
    assert rel(d_h, ref_h) < tol and rel(d_w, ref_w) < tol
    if rows is not None:
        dead = torch.ones(h.shape[0], dtype=torch.bool, device=DEVICE)
        dead[rows] = False
        assert (d_h[dead] == 0).all()


@pytest.mark.parametrize("form,case,with_rows", [("sparse_k3", "wide", True), ("kl", "even", False)])
@pytest.mark.parametrize("dtype", [F32, torch.bfloat16], ids=["fp32", "bf16"])
def test_slab_products_by_torch_match_the_triton_ones(gen, monkeypatch, dtype, form, case, with_rows):
    """$OPRD_TRITON_SLAB_GEMM=torch (cuBLAS on the GPU) gives the gradients of the default Triton slab GEMM, the
    weight gradient's gathered rows included; a wrong value names the variable."""
    h, w, th, tw, rows, ids = make(gen, case, dtype, with_rows)
    grad = _gradient_of(form, gen, h, w, th, tw, rows, ids, dtype)
    results = {}
    for gemm in triton_opd.SLAB_GEMMS:
        monkeypatch.setenv(triton_opd.SLAB_GEMM_ENV, gemm)
        results[gemm] = triton_opd.backprop_logits(h, w, rows, grad, TILING, (dtype, dtype), F32, want_hidden=True,
                                                   want_weight=True)
    tri, tor = results["triton"], results["torch"]
    tol = 1e-5 if dtype == F32 else 1e-2  # bf16 gradients: one rounding of the same fp32 sums, in another order
    assert rel(tor.hidden, tri.hidden) < tol and rel(tor.weight, tri.weight) < tol
    ref = _gradient.backprop_logits(h, w, rows, grad, TILING, (F32, F32), F32, want_hidden=True, want_weight=True)
    assert rel(tor.hidden, ref.hidden) < tol and rel(tor.weight, ref.weight) < tol
    monkeypatch.setenv(triton_opd.SLAB_GEMM_ENV, "cublas")
    with pytest.raises(ValueError, match=r"\$OPRD_TRITON_SLAB_GEMM must be one of \['triton', 'torch'\], got 'cublas'"):
        triton_opd.backprop_logits(h, w, rows, grad, TILING, (dtype, dtype), F32, want_hidden=True, want_weight=True)


@pytest.mark.parametrize("want", ["hidden", "weight"])
def test_backprop_logits_computes_only_what_is_wanted(gen, want):
    h, w, th, tw, rows, ids = make(gen, "small", F32, True)
    grad = _gradient_of("sparse_k1", gen, h, w, th, tw, rows, ids, F32)
    got = triton_opd.backprop_logits(h, w, rows, grad, Tiling(64, 64), (F32, F32), F32,
                                     want_hidden=want == "hidden", want_weight=want == "weight")
    ref = _gradient.backprop_logits(h, w, rows, grad, TILING, (F32, F32), F32, want_hidden=True, want_weight=True)
    d_h, d_w, ref_h, ref_w = got.hidden, got.weight, ref.hidden, ref.weight
    if want == "hidden":
        assert d_w is None and rel(d_h, ref_h) < 1e-5
    else:
        assert d_h is None and rel(d_w, ref_w) < 1e-5


def test_float32_inputs_with_a_bf16_matmul_round_the_operands(gen):
    """mm_dtype bf16 on float32 tensors (autocast): the operands are rounded to bf16 (to nearest even) in registers."""
    h, w, _, _, rows, ids = make(gen, "small", F32, True)
    got = triton_opd.logit_stats(h, w, rows, TILING, torch.bfloat16, F32, ids=ids, topk=1)
    want = stats.logit_stats(h.bfloat16(), w.bfloat16(), rows, TILING, F32, F32, ids=ids, topk=1)
    for name in ("logsumexp", "at_ids", "topk_values"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-5, msg=name)


def test_strided_inputs_are_read_in_place(gen):
    """Hidden states with a column stride of 2, a weight stored transposed, ids with a column stride."""
    n, dim, vocab = 21, 20, 37
    h = torch.randn(n, 2 * dim, generator=gen).to(DEVICE)[:, ::2]
    w = (torch.randn(dim, vocab, generator=gen) * 0.4).to(DEVICE).T
    ids = torch.randint(0, vocab, (n, 4), generator=gen).to(DEVICE)[:, ::2]
    assert h.stride(1) != 1 and w.stride(1) != 1 and ids.stride(1) != 1
    got = triton_opd.logit_stats(h, w, None, TILING, F32, F32, ids=ids, topk=2)
    want = stats.logit_stats(h, w, None, TILING, F32, F32, ids=ids, topk=2)
    torch.testing.assert_close(got.logsumexp, want.logsumexp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.at_ids, want.at_ids, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.topk_values, want.topk_values, rtol=1e-5, atol=1e-5)
    grad = _gradient.LogitGradient(want.logsumexp, dense=torch.randn(n, generator=gen).to(DEVICE), ids=ids,
                                   sparse=torch.randn(n, 4, generator=gen).to(DEVICE)[:, ::2])
    got = triton_opd.backprop_logits(h, w, None, grad, TILING, (F32, F32), F32, want_hidden=True,
                                     want_weight=True)
    ref = _gradient.backprop_logits(h, w, None, grad, TILING, (F32, F32), F32, want_hidden=True, want_weight=True)
    d_h, d_w, ref_h, ref_w = got.hidden, got.weight, ref.hidden, ref.weight
    assert rel(d_h, ref_h) < 1e-5 and rel(d_w, ref_w) < 1e-5


def test_float64_and_large_topk_fall_back_to_the_chunked_passes(gen):
    h, w, th, tw, rows, ids = make(gen, "small", torch.float64, True)
    got = triton_opd.logit_stats(h, w, rows, TILING, torch.float64, torch.float64, ids=ids, topk=3, entropy=True)
    want = stats.logit_stats(h, w, rows, TILING, torch.float64, torch.float64, ids=ids, topk=3, entropy=True)
    for a, b in zip((got.logsumexp, got.at_ids, got.topk_values, got.topk_ids, got.entropy),
                    (want.logsumexp, want.at_ids, want.topk_values, want.topk_ids, want.entropy)):
        assert torch.equal(a, b)
    kl = triton_opd.reverse_kl_stats(h, w, th, tw, rows, TILING, (torch.float64,) * 2, torch.float64)
    assert kl.kl.dtype == torch.float64
    k = triton_opd.MAX_TOPK + 1
    w_big = torch.randn(k + 3, h.shape[1], generator=gen).to(DEVICE)
    big = triton_opd.logit_stats(h.float(), w_big, None, TILING, F32, F32, topk=k)
    ref = stats.logit_stats(h.float(), w_big, None, TILING, F32, F32, topk=k)
    assert torch.equal(big.topk_ids, ref.topk_ids) and torch.equal(big.logsumexp, ref.logsumexp)


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


@pytest.mark.parametrize("kind", ["sampled_token", "topk", "full_vocab", "at_ids"])
@pytest.mark.parametrize("dtype", [F32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_losses_match_the_reference(gen, dtype, kind):
    """[B, T, d] states with a mask; the reference runs on float32 copies of the same tensors (exact logits). at_ids:
    the update phase with the teacher's log-probs at given ids precomputed (fused_opd_loss_at_ids)."""
    batch, steps, dim, t_dim, vocab, k = 2, 9, 40, 20, 37, 3
    h = (torch.randn(batch, steps, dim, generator=gen)).to(dtype).to(DEVICE)
    w = (torch.randn(vocab, dim, generator=gen) * dim ** -0.5 * 2).to(dtype).to(DEVICE)
    th = torch.randn(batch, steps, t_dim, generator=gen).to(dtype).to(DEVICE)
    tw = (torch.randn(vocab, t_dim, generator=gen) * t_dim ** -0.5 * 2).to(dtype).to(DEVICE)
    mask = (torch.rand(batch, steps, generator=gen) < 0.7).to(DEVICE)
    mask[0, 0] = True
    tokens = torch.randint(0, vocab, (batch, steps), generator=gen).to(DEVICE)

    ids = torch.randint(0, vocab, (batch, steps, k), generator=gen).to(DEVICE)  # at_ids: the teacher side given
    teacher_log_probs = torch.log_softmax(th.float() @ tw.float().T, dim=-1).gather(-1, ids)

    hf, wf = _leaf(h.float()), _leaf(w.float())
    z, zt = hf @ wf.T, th.float() @ tw.float().T
    if kind == "sampled_token":
        want = reference.sampled_token_opd_loss(z, zt, tokens, mask)
    elif kind == "topk":
        want = reference.topk_opd_loss(z, zt, mask, k=k)
    elif kind == "full_vocab":
        want = reference.full_vocab_opd_loss(z, zt, mask)
    else:
        want = reference.opd_loss_at_ids(z, ids, teacher_log_probs, mask)
    want.backward()

    hl, wl = _leaf(h), _leaf(w)
    args = (hl, wl, th, tw)
    if kind == "sampled_token":
        got = fused.fused_sampled_token_opd_loss(*args, tokens, mask, vocab_block=16, backend="triton")
    elif kind == "topk":
        got = fused.fused_topk_opd_loss(*args, mask, k=k, vocab_block=16, backend="triton")
    elif kind == "full_vocab":
        got = fused.fused_full_vocab_opd_loss(*args, mask, vocab_block=16, backend="triton")
    else:
        got = fused.fused_opd_loss_at_ids(hl, wl, ids, teacher_log_probs, mask, vocab_block=16, backend="triton")
    got.backward()
    assert got.dtype == F32 and hl.grad.dtype == dtype and wl.grad.dtype == dtype
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
    tol = 1e-5 if dtype == F32 else 1.5e-2
    assert rel(hl.grad, hf.grad) < tol and rel(wl.grad, wf.grad) < tol
    assert (hl.grad[~mask] == 0).all()


def test_lm_head_stats_through_the_triton_backend(gen):
    h, w, _, _, _, ids = make(gen, "wide", torch.bfloat16, False)
    got = fused.lm_head_stats(h, w, ids=ids, topk=4, entropy=True, backend="triton")
    want = fused.lm_head_stats(h.float(), w.float(), ids=ids, topk=4, entropy=True, backend="chunked")
    for name in ("logsumexp", "log_probs", "topk_log_probs", "entropy"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def compile_reports() -> dict[int, list[dict]]:
    """benchmarks/compile_report.py --opd for sm_90, sm_80 and sm_89, and --candidates for sm_90, run side by side
    (~15 s each)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); import compile_report; "
            "print('JSON' + json.dumps(compile_report.main(sys.argv[1:])))")
    runs = {arch: ["--opd", "--quick", "--arch", str(arch)] for arch in (90, 80, 89)}
    runs["candidates"] = ["--candidates", "--arch", "90"]
    procs = {key: subprocess.Popen([sys.executable, "-c", code, *argv], cwd=ROOT, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE) for key, argv in runs.items()}
    out = {}
    for key, proc in procs.items():
        stdout, stderr = proc.communicate()
        assert proc.returncode == 0, stderr[-3000:]
        out[key] = json.loads(next(line for line in stdout.splitlines() if line.startswith("JSON"))[4:])
    return out


@pytest.mark.parametrize("arch", [90, 80, 89])
def test_opd_kernels_compile_without_spills(compile_reports, arch):
    reports = compile_reports[arch]
    names = {r["variant"].split("/")[0] for r in reports}
    assert names == {"opd_stats", "opd_kl_stats", "opd_logits_at", "opd_grad_tile", "opd_matmul_acc"}
    for r in reports:
        assert r["local_bytes"] == 0, f"{r['variant']} spills to local memory"
        assert r["registers"] <= 255
        assert r["shared_fits"], r  # the pipelined operands fit this arch's shared memory (sm_89: 99 KB)
        if not r["variant"].startswith("opd_logits_at"):  # the tl.dot kernels: bf16 tensor cores, 16-byte copies
            mma = "HGMMA" if arch == 90 else "HMMA"  # sm_90: warpgroup MMA (wgmma), not the sm_80 instruction
            assert r["mma"] and all(m.startswith(mma + ".") for m in r["mma"]), r
            assert any(c.startswith("LDGSTS") and c.endswith(".128") for c in r["async_copies"]), r
        if r["variant"].startswith("opd_matmul_acc"):
            assert "LDG.E.128" in r["global_loads"] and "STG.E.128" in r["global_stores"], r  # the fp32 C tile


def test_the_tuning_candidates_compile_clean_for_sm_90(compile_reports):
    """Every block candidate benchmarks/bench_opd_tuning.py times on the GPU compiles for sm_90 without spills,
    within its shared memory, on warpgroup MMA with 16-byte async copies: no GPU minute goes to one that cannot."""
    from bench_opd_tuning import CANDIDATES

    reports = compile_reports["candidates"]
    assert len(reports) == sum(len(c) + (len(c) if name == "mm" else 0) for name, c in CANDIDATES["cuda"].items())
    for r in reports:
        assert r["local_bytes"] == 0 and r["shared_fits"] and r["registers"] <= 255, r
        assert r["mma"] and all(m.startswith("HGMMA.") for m in r["mma"]), r
        assert any(c.startswith("LDGSTS") and c.endswith(".128") for c in r["async_copies"]), r
