"""nn.Module forms of the losses, for trainers that compose losses as modules."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from oprd_kernels._validation import LOSS_TYPES, REDUCTIONS, as_int, check_choice
from oprd_kernels.functional import HiddenStates, alignment_loss, bridge_loss


class AlignmentLoss(nn.Module):
    """`alignment_loss` with its loss type, reduction and backend fixed at construction."""

    def __init__(self, loss_type: str = "mse", reduction: str = "mean", backend: str | None = None) -> None:
        super().__init__()
        self.loss_type = check_choice("AlignmentLoss", "loss_type", loss_type, LOSS_TYPES)
        self.reduction = check_choice("AlignmentLoss", "reduction", reduction, REDUCTIONS)
        self.backend = backend

    def forward(self, student: HiddenStates, teacher: HiddenStates, rows: Tensor | None = None,
                weights: Tensor | None = None, layer_map: Tensor | None = None) -> Tensor:
        return alignment_loss(student, teacher, rows=rows, weights=weights, layer_map=layer_map,
                              loss_type=self.loss_type, reduction=self.reduction, backend=self.backend)

    def extra_repr(self) -> str:
        return f"loss_type={self.loss_type!r}, reduction={self.reduction!r}, backend={self.backend!r}"


class BridgeLoss(nn.Module):
    """`bridge_loss` owning the student projectors P_S as a parameter `proj` [L, r, D_s].

    Stage 1 trains `proj` (the backbone frozen); Stage 2 freezes it (`proj.requires_grad_(False)`) and trains the
    backbone. Initialised from N(0, 1/D_s), which keeps projected rows at the scale of the hidden states' rows.
    """

    def __init__(self, num_layers: int, rank: int, student_dim: int, loss_type: str = "nmse",
                 reduction: str = "mean", backend: str | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        for name, value in (("num_layers", num_layers), ("rank", rank), ("student_dim", student_dim)):
            if as_int(value) is None or value < 1:
                raise ValueError(f"BridgeLoss: `{name}` must be an int >= 1; got {value!r}")
        num_layers, rank, student_dim = int(num_layers), int(rank), int(student_dim)
        self.loss_type = check_choice("BridgeLoss", "loss_type", loss_type, LOSS_TYPES)
        self.reduction = check_choice("BridgeLoss", "reduction", reduction, REDUCTIONS)
        self.backend = backend
        self.proj = nn.Parameter(torch.randn(num_layers, rank, student_dim, dtype=dtype, device=device)
                                 / student_dim ** 0.5)

    def forward(self, student: HiddenStates, teacher_z: HiddenStates, rows: Tensor | None = None,
                weights: Tensor | None = None) -> Tensor:
        return bridge_loss(student, teacher_z, self.proj, rows=rows, weights=weights, loss_type=self.loss_type,
                           reduction=self.reduction, backend=self.backend)

    def extra_repr(self) -> str:
        layers, rank, dim = self.proj.shape
        return (f"num_layers={layers}, rank={rank}, student_dim={dim}, loss_type={self.loss_type!r}, "
                f"reduction={self.reduction!r}, backend={self.backend!r}")
