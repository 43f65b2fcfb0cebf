"""The reference alignment loss and `rep/cosine_similarity` diagnostic, checked against independent formulas.

The oracle below is written on purpose in a different style from oprd_kernels.reference: literal Python loops over
layers and selected rows, explicit per-row weights (PAPER_NOTES Eq. 6), cosines from
torch.nn.functional.cosine_similarity, nmse from the identity |s_hat - t_hat|^2 = |s_hat|^2 + |t_hat|^2 - 2 cos
(= (2 - 2 cos) for non-zero rows), and the documented zero-norm rule (a zero row has cosine 0 and a zero unit vector).
Inputs are drawn fresh per test from a generator seeded by the test's id.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from oracles import F64, LOSS_TYPES, make_rows, make_weights, oracle_cosine, oracle_row, randn, student_layer_list

import oprd_kernels
from oprd_kernels import reference as ref

# ----------------------------------------------------------------------------------------------------- the oracle

def oracle_alignment(student, teacher, rows=None, weights=None, layer_map=None, loss_type="mse") -> torch.Tensor:
    """Per-layer values [L] (float64): for each layer l, sum over selected rows r of
    w_r * loss(s_l[rows[r]], t[map[l]][r])."""
    per_layer = []
    for l, layer in enumerate(student_layer_list(student)):
        flat = layer.detach().double().reshape(-1, layer.shape[-1])
        t_layer = teacher[l if layer_map is None else int(layer_map[l])]
        selected = list(range(flat.shape[0])) if rows is None else [int(i) for i in rows]
        n = len(selected)
        total = 0.0
        for r, i in enumerate(selected):
            w = 1.0 / n if weights is None else float(weights[r])
            total += w * oracle_row(flat[i], t_layer[r], loss_type)
        per_layer.append(total)
    return torch.tensor(per_layer, dtype=F64)


def oracle_cosine_similarity(student, teacher, rows=None, weights=None, layer_map=None) -> torch.Tensor:
    """Per-layer weighted mean cosine [L] (float64): sum w cos / sum w, 0 when sum w == 0."""
    per_layer = []
    for l, layer in enumerate(student_layer_list(student)):
        flat = layer.detach().double().reshape(-1, layer.shape[-1])
        t_layer = teacher[l if layer_map is None else int(layer_map[l])]
        selected = list(range(flat.shape[0])) if rows is None else [int(i) for i in rows]
        num, den = 0.0, 0.0
        for r, i in enumerate(selected):
            w = 1.0 if weights is None else float(weights[r])
            num += w * oracle_cosine(flat[i], t_layer[r])
            den += w
        per_layer.append(num / den if den > 0 else 0.0)
    return torch.tensor(per_layer, dtype=F64)


# ------------------------------------------------------------------------------------------------ input builders

CASES = {
    # B, S, D, L (student), L_t (teacher cache), rows kind, N_sel, weights kind, layer_map
    "L1-all-rows": dict(B=3, S=7, D=13, L=1, L_t=1, rows=None, n_sel=None, weights=None, layer_map=None),
    "L5-perm-subset": dict(B=2, S=11, D=37, L=5, L_t=5, rows="perm", n_sel=17, weights="random", layer_map=None),
    "L5-repeats-sparse-w": dict(B=4, S=5, D=7, L=5, L_t=5, rows="repeats", n_sel=23, weights="sparse",
                                layer_map=None),
    "L5-into-3-layer_map": dict(B=3, S=9, D=7, L=5, L_t=3, rows="perm", n_sel=19, weights="random",
                                layer_map=[2, 0, 2, 1, 0]),
    "L1-into-4-layer_map": dict(B=1, S=13, D=37, L=1, L_t=4, rows="repeats", n_sel=11, weights=None,
                                layer_map=[3]),
    "L5-all-rows-w": dict(B=2, S=3, D=5, L=5, L_t=5, rows=None, n_sel=None, weights="random", layer_map=None),
}


def make_case(g: torch.Generator, case: dict, dtype: torch.dtype = F64, *, teacher_dtype: torch.dtype | None = None):
    B, S, D, L, L_t = case["B"], case["S"], case["D"], case["L"], case["L_t"]
    student = [randn(g, B, S, D, dtype=dtype) for _ in range(L)]
    rows = make_rows(g, case["rows"], B * S, case["n_sel"])
    n_sel = B * S if rows is None else rows.shape[0]
    teacher = randn(g, L_t, n_sel, D, dtype=teacher_dtype or dtype)
    w = make_weights(g, case["weights"], n_sel)
    weights = None if w is None else w.to(torch.float32 if dtype != F64 else F64)
    layer_map = None if case["layer_map"] is None else torch.tensor(case["layer_map"], dtype=torch.int64)
    return student, teacher, rows, weights, layer_map


def kwargs(rows, weights, layer_map) -> dict:
    return dict(rows=rows, weights=weights, layer_map=layer_map)


# ------------------------------------------------------------------------------------------------------ values

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_alignment_loss_matches_loop_oracle(gen, case, loss_type, dtype):
    student, teacher, rows, weights, layer_map = make_case(gen, CASES[case], dtype)
    expected = oracle_alignment(student, teacher, rows, weights, layer_map, loss_type)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == F64 else dict(rtol=1e-5, atol=1e-7)

    per_layer = ref.alignment_loss(student, teacher, loss_type=loss_type, reduction="none",
                                   **kwargs(rows, weights, layer_map))
    mean = ref.alignment_loss(student, teacher, loss_type=loss_type, **kwargs(rows, weights, layer_map))

    assert per_layer.dtype == dtype and mean.dtype == dtype
    assert per_layer.shape == (CASES[case]["L"],) and mean.shape == ()
    torch.testing.assert_close(per_layer.double(), expected, **tol)
    torch.testing.assert_close(mean.double(), torch.tensor(sum(expected.tolist()) / len(expected), dtype=F64), **tol)
    # reduction="none" is the per-layer breakdown of reduction="mean"
    torch.testing.assert_close(per_layer.mean(), mean)


def test_default_loss_type_is_mse_and_default_weights_are_token_mean(gen):
    student, teacher, rows, _, _ = make_case(gen, CASES["L5-perm-subset"])
    n_sel = rows.shape[0]
    default = ref.alignment_loss(student, teacher, rows=rows)
    explicit = ref.alignment_loss(student, teacher, rows=rows, loss_type="mse")
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    uniform = torch.full((n_sel,), 1.0 / n_sel, dtype=F64)
    torch.testing.assert_close(default, ref.alignment_loss(student, teacher, rows=rows, weights=uniform),
                               rtol=1e-12, atol=0)
    # weights are used as given, not renormalised: scaling them scales the loss
    torch.testing.assert_close(ref.alignment_loss(student, teacher, rows=rows, weights=3.5 * uniform), 3.5 * default,
                               rtol=1e-12, atol=0)


def test_mse_is_eq6_with_per_sample_means_as_weights(gen):
    """Eq. 6 with a position mask m: (1/L) sum_l (1/sum m) sum_t m_t |h_s - h_t|^2 / d, with the mask as rows."""
    B, S, D, L = 3, 6, 13, 4
    student = [randn(gen, B, S, D) for _ in range(L)]
    mask = torch.rand(B, S, generator=gen) < 0.6
    mask[0, 0] = True
    full_teacher = [randn(gen, B, S, D) for _ in range(L)]
    rows = mask.reshape(-1).nonzero().squeeze(1)
    teacher = torch.stack([t.reshape(-1, D)[rows] for t in full_teacher])

    expected = 0.0
    for l in range(L):
        acc, count = 0.0, 0
        for b in range(B):
            for s in range(S):
                if mask[b, s]:
                    acc += float(((student[l][b, s] - full_teacher[l][b, s]) ** 2).sum()) / D
                    count += 1
        expected += acc / count
    expected /= L
    got = ref.alignment_loss(student, teacher, rows=rows)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_mse_gradient_closed_form_with_repeated_rows(gen):
    """d/ds_l[i] = (1/L) * sum_{r: rows[r] = i} w_r * 2 (s_l[i] - t_{map[l]}[r]) / D, accumulated over repeats."""
    B, S, D, L, L_t = 2, 5, 7, 3, 2
    student = [randn(gen, B, S, D).requires_grad_() for _ in range(L)]
    rows = torch.tensor([3, 9, 3, 0, 7, 3, 9], dtype=torch.int64)
    teacher = randn(gen, L_t, rows.shape[0], D)
    weights = torch.rand(rows.shape[0], generator=gen, dtype=F64) + 0.1
    layer_map = torch.tensor([1, 0, 1])
    ref.alignment_loss(student, teacher, rows=rows, weights=weights, layer_map=layer_map).backward()
    for l in range(L):
        expected = torch.zeros(B * S, D, dtype=F64)
        flat = student[l].detach().reshape(-1, D)
        for r in range(rows.shape[0]):
            i = int(rows[r])
            expected[i] += weights[r] * 2 * (flat[i] - teacher[int(layer_map[l]), r]) / D / L
        torch.testing.assert_close(student[l].grad.reshape(-1, D), expected, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------- forms of the same input

@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_list_and_stacked_student_and_teacher_are_equal(gen, loss_type):
    B, S, D, L, L_t = 3, 5, 13, 5, 3
    data = randn(gen, L, B, S, D, dtype=torch.float32)
    rows = make_rows(gen, "repeats", B * S, 12)
    teacher = randn(gen, L_t, 12, D, dtype=torch.float32)
    weights = torch.rand(12, generator=gen) + 0.2
    layer_map = torch.tensor([1, 2, 0, 2, 1])

    as_list = [data[l].clone().requires_grad_() for l in range(L)]
    stacked = data.reshape(L, B * S, D).clone().requires_grad_()
    kw = dict(rows=rows, weights=weights, layer_map=layer_map, loss_type=loss_type, reduction="none")
    a = ref.alignment_loss(as_list, teacher, **kw)
    b = ref.alignment_loss(stacked, teacher, **kw)
    c = ref.alignment_loss(stacked, list(teacher.unbind(0)), **kw)  # teacher as L_t tensors [N_sel, D]
    assert torch.equal(a, b) and torch.equal(a, c)
    a.sum().backward()
    b.sum().backward()
    assert torch.equal(torch.stack([x.grad for x in as_list]).reshape(L, B * S, D), stacked.grad)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("view", ["transposed-BS", "strided-D", "strided-S", "stacked-transposed"])
def test_non_contiguous_student_views(gen, loss_type, view):
    B, S, D, L = 3, 7, 13, 2
    if view == "transposed-BS":
        base = randn(gen, L, S, B, D, dtype=torch.float32).requires_grad_()
        student = [base[l].transpose(0, 1) for l in range(L)]
    elif view == "strided-D":
        base = randn(gen, L, B, S, 2 * D, dtype=torch.float32).requires_grad_()
        student = [base[l][..., 1::2] for l in range(L)]
    elif view == "strided-S":
        base = randn(gen, L, B, 2 * S + 1, D, dtype=torch.float32).requires_grad_()
        student = [base[l][:, ::2][:, :S] for l in range(L)]
    else:
        base = randn(gen, B * S, L, D, dtype=torch.float32).requires_grad_()
        student = base.transpose(0, 1)
    layers = student_layer_list(student)
    assert not all(x.is_contiguous() for x in layers)
    dense = [x.detach().contiguous().requires_grad_() for x in layers]

    rows = make_rows(gen, "repeats", B * S, 10)
    teacher = randn(gen, L, 10, D, dtype=torch.float32)
    weights = torch.rand(10, generator=gen) + 0.1
    kw = dict(rows=rows, weights=weights, loss_type=loss_type, reduction="none")
    got = ref.alignment_loss(student, teacher, **kw)
    want = ref.alignment_loss(dense, teacher, **kw)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(got.double(), oracle_alignment(dense, teacher, rows, weights, None, loss_type),
                               rtol=1e-5, atol=1e-7)
    got.sum().backward()
    want.sum().backward()
    # the gradient reaches the base tensor through the view, in the right places
    grads_through_view = torch.stack([d.grad for d in dense])
    if view == "stacked-transposed":
        torch.testing.assert_close(base.grad.transpose(0, 1), grads_through_view, rtol=1e-6, atol=0)
    elif view == "transposed-BS":
        torch.testing.assert_close(base.grad.transpose(1, 2), grads_through_view, rtol=1e-6, atol=0)
    elif view == "strided-D":
        torch.testing.assert_close(base.grad[..., 1::2], grads_through_view, rtol=1e-6, atol=0)
        assert torch.count_nonzero(base.grad[..., 0::2]) == 0
    else:
        torch.testing.assert_close(base.grad[:, :, ::2][:, :, :S], grads_through_view, rtol=1e-6, atol=0)
        assert torch.count_nonzero(base.grad[:, :, 1::2]) == 0


# -------------------------------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("form", ["list", "stacked"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradcheck_float64(gen, loss_type, reduction, form):
    B, S, D, L, L_t = 2, 3, 5, 2, 3
    rows = torch.tensor([4, 0, 5, 4, 2, 1, 4], dtype=torch.int64)  # unsorted, with repeats
    n_sel = rows.shape[0]
    teacher = randn(gen, L_t, n_sel, D)
    weights = torch.rand(n_sel, generator=gen, dtype=F64) + 0.05
    layer_map = torch.tensor([2, 0], dtype=torch.int64)
    kw = dict(rows=rows, weights=weights, layer_map=layer_map, loss_type=loss_type, reduction=reduction)
    if form == "list":
        inputs = tuple(randn(gen, B, S, D).requires_grad_() for _ in range(L))

        def fn(*layers):
            return ref.alignment_loss(list(layers), teacher, **kw)
    else:
        inputs = (randn(gen, L, B * S, D).requires_grad_(),)

        def fn(stacked):
            return ref.alignment_loss(stacked, teacher, **kw)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("teacher_form", ["stacked", "list"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_teacher_is_a_constant(gen, loss_type, teacher_form):
    B, S, D, L = 2, 4, 7, 3
    student = [randn(gen, B, S, D, dtype=torch.float32).requires_grad_() for _ in range(L)]
    rows = torch.tensor([5, 1, 6, 1])
    t_data = randn(gen, L, 4, D, dtype=torch.float32)
    teacher = t_data.clone().requires_grad_() if teacher_form == "stacked" else \
        [t_data[l].clone().requires_grad_() for l in range(L)]
    t_leaves = [teacher] if teacher_form == "stacked" else teacher

    loss = ref.alignment_loss(student, teacher, rows=rows, loss_type=loss_type)
    assert torch.equal(loss, ref.alignment_loss(student, t_data, rows=rows, loss_type=loss_type))
    loss.backward()
    assert all(t.grad is None for t in t_leaves)
    assert all(s.grad is not None and torch.count_nonzero(s.grad) > 0 for s in student)
    # with a student that needs no gradient, nothing in the result may track the teacher
    frozen = [s.detach() for s in student]
    assert not ref.alignment_loss(frozen, teacher, rows=rows, loss_type=loss_type).requires_grad


# ------------------------------------------------------------------------------------------------ edge cases

@pytest.mark.parametrize("form", ["list", "stacked"])
@pytest.mark.parametrize("with_weights", [False, True])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_empty_row_set_gives_zero_loss_and_zero_gradient(gen, loss_type, with_weights, form):
    B, S, D, L, L_t = 2, 5, 7, 3, 2
    data = randn(gen, L, B, S, D, dtype=torch.float32)
    student = [data[l].clone().requires_grad_() for l in range(L)] if form == "list" else \
        data.reshape(L, B * S, D).clone().requires_grad_()
    leaves = student if form == "list" else [student]
    rows = torch.empty(0, dtype=torch.int64)
    teacher = torch.empty(L_t, 0, D)
    weights = torch.empty(0) if with_weights else None
    kw = dict(rows=rows, weights=weights, layer_map=torch.tensor([1, 0, 1]), loss_type=loss_type)

    loss = ref.alignment_loss(student, teacher, **kw)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
        assert torch.count_nonzero(leaf.grad) == 0
    per_layer = ref.alignment_loss(student, teacher, reduction="none", **kw)
    assert per_layer.shape == (L,) and torch.equal(per_layer, torch.zeros(L))

    cos = ref.cosine_similarity(student, teacher, rows=rows, weights=weights, layer_map=kw["layer_map"])
    assert cos.item() == 0.0 and torch.isfinite(cos)


@pytest.mark.parametrize("zero_side", ["student", "teacher", "both"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss_type", ["nmse", "cosine"])
def test_zero_norm_rows_take_the_documented_value(gen, loss_type, dtype, zero_side):
    """Layer 0: every selected row is zero on `zero_side`; layer 1: ordinary rows. Zero rows have cosine 0."""
    B, S, D, L = 2, 4, 7, 2
    rows = torch.tensor([6, 1, 3, 1, 0], dtype=torch.int64)
    n_sel = rows.shape[0]
    data = randn(gen, L, B * S, D, dtype=dtype)
    teacher = randn(gen, L, n_sel, D, dtype=dtype)
    if zero_side in ("student", "both"):
        data[0, rows] = 0
    if zero_side in ("teacher", "both"):
        teacher[0] = 0
    student = [data[l].reshape(B, S, D).clone().requires_grad_() for l in range(L)]

    per_layer = ref.alignment_loss(student, teacher, rows=rows, loss_type=loss_type, reduction="none")
    assert per_layer.dtype == dtype and torch.isfinite(per_layer).all()
    if loss_type == "cosine":
        documented = 1.0
    else:
        documented = 0.0 if zero_side == "both" else 1.0 / D
    assert per_layer[0].item() == pytest.approx(documented, rel=1e-6, abs=1e-7)
    expected = oracle_alignment(student, teacher, rows, None, None, loss_type)
    torch.testing.assert_close(per_layer.double(), expected, rtol=1e-5, atol=1e-7)

    per_layer.sum().backward()
    for s in student:
        assert torch.isfinite(s.grad).all()
    grad0 = student[0].grad.reshape(-1, D)
    if zero_side in ("student", "both"):
        assert torch.count_nonzero(grad0[rows]) == 0  # zero rows receive no gradient, exactly
    else:
        # the loss of layer 0 is constant in s (|s_hat|^2 = 1, cosine 0): the gradient vanishes
        torch.testing.assert_close(grad0, torch.zeros_like(grad0), rtol=0, atol=1e-6)
    assert torch.count_nonzero(student[1].grad) > 0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_some_zero_rows_among_others_match_oracle(gen, loss_type):
    B, S, D, L = 3, 5, 13, 3
    rows = make_rows(gen, "repeats", B * S, 14)
    data = randn(gen, L, B * S, D, dtype=torch.float32)
    teacher = randn(gen, L, 14, D, dtype=torch.float32)
    zero_student = rows[[0, 5]]  # rows[0] is repeated at rows[1]
    data[1, zero_student] = 0
    data[2, rows[3]] = 0
    teacher[1, [2, 5]] = 0  # row 5 is zero on both sides
    teacher[0, 7] = 0
    weights = torch.rand(14, generator=gen) + 0.1
    student = data.clone().requires_grad_()

    loss = ref.alignment_loss(student, teacher, rows=rows, weights=weights, loss_type=loss_type, reduction="none")
    torch.testing.assert_close(loss.double(), oracle_alignment(data, teacher, rows, weights, None, loss_type),
                               rtol=1e-5, atol=1e-7)
    loss.sum().backward()
    assert torch.isfinite(student.grad).all()
    if loss_type != "mse":
        assert torch.count_nonzero(student.grad[1, zero_student]) == 0
        assert torch.count_nonzero(student.grad[2, rows[3]]) == 0


# ----------------------------------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("correlated", [False, True])
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_low_precision_gives_float32_close_to_float64_truth(gen, loss_type, correlated, low):
    B, S, D, L, L_t = 3, 9, 37, 5, 3
    student = [randn(gen, B, S, D, dtype=low) for _ in range(L)]
    rows = make_rows(gen, "repeats", B * S, 21)
    layer_map = torch.tensor([0, 2, 1, 1, 0])
    if correlated:  # cosines around 0.95 (as near the end of training) for student layers 0, 2 and 3
        teacher = torch.stack([(student[l].double().reshape(-1, D)[rows] + 0.3 * randn(gen, 21, D))
                               for l in (0, 3, 2)]).to(low)
    else:
        teacher = randn(gen, L_t, 21, D, dtype=low)
    weights = torch.rand(21, generator=gen) + 0.1
    kw = dict(rows=rows, weights=weights, layer_map=layer_map, loss_type=loss_type)

    got = ref.alignment_loss(student, teacher, reduction="none", **kw)
    truth = oracle_alignment(student, teacher, rows, weights, layer_map, loss_type)  # the low values, upcast
    assert got.dtype == torch.float32
    assert ((got.double() - truth).abs() / truth.abs()).max() < 1e-5  # rows upcast first: float32 rounding only
    mean = ref.alignment_loss(student, teacher, **kw)
    assert mean.dtype == torch.float32
    assert abs(mean.item() - truth.mean().item()) / abs(truth.mean().item()) < 1e-5

    leaves = [s.clone().requires_grad_() for s in student]
    ref.alignment_loss(leaves, teacher, **kw).backward()
    assert all(s.grad.dtype == low and torch.isfinite(s.grad).all() for s in leaves)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_mixed_bf16_student_fp32_teacher(gen, loss_type):
    B, S, D, L = 2, 7, 13, 3
    student = [randn(gen, B, S, D, dtype=torch.bfloat16).requires_grad_() for _ in range(L)]
    rows = make_rows(gen, "perm", B * S, 9)
    teacher = randn(gen, L, 9, D, dtype=torch.float32)
    got = ref.alignment_loss(student, teacher, rows=rows, loss_type=loss_type, reduction="none")
    truth = oracle_alignment(student, teacher, rows, None, None, loss_type)
    assert got.dtype == torch.float32
    # promoted to float32 before the row formulas: float32 accuracy on the bf16 values
    torch.testing.assert_close(got.double(), truth, rtol=1e-4, atol=1e-6)
    got.mean().backward()
    assert all(s.grad.dtype == torch.bfloat16 and torch.isfinite(s.grad).all() for s in student)


def test_float64_teacher_makes_float64_result(gen):
    student = [randn(gen, 2, 3, 5, dtype=torch.float32) for _ in range(2)]
    teacher = randn(gen, 2, 6, 5)
    assert ref.alignment_loss(student, teacher).dtype == F64
    assert ref.alignment_loss(student, teacher.float()).dtype == torch.float32


# ------------------------------------------------------------------------------------- cosine_similarity

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_cosine_similarity_is_weighted_mean_cosine(gen, case, dtype):
    student, teacher, rows, weights, layer_map = make_case(gen, CASES[case], dtype)
    student = [s.requires_grad_() for s in student]
    expected = oracle_cosine_similarity(student, teacher, rows, weights, layer_map)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == F64 else dict(rtol=1e-5, atol=1e-6)

    per_layer = ref.cosine_similarity(student, teacher, reduction="none", **kwargs(rows, weights, layer_map))
    mean = ref.cosine_similarity(student, teacher, **kwargs(rows, weights, layer_map))
    assert per_layer.shape == (CASES[case]["L"],) and mean.shape == ()
    assert per_layer.dtype == dtype and mean.dtype == dtype
    assert per_layer.grad_fn is None and mean.grad_fn is None and not mean.requires_grad
    torch.testing.assert_close(per_layer.double(), expected, **tol)
    torch.testing.assert_close(mean.double(), expected.mean(), **tol)
    # the diagnostic and the cosine loss agree when the weights are the token-mean
    if weights is None:
        loss = ref.alignment_loss(student, teacher, loss_type="cosine", reduction="none",
                                  **kwargs(rows, weights, layer_map))
        torch.testing.assert_close(per_layer, 1 - loss.detach(), **tol)


def test_cosine_similarity_weights_are_normalised_and_zero_rows_count_as_zero(gen):
    B, S, D, L = 2, 5, 7, 2
    rows = torch.tensor([9, 2, 2, 4, 7, 0])
    data = randn(gen, L, B * S, D)
    teacher = randn(gen, L, 6, D)
    data[1, 4] = 0  # rows[3] is a zero row in layer 1
    weights = torch.tensor([0.5, 2.0, 0.0, 1.5, 3.0, 0.25], dtype=F64)
    got = ref.cosine_similarity(data, teacher, rows=rows, weights=weights, reduction="none")
    # explicit: cos via F.cosine_similarity, zero row -> 0, divided by the total weight
    for l in range(L):
        cos = F.cosine_similarity(data[l, rows], teacher[l], dim=-1)
        if l == 1:
            cos[3] = 0.0
        expected = (weights * cos).sum() / weights.sum()
        assert got[l].item() == pytest.approx(expected.item(), rel=1e-12)
    # scale invariance in the weights
    torch.testing.assert_close(ref.cosine_similarity(data, teacher, rows=rows, weights=7 * weights,
                                                     reduction="none"), got, rtol=1e-12, atol=0)
    # all-zero weights: 0, not NaN
    zero = ref.cosine_similarity(data, teacher, rows=rows, weights=torch.zeros(6, dtype=F64), reduction="none")
    assert torch.equal(zero, torch.zeros(L, dtype=F64))


def test_cosine_similarity_low_precision_returns_float32(gen):
    student = [randn(gen, 3, 4, 13, dtype=torch.bfloat16).requires_grad_() for _ in range(2)]
    teacher = randn(gen, 2, 12, 13, dtype=torch.bfloat16)
    got = ref.cosine_similarity(student, teacher, reduction="none")
    assert got.dtype == torch.float32 and got.grad_fn is None
    torch.testing.assert_close(got.double(), oracle_cosine_similarity(student, teacher), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------- public entry point

@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_public_entry_point_with_reference_backend_is_the_reference(gen, loss_type, reduction):
    student, teacher, rows, weights, layer_map = make_case(gen, CASES["L5-into-3-layer_map"], torch.float32)
    kw = dict(rows=rows, weights=weights, layer_map=layer_map, loss_type=loss_type, reduction=reduction)
    a = oprd_kernels.alignment_loss(student, teacher, backend="reference", **kw)
    b = ref.alignment_loss(student, teacher, **kw)
    assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    assert oprd_kernels.cosine_similarity is ref.cosine_similarity
