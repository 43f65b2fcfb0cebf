"""Every documented bad input of the alignment and bridge ops raises a clear error naming the argument."""

import pytest
import torch

from oprd_kernels import reference

L, B, S, D = 3, 2, 5, 7


def student():
    return [torch.randn(B, S, D) for _ in range(L)]


def teacher(n=B * S, layers=L, d=D):
    return torch.randn(layers, n, d)


ROWS = torch.tensor([9, 0, 4], dtype=torch.int64)

ALIGNMENT_CASES = [
    # (kwargs overriding a valid call, exception, regex the message must match)
    (dict(student="hidden"), TypeError, "`student` must be a tensor"),
    (dict(student=[]), ValueError, "`student` must hold at least one layer"),
    (dict(student=torch.randn(B * S, D)), ValueError, r"`student` as one tensor must have shape \[L, N, D\]"),
    (dict(student=[torch.randn(B, S, D), torch.randn(B, S, D + 1), torch.randn(B, S, D)]), ValueError,
     r"`student\[1\]` must match student\[0\]"),
    (dict(student=[torch.randn(B, S, D).double(), torch.randn(B, S, D), torch.randn(B, S, D)]), ValueError,
     r"`student\[1\]` must match"),
    (dict(student=[torch.randn(S, D, 1, 1)] * L), ValueError, r"`student\[0\]` must have shape \[B, S, D\]"),
    (dict(student=[torch.randint(0, 3, (B, S, D))] * L), TypeError, r"`student\[0\]` must have a floating dtype"),
    (dict(teacher=teacher(d=D + 2)), ValueError, "`teacher` must have the student's hidden size D = 7; got D = 9"),
    (dict(teacher=teacher(n=B * S - 1)), ValueError, r"`teacher` must hold one row per selected row: N_sel = 10"),
    (dict(teacher=teacher(layers=2)), ValueError, "`layer_map` is required when the teacher has 2 layers"),
    (dict(rows=torch.tensor([0, 1, 2], dtype=torch.int32), teacher=teacher(n=3)), TypeError,
     "`rows` must have dtype int64"),
    (dict(rows=[0, 1, 2], teacher=teacher(n=3)), TypeError, "`rows` must be a 1-D int64 tensor"),
    (dict(rows=torch.zeros(1, 3, dtype=torch.int64), teacher=teacher(n=3)), ValueError, r"`rows` must be 1-D"),
    (dict(rows=torch.tensor([0, 10, 2]), teacher=teacher(n=3)), ValueError,
     r"`rows` must index the 10 flattened student rows \(0..9\); got values in \[0, 10\]"),
    (dict(rows=torch.tensor([-1, 2]), teacher=teacher(n=2)), ValueError, r"`rows` must index.*\[-1, 2\]"),
    (dict(rows=ROWS, teacher=teacher(n=4)), ValueError, "N_sel = 3, the number of `rows`; got 4 rows"),
    (dict(weights=torch.ones(B * S - 1)), ValueError, r"`weights` must have shape \[N_sel\] = \(10,\)"),
    (dict(weights=torch.ones(B * S, dtype=torch.long)), TypeError, "`weights` must have a floating dtype"),
    (dict(weights=torch.full((B * S,), -0.1)), ValueError, "`weights` must be non-negative"),
    (dict(weights=torch.tensor([float("nan")] + [1.0] * (B * S - 1))), ValueError, "`weights` must be finite"),
    (dict(weights=torch.tensor([float("inf")] + [1.0] * (B * S - 1))), ValueError, "`weights` must be finite"),
    (dict(teacher=teacher(layers=2), layer_map=torch.tensor([0, 1, 2])), ValueError,
     r"`layer_map` must index the 2 teacher layers \(0..1\); got values in \[0, 2\]"),
    (dict(layer_map=torch.tensor([0, 1])), ValueError, r"`layer_map` must have shape \[L\] = \(3,\)"),
    (dict(layer_map=torch.tensor([0.0, 1.0, 2.0])), TypeError, "`layer_map` must have dtype int64"),
    (dict(layer_map=[0, 1, 2]), TypeError, "`layer_map` must be an int64 tensor"),
    (dict(loss_type="l1"), ValueError, r"`loss_type` must be one of \['mse', 'nmse', 'cosine'\]; got 'l1'"),
    (dict(reduction="sum"), ValueError, r"`reduction` must be one of \['mean', 'none'\]; got 'sum'"),
]


@pytest.mark.parametrize("override, exc, match", ALIGNMENT_CASES)
def test_alignment_loss_rejects_bad_input(override, exc, match):
    kwargs = dict(student=student(), teacher=teacher())
    kwargs.update(override)
    with pytest.raises(exc, match=match) as info:
        reference.alignment_loss(kwargs.pop("student"), kwargs.pop("teacher"), **kwargs)
    assert str(info.value).startswith("alignment_loss: ")


@pytest.mark.parametrize("override, exc, match", [c for c in ALIGNMENT_CASES if "loss_type" not in c[0]])
def test_cosine_similarity_validates_like_alignment_loss(override, exc, match):
    kwargs = dict(student=student(), teacher=teacher())
    kwargs.update(override)
    with pytest.raises(exc, match=match) as info:
        reference.cosine_similarity(kwargs.pop("student"), kwargs.pop("teacher"), **kwargs)
    assert str(info.value).startswith("cosine_similarity: ")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; the meta-device test below covers CPU-only")
def test_cuda_teacher_with_cpu_student_is_rejected():
    with pytest.raises(ValueError, match="`teacher` must be on the student's device cpu"):
        reference.alignment_loss(student(), teacher().cuda())


@pytest.mark.parametrize("arg", ["teacher", "rows", "weights", "layer_map"])
def test_mixed_devices_are_rejected(arg):
    # The meta device has no data, so it stands in for "another device" on a CPU-only machine.
    kwargs = dict(student=student(), teacher=teacher())
    meta = {"teacher": teacher().to("meta"), "rows": torch.arange(B * S, device="meta"),
            "weights": torch.ones(B * S, device="meta"), "layer_map": torch.arange(L, device="meta")}
    kwargs[arg] = meta[arg]
    with pytest.raises(ValueError, match=f"`{arg}` must be on the student's device cpu"):
        reference.alignment_loss(kwargs.pop("student"), kwargs.pop("teacher"), **kwargs)


R = 4
BRIDGE_CASES = [
    (dict(teacher_z=torch.randn(L - 1, B * S, R)), ValueError, r"`teacher_z` must hold one layer per student layer"),
    (dict(teacher_z=torch.randn(L, B * S - 2, R)), ValueError, r"`teacher_z` must hold one row per selected row"),
    (dict(proj=torch.randn(L, R + 1, D)), ValueError, r"`proj` must have shape \[L, 4, D\] = \[3, 4, 7\]"),
    (dict(proj=torch.randn(L, R, D + 1)), ValueError, r"`proj` must have shape"),
    (dict(proj=torch.randn(R, D)), ValueError, r"`proj` must have shape"),
    (dict(proj="P"), TypeError, "`proj` must be a torch.Tensor"),
    (dict(proj=torch.randn(L, R, D, device="meta")), ValueError, "`proj` must be on the student's device"),
    (dict(loss_type="kl"), ValueError, "`loss_type` must be one of"),
    (dict(reduction="sum"), ValueError, "`reduction` must be one of"),
    (dict(rows=torch.tensor([3, 11]), teacher_z=torch.randn(L, 2, R)), ValueError, "`rows` must index"),
    (dict(weights=-torch.ones(B * S)), ValueError, "`weights` must be non-negative"),
]


@pytest.mark.parametrize("override, exc, match", BRIDGE_CASES)
def test_bridge_loss_rejects_bad_input(override, exc, match):
    kwargs = dict(student=student(), teacher_z=torch.randn(L, B * S, R), proj=torch.randn(L, R, D))
    kwargs.update(override)
    with pytest.raises(exc, match=match) as info:
        reference.bridge_loss(kwargs.pop("student"), kwargs.pop("teacher_z"), kwargs.pop("proj"), **kwargs)
    assert str(info.value).startswith("bridge_loss: ")


@pytest.mark.parametrize("override, exc, match", [
    (dict(proj_t=torch.randn(L, R, D + 1)), ValueError, "`proj_t` must have shape"),
    (dict(mean_t=torch.randn(L, D + 1)), ValueError, r"`mean_t` must have shape \[L, D_t\] = \(3, 7\)"),
    (dict(mean_t=torch.randn(L, D, device="meta")), ValueError, "`mean_t` must be on the teacher's device"),
    (dict(mean_t=None), TypeError, "`mean_t` must be a torch.Tensor"),
    (dict(teacher_hidden=torch.randn(B * S, D)), ValueError, "`teacher_hidden` as one tensor"),
])
def test_project_teacher_rejects_bad_input(override, exc, match):
    kwargs = dict(teacher_hidden=torch.randn(L, B * S, D), proj_t=torch.randn(L, R, D), mean_t=torch.randn(L, D))
    kwargs.update(override)
    with pytest.raises(exc, match=match):
        reference.project_teacher(**kwargs)
