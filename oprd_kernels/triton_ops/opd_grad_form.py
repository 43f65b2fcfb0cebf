"""The form of the fused OPD's logits gradient as the arguments of opd_grad_tile_kernel (opd_kernels.py), built from
a LogitGradient (oprd_kernels/opd/_gradient.py) by triton_ops/opd.py's backprop_logits."""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import Tensor

from oprd_kernels.opd._gradient import LogitGradient


@dataclass(frozen=True)
class GradForm:
    """The arguments of opd_grad_tile_kernel that say which form d loss / d z has (oprd_kernels/opd/_gradient.py),
    each field named as the kernel's parameter and passed by that name (kernel_args). The sparse form (KL = False)
    has dense [n], ids int64 [n, k] and sparse fp32 [n, k] with their strides. The KL form (KL = True) has the
    teacher's hidden states [N, d_t] and head [V, d_t] with their strides, lse_q, kl and row_w [n]. The other form's
    pointers are None and its sizes 0. Build one with GradForm.of(grad)."""

    KL: bool
    dense: Tensor | None = None
    ids: Tensor | None = None
    ids_sr: int = 0
    ids_sk: int = 0
    sparse: Tensor | None = None
    sp_sr: int = 0
    sp_sk: int = 0
    k: int = 0
    t_base: Tensor | None = None
    t_sn: int = 0
    t_sd: int = 0
    tw_base: Tensor | None = None
    tw_sv: int = 0
    tw_sd: int = 0
    t_dim: int = 0
    lse_q: Tensor | None = None
    kl: Tensor | None = None
    row_w: Tensor | None = None
    T_UNIT: bool = True
    TW_UNIT: bool = True

    def __post_init__(self):
        sparse_form, kl_form = (self.dense, self.ids, self.sparse), (self.t_base, self.tw_base, self.lse_q, self.kl,
                                                                     self.row_w)
        own, other = (kl_form, sparse_form) if self.KL else (sparse_form, kl_form)
        if any(t is None for t in own) or any(t is not None for t in other):
            raise ValueError(f"GradForm: the {'KL' if self.KL else 'sparse'} form needs exactly its own tensors "
                             f"({'t_base, tw_base, lse_q, kl, row_w' if self.KL else 'dense, ids, sparse'})")

    @classmethod
    def of(cls, grad: LogitGradient) -> GradForm:
        """The form of `grad`: KL when it carries the teacher (grad.kl), else sparse."""
        if not isinstance(grad, LogitGradient):
            raise TypeError(f"GradForm.of: expected a LogitGradient, got {type(grad).__name__}")
        return cls.kl_form(grad) if grad.kl is not None else cls.sparse_form(grad)

    @classmethod
    def sparse_form(cls, grad: LogitGradient) -> GradForm:
        """g = dense * p + sum_j sparse_j [v == ids_j] (sampled-token, top-k)."""
        if grad.kl is not None:
            raise ValueError("GradForm.sparse_form: this gradient has the KL form (grad.kl is set)")
        ids_sr, ids_sk = grad.ids.stride()
        sp_sr, sp_sk = grad.sparse.stride()
        return cls(KL=False, dense=grad.dense.contiguous(), ids=grad.ids, ids_sr=ids_sr, ids_sk=ids_sk,
                   sparse=grad.sparse, sp_sr=sp_sr, sp_sk=sp_sk, k=grad.ids.shape[1])

    @classmethod
    def kl_form(cls, grad: LogitGradient) -> GradForm:
        """g = row_w * p * (log p - log q - KL) (full-vocabulary reverse KL; the teacher tile is recomputed)."""
        if grad.kl is None:
            raise ValueError("GradForm.kl_form: this gradient has the sparse form (grad.kl is None)")
        terms = grad.kl
        t_hidden, t_weight, lse_q, kl_rows = terms.teacher_hidden, terms.teacher_weight, terms.lse_teacher, terms.kl
        t_sn, t_sd = t_hidden.stride()
        tw_sv, tw_sd = t_weight.stride()
        return cls(KL=True, t_base=t_hidden, t_sn=t_sn, t_sd=t_sd, tw_base=t_weight, tw_sv=tw_sv, tw_sd=tw_sd,
                   t_dim=t_weight.shape[1], lse_q=lse_q.contiguous(), kl=kl_rows.contiguous(),
                   row_w=grad.row_weight.contiguous(), T_UNIT=t_sd == 1, TW_UNIT=tw_sd == 1)

    def kernel_args(self) -> dict:
        """Keyword arguments of opd_grad_tile_kernel (no copies: dataclasses.asdict would deep-copy the tensors)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
