"""Independent float64 oracles and input builders shared by the reference tests (and, later, the backend tests).

Written on purpose in a different style from oprd_kernels.reference: Python loops, F.cosine_similarity, and the
documented zero-norm rule (a zero row has cosine 0 and normalises to the zero vector).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("mse", "nmse", "cosine")
F64 = torch.float64


def randn(g: torch.Generator, *shape: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=F64).to(dtype)


def oracle_row(s: torch.Tensor, t: torch.Tensor, loss_type: str) -> float:
    """One row's loss in float64 from the definitions (width d = len(s)); a zero row has cosine 0 and normalises
    to the zero vector."""
    s, t = s.detach().double(), t.detach().double()
    d = s.numel()
    if loss_type == "mse":
        return sum((a - b) ** 2 for a, b in zip(s.tolist(), t.tolist())) / d
    s_nonzero, t_nonzero = bool((s != 0).any()), bool((t != 0).any())
    cos = F.cosine_similarity(s, t, dim=0).item() if (s_nonzero and t_nonzero) else 0.0
    if loss_type == "cosine":
        return 1.0 - cos
    # |s_hat - t_hat|^2 = |s_hat|^2 + |t_hat|^2 - 2 cos, where |x_hat|^2 is 1 for a non-zero row and 0 for a zero row.
    return (float(s_nonzero) + float(t_nonzero) - 2.0 * cos) / d


def oracle_cosine(s: torch.Tensor, t: torch.Tensor) -> float:
    s, t = s.detach().double(), t.detach().double()
    if not bool((s != 0).any()) or not bool((t != 0).any()):
        return 0.0
    return F.cosine_similarity(s, t, dim=0).item()


def student_layer_list(student) -> list[torch.Tensor]:
    """The student as a list of per-layer tensors (any shape [..., D])."""
    return list(student.unbind(0)) if isinstance(student, torch.Tensor) else list(student)


def make_rows(g: torch.Generator, kind: str | None, num_rows: int, n_sel: int | None) -> torch.Tensor | None:
    if kind is None:
        return None
    if kind == "perm":  # unsorted, distinct
        return torch.randperm(num_rows, generator=g)[:n_sel]
    rows = torch.randint(0, num_rows, (n_sel,), generator=g)  # unsorted, with repeats
    rows[1] = rows[0]  # at least one repeat for sure
    return rows


def make_weights(g: torch.Generator, kind: str | None, n: int) -> torch.Tensor | None:
    if kind is None:
        return None
    w = torch.rand(n, generator=g, dtype=F64) * 3 + 0.05  # non-uniform, not summing to 1
    if kind == "sparse":
        w[torch.rand(n, generator=g) < 0.3] = 0.0
        w[0] = 0.0
    return w


def assert_lighter_than_the_logits(fused, naive, logits_bytes: int) -> None:
    """`fused` and `naive` return gradients of one loss: the fused call's CPU delta-peak stays under half the
    [N, V] logits' bytes while the naive one's exceeds them, and their gradients agree."""
    from oprd.train.memory import delta_peak_bytes

    got, fused_peak = delta_peak_bytes(fused, torch.device("cpu"))
    want, naive_peak = delta_peak_bytes(naive, torch.device("cpu"))
    assert fused_peak < 0.5 * logits_bytes, (fused_peak, logits_bytes)
    assert naive_peak > logits_bytes, (naive_peak, logits_bytes)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
