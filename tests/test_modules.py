"""The nn.Module forms give the functional results and own what they should."""

import pytest
import torch
from oracles import randn

import oprd_kernels
from oprd_kernels import AlignmentLoss, BridgeLoss, reference


def test_alignment_module_equals_the_functional_form(gen):
    student = [randn(gen, 2, 3, 9, dtype=torch.float32).requires_grad_() for _ in range(2)]
    teacher = randn(gen, 3, 4, 9, dtype=torch.float32)
    rows, layer_map = torch.tensor([5, 0, 2, 2]), torch.tensor([2, 0])
    module = AlignmentLoss("cosine", reduction="none", backend="reference")
    got = module(student, teacher, rows=rows, layer_map=layer_map)
    want = reference.alignment_loss(student, teacher, rows=rows, layer_map=layer_map, loss_type="cosine",
                                    reduction="none")
    assert torch.equal(got, want)
    assert "cosine" in repr(module) and list(module.parameters()) == []


def test_bridge_module_owns_a_trainable_projector(gen):
    module = BridgeLoss(num_layers=2, rank=4, student_dim=9, backend="reference")
    assert [name for name, _ in module.named_parameters()] == ["proj"]
    assert module.proj.shape == (2, 4, 9)
    student = [randn(gen, 2, 3, 9, dtype=torch.float32) for _ in range(2)]
    teacher_z = randn(gen, 2, 6, 4, dtype=torch.float32)
    loss = module(student, teacher_z)
    assert torch.equal(loss, oprd_kernels.bridge_loss(student, teacher_z, module.proj, backend="reference"))
    loss.backward()
    assert module.proj.grad is not None and module.proj.grad.abs().sum() > 0
    copy = BridgeLoss(2, 4, 9)
    copy.load_state_dict(module.state_dict())
    assert torch.equal(copy.proj, module.proj)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_layers=0, rank=4, student_dim=9), "num_layers"),
    (dict(num_layers=2, rank=4.0, student_dim=9), "rank"),
    (dict(num_layers=2, rank=4, student_dim=9, loss_type="kl"), "loss_type"),
])
def test_bridge_module_rejects_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BridgeLoss(**kwargs)


def test_alignment_module_rejects_bad_configuration():
    with pytest.raises(ValueError, match="AlignmentLoss: `reduction`"):
        AlignmentLoss(reduction="sum")
