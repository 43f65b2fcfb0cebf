"""The fused OPD losses and `lm_head_stats` as `torch.library` custom ops, for `torch.compile(fullgraph=True)`
(oprd_kernels/custom_ops.py explains the pattern for the alignment losses).

`oprd::fused_opd` is one op for the six fused losses (`kind` and the JSD's `beta`, as fused.py's `_fused`). Its
body validates, picks the backend passes and computes the loss with its gradients for an incoming gradient of 1, as
the eager path does in its forward pass; it returns them as outputs, so its backward is plain traceable arithmetic
(each gradient times the incoming one) and no second op is needed. The OPDStats tensors have one entry per live
position, a count known only when the op runs: their fake shape is a dynamic size. `oprd::lm_head_stats` has no
gradient; absent statistics come back as empty tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from oprd_kernels.opd._fused_call import prepare_call, run_call, scaled
from oprd_kernels.opd._lm_head_stats import eager_lm_head_stats

_STATS = 4  # reward, entropy_student, entropy_teacher, overlap


def _out_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


@torch.library.custom_op("oprd::fused_opd", mutates_args=())
def fused_opd_op(func: str, kind: str, hidden: Tensor, weight: Tensor, teacher_hidden: Tensor, teacher_weight: Tensor,
                 tokens: Tensor | None, mask: Tensor | None, k: int, row_block: int | None, vocab_block: int | None,
                 backend: str | None, stats_k: int, beta: float, want_hidden: bool,
                 want_weight: bool) -> list[Tensor]:
    """[loss, d_hidden (empty unless wanted), d_weight (likewise), the four stats (when stats_k > 0)]."""
    call = prepare_call(func, kind, hidden, weight, teacher_hidden, teacher_weight, tokens, mask, k, row_block,
                        vocab_block, backend, stats_k, beta, want_hidden, want_weight)
    with torch.autocast(hidden.device.type, enabled=False):
        loss, d_hidden, d_weight, values = run_call(call, hidden, weight, teacher_weight)
    grads = [hidden.new_empty(0) if d is None else d.contiguous() for d in (d_hidden, d_weight)]  # outputs never alias
    return [loss, *grads, *(t.contiguous() for t in values or ())]


@fused_opd_op.register_fake
def _(func, kind, hidden, weight, teacher_hidden, teacher_weight, tokens, mask, k, row_block, vocab_block, backend,
      stats_k, beta, want_hidden, want_weight):
    out = _out_dtype(hidden, weight, teacher_hidden, teacher_weight)
    loss = hidden.new_empty((), dtype=out)
    d_hidden = hidden.new_empty(hidden.shape) if want_hidden else hidden.new_empty(0)
    d_weight = weight.new_empty(weight.shape) if want_weight else hidden.new_empty(0)
    if not stats_k:
        return [loss, d_hidden, d_weight]
    live = torch.library.get_ctx().new_dynamic_size()
    return [loss, d_hidden, d_weight, *(hidden.new_empty((live,), dtype=out) for _ in range(_STATS))]


def _setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[1], output[2])
    ctx.wants = inputs[-2:]
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, *grads):
    d_hidden, d_weight = ctx.saved_tensors
    want_h, want_w = ctx.wants
    grad = grads[0][0] if isinstance(grads[0], (list, tuple)) else grads[0]  # the loss's, of the list output
    return (None, None, scaled(d_hidden, grad) if want_h else None, scaled(d_weight, grad) if want_w else None,
            *[None] * 12)


fused_opd_op.register_autograd(_backward, setup_context=_setup)


def traced_fused_opd(func: str, kind: str, hidden: Tensor, weight: Tensor, teacher_hidden: Tensor,
                     teacher_weight: Tensor, tokens: Tensor | None, mask: Tensor | None, k: int,
                     row_block: int | None, vocab_block: int | None, backend: str | None, stats_k: int = 0,
                     beta: float = 0.5):
    """fused.py's `_fused` result through the custom op: the loss, or (loss, *the four stats)."""
    grad_on = torch.is_grad_enabled()
    wants = [grad_on and getattr(t, "requires_grad", False) for t in (hidden, weight)]  # validated in the op
    teacher = [t.detach() if isinstance(t, Tensor) else t for t in (teacher_hidden, teacher_weight)]
    out = fused_opd_op(func, kind, hidden, weight, *teacher, tokens, mask, k, row_block, vocab_block, backend, stats_k,
                       beta, *wants)
    return (out[0], *out[3:]) if stats_k else out[0]


@torch.library.custom_op("oprd::lm_head_stats", mutates_args=())
def lm_head_stats_op(hidden: Tensor, weight: Tensor, ids: Tensor | None, topk: int, entropy: bool,
                     topk_among: int | None, row_block: int | None, vocab_block: int | None,
                     backend: str | None) -> list[Tensor]:
    """HeadStats' five fields in order, each empty where absent."""
    st = eager_lm_head_stats(hidden, weight, ids=ids, topk=topk, entropy=entropy, topk_among=topk_among,
                             row_block=row_block, vocab_block=vocab_block, backend=backend)
    return [hidden.new_empty(0) if t is None else t.contiguous()  # a fresh empty each: outputs never alias
            for t in (st.logsumexp, st.log_probs, st.topk_log_probs, st.topk_ids, st.entropy)]


@lm_head_stats_op.register_fake
def _(hidden, weight, ids, topk, entropy, topk_among, row_block, vocab_block, backend):
    positions, out = hidden.shape[:-1], _out_dtype(hidden, weight)
    return [hidden.new_empty(positions, dtype=out),
            hidden.new_empty(0) if ids is None else hidden.new_empty((*positions, ids.shape[-1]), dtype=out),
            hidden.new_empty((*positions, topk), dtype=out) if topk else hidden.new_empty(0),
            hidden.new_empty((*positions, topk), dtype=torch.int64) if topk else hidden.new_empty(0),
            hidden.new_empty(positions, dtype=out) if entropy else hidden.new_empty(0)]


def traced_lm_head_stats(hidden: Tensor, weight: Tensor, *, ids: Tensor | None = None, topk: int = 0,
                         entropy: bool = False, topk_among: int | None = None, row_block: int | None = None,
                         vocab_block: int | None = None, backend: str | None = None) -> list[Tensor | None]:
    """`lm_head_stats`' five fields through the custom op, None where a statistic was not asked for."""
    lse, at_ids, top, top_ids, ent = lm_head_stats_op(hidden, weight, ids, topk, entropy, topk_among, row_block,
                                                      vocab_block, backend)
    return [lse, None if ids is None else at_ids, top if topk else None, top_ids if topk else None,
            ent if entropy else None]
