"""The reference OPRD-Bridge loss and teacher projection, checked against independent formulas.

The oracle is written on purpose in a different style from oprd_kernels.reference: explicit z_S = P_S h (einsum, one
row at a time) and z_T = P_T (h_T - mu_T) (loops over layers, rows and output coordinates), then literal loops over
layers and selected rows with explicit weights. Row formulas in the r-dim space: mse = |z_S - z_T|^2 / r,
nmse = |z_S_hat - z_T_hat|^2 / r = (|z_S_hat|^2 + |z_T_hat|^2 - 2 cos) / r, cosine = 1 - cos, a zero row having
cosine 0 and a zero unit vector. Inputs are drawn fresh per test from a generator seeded by the test's id.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from oracles import F64, LOSS_TYPES, make_rows, make_weights, oracle_row, randn, student_layer_list

import oprd_kernels
from oprd_kernels import reference as ref

# ----------------------------------------------------------------------------------------------------- the oracle

def oracle_bridge(student, teacher_z, proj, rows=None, weights=None, loss_type="nmse") -> torch.Tensor:
    """Per-layer values [L] (float64): sum over selected rows r of w_r * loss(P_l h_l[rows[r]], z_T[l][r])."""
    per_layer = []
    for l, layer in enumerate(student_layer_list(student)):
        flat = layer.detach().double().reshape(-1, layer.shape[-1])
        p = proj[l].detach().double()
        selected = list(range(flat.shape[0])) if rows is None else [int(i) for i in rows]
        n = len(selected)
        total = 0.0
        for r, i in enumerate(selected):
            z_s = torch.einsum("kd,d->k", p, flat[i])
            w = 1.0 / n if weights is None else float(weights[r])
            total += w * oracle_row(z_s, teacher_z[l][r], loss_type)
        per_layer.append(total)
    return torch.tensor(per_layer, dtype=F64)


def oracle_project_teacher(teacher_hidden, proj_t, mean_t) -> torch.Tensor:
    """z_T[l, n, k] = sum_j P_T[l, k, j] * (h[l, n, j] - mu[l, j]), one coordinate at a time (float64)."""
    layers = student_layer_list(teacher_hidden)
    d_t = layers[0].shape[-1]
    flat = [x.detach().double().reshape(-1, d_t) for x in layers]
    num_layers, n, r = len(flat), flat[0].shape[0], proj_t.shape[1]
    out = torch.zeros(num_layers, n, r, dtype=F64)
    for l in range(num_layers):
        centred = flat[l] - mean_t[l].detach().double()
        for row in range(n):
            for k in range(r):
                out[l, row, k] = torch.dot(proj_t[l, k].detach().double(), centred[row])
    return out


# ------------------------------------------------------------------------------------------------ input builders

CASES = {
    # B, S, D_s, L, r, rows kind, N_sel, weights kind
    "L1-r1-all-rows": dict(B=2, S=5, D=7, L=1, r=1, rows=None, n_sel=None, weights=None),
    "L5-r3-perm": dict(B=3, S=7, D=13, L=5, r=3, rows="perm", n_sel=17, weights="random"),
    "L5-r8-repeats-sparse-w": dict(B=2, S=9, D=37, L=5, r=8, rows="repeats", n_sel=13, weights="sparse"),
    "L3-r4-all-rows-w": dict(B=1, S=11, D=5, L=3, r=4, rows=None, n_sel=None, weights="random"),
    "L2-r1-repeats": dict(B=3, S=3, D=13, L=2, r=1, rows="repeats", n_sel=7, weights="random"),
}


def make_case(g: torch.Generator, case: dict, dtype: torch.dtype = F64, *, proj_dtype=None, z_dtype=None):
    B, S, D, L, r = case["B"], case["S"], case["D"], case["L"], case["r"]
    student = [randn(g, B, S, D, dtype=dtype) for _ in range(L)]
    rows = make_rows(g, case["rows"], B * S, case["n_sel"])
    n_sel = B * S if rows is None else rows.shape[0]
    teacher_z = randn(g, L, n_sel, r, dtype=z_dtype or dtype)
    proj = (randn(g, L, r, D) / D ** 0.5).to(proj_dtype or dtype)
    w = make_weights(g, case["weights"], n_sel)
    weights = None if w is None else w.to(F64 if dtype == F64 else torch.float32)
    return student, teacher_z, proj, rows, weights


# ------------------------------------------------------------------------------------------------------ values

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_bridge_loss_matches_einsum_oracle(gen, case, loss_type, dtype):
    student, teacher_z, proj, rows, weights = make_case(gen, CASES[case], dtype)
    expected = oracle_bridge(student, teacher_z, proj, rows, weights, loss_type)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == F64 else dict(rtol=1e-5, atol=1e-6)

    per_layer = ref.bridge_loss(student, teacher_z, proj, rows=rows, weights=weights, loss_type=loss_type,
                                reduction="none")
    mean = ref.bridge_loss(student, teacher_z, proj, rows=rows, weights=weights, loss_type=loss_type)
    assert per_layer.dtype == dtype and mean.dtype == dtype
    assert per_layer.shape == (CASES[case]["L"],) and mean.shape == ()
    torch.testing.assert_close(per_layer.double(), expected, **tol)
    torch.testing.assert_close(mean.double(), torch.tensor(sum(expected.tolist()) / len(expected), dtype=F64), **tol)
    torch.testing.assert_close(per_layer.mean(), mean)


def test_default_loss_type_is_nmse_two_minus_two_cos_over_r(gen):
    student, teacher_z, proj, rows, _ = make_case(gen, CASES["L5-r3-perm"])
    default = ref.bridge_loss(student, teacher_z, proj, rows=rows, reduction="none")
    assert torch.equal(default, ref.bridge_loss(student, teacher_z, proj, rows=rows, loss_type="nmse",
                                                reduction="none"))
    r = proj.shape[1]
    for l in range(len(student)):
        z_s = student[l].reshape(-1, student[l].shape[-1])[rows] @ proj[l].T
        cos = F.cosine_similarity(z_s, teacher_z[l], dim=-1)
        assert default[l].item() == pytest.approx(((2 - 2 * cos) / r).mean().item(), rel=1e-10)


@pytest.mark.parametrize("with_weights", [False, True])
def test_rank_one_signs(gen, with_weights):
    """r = 1: unit vectors are +-1, so nmse per row is 0 (signs agree) or 4, cosine 0 or 2, mse (z_s - z_t)^2."""
    B, S, D, L = 3, 7, 13, 2
    student = [randn(gen, B, S, D) for _ in range(L)]
    rows = make_rows(gen, "repeats", B * S, 15)
    proj = randn(gen, L, 1, D)
    teacher_z = randn(gen, L, 15, 1)
    weights = torch.rand(15, generator=gen, dtype=F64) + 0.1 if with_weights else None
    w = weights if with_weights else torch.full((15,), 1 / 15, dtype=F64)
    nmse = ref.bridge_loss(student, teacher_z, proj, rows=rows, weights=weights, reduction="none")
    cosine = ref.bridge_loss(student, teacher_z, proj, rows=rows, weights=weights, loss_type="cosine",
                             reduction="none")
    mse = ref.bridge_loss(student, teacher_z, proj, rows=rows, weights=weights, loss_type="mse", reduction="none")
    for l in range(L):
        flat = student[l].reshape(-1, D)
        z_s = torch.tensor([float(torch.dot(proj[l, 0], flat[int(i)])) for i in rows], dtype=F64)
        z_t = teacher_z[l, :, 0]
        disagree = ((z_s > 0) != (z_t > 0)).double()
        assert 0 < disagree.sum() < 15  # the draw exercises both outcomes
        assert nmse[l].item() == pytest.approx(float((w * 4 * disagree).sum()), rel=1e-12)
        assert cosine[l].item() == pytest.approx(float((w * 2 * disagree).sum()), rel=1e-12)
        assert mse[l].item() == pytest.approx(float((w * (z_s - z_t) ** 2).sum()), rel=1e-12)


def test_end_to_end_with_project_teacher_and_eq11_pairing(gen):
    """Teacher L_T=4, D_t=11 -> P_T from eigh of the centred covariance -> z_T; student L=3, D_s=7, r=4."""
    B, S, D_s, D_t, L, L_t, r = 2, 13, 7, 11, 3, 4, 4
    mix = randn(gen, D_t, D_t)
    teacher_all = [randn(gen, B, S, D_t) @ mix + randn(gen, D_t) for _ in range(L_t)]
    pairing = [round((l - 1) / (L - 1) * (L_t - 1)) + 1 - 1 for l in range(1, L + 1)]  # PAPER_NOTES Eq. 11
    assert pairing == [0, 2, 3]
    proj_t, mean_t = [], []
    for m in pairing:
        rows_t = teacher_all[m].reshape(-1, D_t)
        mu = rows_t.mean(0)
        _, vecs = torch.linalg.eigh((rows_t - mu).T @ (rows_t - mu) / rows_t.shape[0])
        proj_t.append(vecs[:, -r:].flip(-1).T)  # top-r eigenvectors as rows
        mean_t.append(mu)
    proj_t, mean_t = torch.stack(proj_t), torch.stack(mean_t)
    rows = make_rows(gen, "perm", B * S, 19)
    hidden = torch.stack([teacher_all[m].reshape(-1, D_t)[rows] for m in pairing])

    teacher_z = ref.project_teacher(hidden, proj_t, mean_t)
    explicit_z = oracle_project_teacher(hidden, proj_t, mean_t)
    torch.testing.assert_close(teacher_z, explicit_z, rtol=1e-12, atol=1e-12)

    student = [randn(gen, B, S, D_s) for _ in range(L)]
    proj = randn(gen, L, r, D_s)
    weights = make_weights(gen, "random", 19)
    for loss_type in LOSS_TYPES:
        got = ref.bridge_loss(student, teacher_z, proj, rows=rows, weights=weights, loss_type=loss_type,
                              reduction="none")
        torch.testing.assert_close(got, oracle_bridge(student, explicit_z, proj, rows, weights, loss_type),
                                   rtol=1e-10, atol=1e-12)


def test_proj_and_student_gradients_closed_form_for_mse(gen):
    """dL/dP_l = (1/L) sum_r w_r 2 (z_s - z_t) h^T / r and
    dL/dh_l[i] = (1/L) sum_{rows[r]=i} w_r 2 P^T (z_s - z_t) / r."""
    B, S, D, L, r = 2, 5, 7, 3, 4
    student = [randn(gen, B, S, D).requires_grad_() for _ in range(L)]
    rows = torch.tensor([3, 9, 3, 0, 7, 3], dtype=torch.int64)
    teacher_z = randn(gen, L, 6, r)
    proj = randn(gen, L, r, D).requires_grad_()
    weights = torch.rand(6, generator=gen, dtype=F64) + 0.1
    ref.bridge_loss(student, teacher_z, proj, rows=rows, weights=weights, loss_type="mse").backward()
    for l in range(L):
        flat = student[l].detach().reshape(-1, D)
        g_p = torch.zeros(r, D, dtype=F64)
        g_h = torch.zeros(B * S, D, dtype=F64)
        for k, i in enumerate(rows.tolist()):
            diff = proj[l].detach() @ flat[i] - teacher_z[l, k]
            g_p += weights[k] * 2 * torch.outer(diff, flat[i]) / r / L
            g_h[i] += weights[k] * 2 * (proj[l].detach().T @ diff) / r / L
        torch.testing.assert_close(proj.grad[l], g_p, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(student[l].grad.reshape(-1, D), g_h, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------- forms of the same input

@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_list_and_stacked_inputs_are_equal(gen, loss_type):
    B, S, D, L, r = 3, 5, 13, 4, 3
    data = randn(gen, L, B, S, D, dtype=torch.float32)
    rows = make_rows(gen, "repeats", B * S, 11)
    teacher_z = randn(gen, L, 11, r, dtype=torch.float32)
    proj = randn(gen, L, r, D, dtype=torch.float32)
    weights = torch.rand(11, generator=gen) + 0.2

    as_list = [data[l].clone().requires_grad_() for l in range(L)]
    stacked = data.reshape(L, B * S, D).clone().requires_grad_()
    p1, p2 = proj.clone().requires_grad_(), proj.clone().requires_grad_()
    kw = dict(rows=rows, weights=weights, loss_type=loss_type, reduction="none")
    a = ref.bridge_loss(as_list, teacher_z, p1, **kw)
    b = ref.bridge_loss(stacked, teacher_z, p2, **kw)
    c = ref.bridge_loss(stacked, list(teacher_z.unbind(0)), proj, **kw)
    assert torch.equal(a, b) and torch.equal(a, c)
    a.sum().backward()
    b.sum().backward()
    assert torch.equal(torch.stack([x.grad for x in as_list]).reshape(L, B * S, D), stacked.grad)
    assert torch.equal(p1.grad, p2.grad)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("view", ["transposed-BS", "strided-D", "stacked-transposed"])
def test_non_contiguous_student_views(gen, loss_type, view):
    B, S, D, L, r = 3, 5, 7, 2, 3
    if view == "transposed-BS":
        base = randn(gen, L, S, B, D, dtype=torch.float32).requires_grad_()
        student = [base[l].transpose(0, 1) for l in range(L)]
    elif view == "strided-D":
        base = randn(gen, L, B, S, 2 * D, dtype=torch.float32).requires_grad_()
        student = [base[l][..., ::2] for l in range(L)]
    else:
        base = randn(gen, B * S, L, D, dtype=torch.float32).requires_grad_()
        student = base.transpose(0, 1)
    layers = student_layer_list(student)
    assert not all(x.is_contiguous() for x in layers)
    dense = [x.detach().contiguous().requires_grad_() for x in layers]
    rows = make_rows(gen, "repeats", B * S, 9)
    teacher_z = randn(gen, L, 9, r, dtype=torch.float32)
    proj = randn(gen, L, r, D, dtype=torch.float32)
    kw = dict(rows=rows, loss_type=loss_type, reduction="none")
    got = ref.bridge_loss(student, teacher_z, proj, **kw)
    want = ref.bridge_loss(dense, teacher_z, proj, **kw)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(got.double(), oracle_bridge(dense, teacher_z, proj, rows, None, loss_type),
                               rtol=1e-5, atol=1e-6)
    got.sum().backward()
    want.sum().backward()
    through_view = torch.stack([d.grad for d in dense])
    if view == "transposed-BS":
        torch.testing.assert_close(base.grad.transpose(1, 2), through_view, rtol=1e-6, atol=0)
    elif view == "strided-D":
        torch.testing.assert_close(base.grad[..., ::2], through_view, rtol=1e-6, atol=0)
        assert torch.count_nonzero(base.grad[..., 1::2]) == 0
    else:
        torch.testing.assert_close(base.grad.transpose(0, 1), through_view, rtol=1e-6, atol=0)


# -------------------------------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("form", ["list", "stacked"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradcheck_float64_student_and_proj(gen, loss_type, reduction, form):
    B, S, D, L, r = 2, 3, 5, 2, 3
    rows = torch.tensor([4, 0, 5, 4, 2, 1, 4], dtype=torch.int64)
    n_sel = rows.shape[0]
    teacher_z = randn(gen, L, n_sel, r)
    weights = torch.rand(n_sel, generator=gen, dtype=F64) + 0.05
    proj = randn(gen, L, r, D).requires_grad_()
    kw = dict(rows=rows, weights=weights, loss_type=loss_type, reduction=reduction)
    if form == "list":
        inputs = (proj, *(randn(gen, B, S, D).requires_grad_() for _ in range(L)))

        def fn(p, *layers):
            return ref.bridge_loss(list(layers), teacher_z, p, **kw)
    else:
        inputs = (proj, randn(gen, L, B * S, D).requires_grad_())

        def fn(p, stacked):
            return ref.bridge_loss(stacked, teacher_z, p, **kw)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_project_teacher(gen):
    L, N, D_t, r = 2, 5, 7, 3
    hidden = randn(gen, L, N, D_t).requires_grad_()
    proj_t = randn(gen, L, r, D_t).requires_grad_()
    mean_t = randn(gen, L, D_t).requires_grad_()
    assert torch.autograd.gradcheck(ref.project_teacher, (hidden, proj_t, mean_t), eps=1e-6, atol=1e-8, rtol=1e-6)
    layers = tuple(randn(gen, 2, 3, D_t).requires_grad_() for _ in range(L))
    assert torch.autograd.gradcheck(lambda p, m, *h: ref.project_teacher(list(h), p, m), (proj_t, mean_t, *layers),
                                    eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("teacher_form", ["stacked", "list"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_teacher_z_is_a_constant_and_proj_grad_only_when_asked(gen, loss_type, teacher_form):
    B, S, D, L, r = 2, 4, 7, 3, 2
    student = [randn(gen, B, S, D, dtype=torch.float32).requires_grad_() for _ in range(L)]
    rows = torch.tensor([5, 1, 6, 1])
    z_data = randn(gen, L, 4, r, dtype=torch.float32)
    teacher_z = z_data.clone().requires_grad_() if teacher_form == "stacked" else \
        [z_data[l].clone().requires_grad_() for l in range(L)]
    z_leaves = [teacher_z] if teacher_form == "stacked" else teacher_z
    frozen_proj = randn(gen, L, r, D, dtype=torch.float32)

    loss = ref.bridge_loss(student, teacher_z, frozen_proj, rows=rows, loss_type=loss_type)
    assert torch.equal(loss, ref.bridge_loss(student, z_data, frozen_proj, rows=rows, loss_type=loss_type))
    loss.backward()
    assert all(z.grad is None for z in z_leaves)
    assert frozen_proj.grad is None
    assert all(torch.count_nonzero(s.grad) > 0 for s in student)

    trained_proj = frozen_proj.clone().requires_grad_()  # Stage 1
    ref.bridge_loss([s.detach() for s in student], teacher_z, trained_proj, rows=rows, loss_type=loss_type).backward()
    assert trained_proj.grad is not None and torch.count_nonzero(trained_proj.grad) > 0
    assert all(z.grad is None for z in z_leaves)
    frozen_everything = ref.bridge_loss([s.detach() for s in student], teacher_z, frozen_proj, rows=rows,
                                        loss_type=loss_type)
    assert not frozen_everything.requires_grad


# ------------------------------------------------------------------------------------------------ edge cases

@pytest.mark.parametrize("with_weights", [False, True])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_empty_row_set_gives_zero_loss_and_zero_gradient(gen, loss_type, with_weights):
    B, S, D, L, r = 2, 5, 7, 3, 4
    student = [randn(gen, B, S, D, dtype=torch.float32).requires_grad_() for _ in range(L)]
    proj = randn(gen, L, r, D, dtype=torch.float32).requires_grad_()
    rows = torch.empty(0, dtype=torch.int64)
    teacher_z = torch.empty(L, 0, r)
    weights = torch.empty(0) if with_weights else None
    loss = ref.bridge_loss(student, teacher_z, proj, rows=rows, weights=weights, loss_type=loss_type)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    for leaf in (*student, proj):
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and torch.count_nonzero(leaf.grad) == 0
    per_layer = ref.bridge_loss(student, teacher_z, proj, rows=rows, weights=weights, loss_type=loss_type,
                                reduction="none")
    assert torch.equal(per_layer, torch.zeros(L))


@pytest.mark.parametrize("zero_side", ["student", "teacher", "both"])
@pytest.mark.parametrize("loss_type", ["nmse", "cosine"])
def test_zero_norm_rows_take_the_documented_value(gen, loss_type, zero_side):
    """Layer 0: every selected row zero on `zero_side` (a zero student row projects to z_S = 0); layer 1: ordinary."""
    B, S, D, L, r = 2, 4, 7, 2, 3
    rows = torch.tensor([6, 1, 3, 1, 0], dtype=torch.int64)
    data = randn(gen, L, B * S, D)
    teacher_z = randn(gen, L, 5, r)
    if zero_side in ("student", "both"):
        data[0, rows] = 0
    if zero_side in ("teacher", "both"):
        teacher_z[0] = 0
    student = data.clone().requires_grad_()
    proj = randn(gen, L, r, D).requires_grad_()

    per_layer = ref.bridge_loss(student, teacher_z, proj, rows=rows, loss_type=loss_type, reduction="none")
    assert torch.isfinite(per_layer).all()
    documented = 1.0 if loss_type == "cosine" else (0.0 if zero_side == "both" else 1.0 / r)
    assert per_layer[0].item() == pytest.approx(documented, rel=1e-12, abs=1e-15)
    torch.testing.assert_close(per_layer, oracle_bridge(data, teacher_z, proj, rows, None, loss_type),
                               rtol=1e-10, atol=1e-12)
    per_layer.sum().backward()
    assert torch.isfinite(student.grad).all() and torch.isfinite(proj.grad).all()
    if zero_side in ("student", "both"):
        assert torch.count_nonzero(student.grad[0, rows]) == 0
        assert torch.count_nonzero(proj.grad[0]) == 0  # z_S = P h = 0 contributes nothing to P either
    else:
        torch.testing.assert_close(proj.grad[0], torch.zeros_like(proj.grad[0]), rtol=0, atol=1e-10)
    assert torch.count_nonzero(student.grad[1]) > 0


# ----------------------------------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("correlated", [False, True])
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_low_precision_gives_float32_close_to_float64_truth(gen, loss_type, correlated, low):
    B, S, D, L, r = 3, 9, 37, 3, 8
    student = [randn(gen, B, S, D, dtype=low) for _ in range(L)]
    proj = (randn(gen, L, r, D) / D ** 0.5).to(low)
    rows = make_rows(gen, "repeats", B * S, 21)
    if correlated:  # cosines in the shared subspace around 0.95, as after Stage 1
        z_s = torch.stack([s.double().reshape(-1, D)[rows] @ p.double().T for s, p in zip(student, proj)])
        teacher_z = (z_s + 0.3 * z_s.std() * randn(gen, L, 21, r)).to(low)
    else:
        teacher_z = randn(gen, L, 21, r, dtype=low)
    weights = torch.rand(21, generator=gen) + 0.1
    kw = dict(rows=rows, weights=weights, loss_type=loss_type)

    got = ref.bridge_loss(student, teacher_z, proj, reduction="none", **kw)
    truth = oracle_bridge(student, teacher_z, proj, rows, weights, loss_type)  # the low values, upcast
    assert got.dtype == torch.float32
    assert ((got.double() - truth).abs() / truth.abs()).max() < 1e-5  # rows upcast first: float32 rounding only
    mean = ref.bridge_loss(student, teacher_z, proj, **kw)
    assert mean.dtype == torch.float32
    assert abs(mean.item() - truth.mean().item()) / abs(truth.mean().item()) < 1e-5

    leaves = [s.clone().requires_grad_() for s in student]
    p_leaf = proj.clone().requires_grad_()
    ref.bridge_loss(leaves, teacher_z, p_leaf, **kw).backward()
    assert all(s.grad.dtype == low and torch.isfinite(s.grad).all() for s in leaves)
    assert p_leaf.grad.dtype == low and torch.isfinite(p_leaf.grad).all()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_mixed_bf16_student_fp32_proj_and_teacher(gen, loss_type):
    case = CASES["L5-r3-perm"]
    student, teacher_z, proj, rows, weights = make_case(gen, case, torch.bfloat16, proj_dtype=torch.float32,
                                                        z_dtype=torch.float32)
    got = ref.bridge_loss(student, teacher_z, proj, rows=rows, weights=weights, loss_type=loss_type,
                          reduction="none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), oracle_bridge(student, teacher_z, proj, rows, weights, loss_type),
                               rtol=1e-4, atol=1e-6)


def test_any_float64_input_makes_float64_result(gen):
    student, teacher_z, proj, rows, _ = make_case(gen, CASES["L3-r4-all-rows-w"], torch.float32)
    assert ref.bridge_loss(student, teacher_z, proj).dtype == torch.float32
    assert ref.bridge_loss(student, teacher_z, proj.double()).dtype == F64
    assert ref.bridge_loss(student, teacher_z.double(), proj).dtype == F64


@pytest.mark.parametrize("dtypes", [
    (torch.float64, torch.float64, torch.float64, torch.float64),
    (torch.float32, torch.float32, torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.float32),
    (torch.bfloat16, torch.float32, torch.float32, torch.float32),
    (torch.float32, torch.float32, torch.float64, torch.float64),
], ids=["f64", "f32", "bf16", "bf16-hidden", "f64-mean"])
@pytest.mark.parametrize("form", ["stacked", "list"])
def test_project_teacher_explicit_formula_and_dtypes(gen, dtypes, form):
    h_dtype, p_dtype, m_dtype, out_dtype = dtypes
    L, B, S, D_t, r = 3, 2, 7, 11, 4
    if form == "stacked":
        hidden = randn(gen, L, B * S, D_t, dtype=h_dtype)
    else:
        hidden = [randn(gen, B, S, D_t, dtype=h_dtype) for _ in range(L)]
    proj_t = randn(gen, L, r, D_t, dtype=p_dtype)
    mean_t = randn(gen, L, D_t, dtype=m_dtype)
    got = ref.project_teacher(hidden, proj_t, mean_t)
    assert got.dtype == out_dtype and got.shape == (L, B * S, r)
    tol = dict(rtol=1e-12, atol=1e-12) if out_dtype == F64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.double(), oracle_project_teacher(hidden, proj_t, mean_t), **tol)
    assert oprd_kernels.project_teacher is ref.project_teacher


# ------------------------------------------------------------------------------------- public entry point

@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("loss_type", [*LOSS_TYPES, None])
def test_public_entry_point_with_reference_backend_is_the_reference(gen, loss_type, reduction):
    student, teacher_z, proj, rows, weights = make_case(gen, CASES["L5-r8-repeats-sparse-w"], torch.float32)
    kw = dict(rows=rows, weights=weights, reduction=reduction)
    if loss_type is not None:  # None: both use their default loss_type
        kw["loss_type"] = loss_type
    a = oprd_kernels.bridge_loss(student, teacher_z, proj, backend="reference", **kw)
    b = ref.bridge_loss(student, teacher_z, proj, **kw)
    assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
