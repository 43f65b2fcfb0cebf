"""The training objectives on one batch of rollouts: OPRD, the OPD baselines, and L_OPD + mu * L_OPRD.

Each objective runs the teacher once (no grad) and the student once (with grad).
- OPRD alone never runs an LM head: the teacher pass is truncated into the compact cache, and the student pass stops
  after its deepest distilled layer.
- OPD needs the LM heads. Both models run to their final norm, and only the response columns go further. By default
  (`opd_impl="fused"`) the OPD loss and its metrics come from `oprd_kernels.opd`: final hidden states and LM-head
  weights in, no [B, T, |V|] logits ever. `opd_impl="naive"` runs the LM heads on the response columns and applies
  `oprd_kernels.reference`'s faithful losses to the materialised logits: the baseline the benchmarks measure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import oprd_kernels
from oprd.capture import capture_student, decoder_parts, teacher_cache
from oprd.injection import injected_alignment_loss
from oprd.layers import hidden_state_pairs, resolve_layers
from oprd.pairing import check_widths, hidden_size
from oprd.positions import select_positions
from oprd.rollout import Rollouts

METHODS = ("oprd", "opd_top1", "opd_topk", "opd_full", "oprd+opd")


@dataclass(frozen=True)
class ObjectiveSpec:
    method: str = "oprd"
    topk: int = 16
    mu: float = 1.0
    coefficient: float = 1.0  # multiplies L_OPRD in method "oprd"
    loss_type: str = "mse"
    layers: str | list[int] = "all"
    positions: str = "last_k"
    k: int = 2000
    weighting: str = "token"
    gradient_injection: bool = False
    backend: str | None = None
    log_cosine: bool = True  # OPD methods too log rep/cosine_similarity (their passes run every layer anyway)
    opd_impl: str = "fused"  # "fused": no logits materialised; "naive": the reference code's logits and losses
    logit_metrics: bool = True  # OPD methods log reward, entropies and top-k overlap

    def __post_init__(self) -> None:
        if self.opd_impl not in ("fused", "naive"):
            raise ValueError(f"ObjectiveSpec: `opd_impl` must be 'fused' or 'naive'; got {self.opd_impl!r}")

    @property
    def uses_oprd(self) -> bool:
        return self.method in ("oprd", "oprd+opd")

    @property
    def uses_opd(self) -> bool:
        return self.method != "oprd"


@dataclass
class StepResult:
    loss: Tensor  # what backward runs on
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenCounts:
    """What the token-means of one optimizer step divide by, summed over its micro-batches (verl's global token-mean):
    the rows the OPRD term selects (with oprd.weighting "sample": the samples that have any) and the response tokens
    the OPD term averages over."""

    oprd: float = 0.0
    opd: float = 0.0

    def __add__(self, other: "TokenCounts") -> "TokenCounts":
        return TokenCounts(self.oprd + other.oprd, self.opd + other.opd)

    def share_of(self, whole: "TokenCounts") -> "TokenCounts":
        """These counts as fractions of `whole`'s (0 where `whole` has none): one micro-batch's weight in a window."""
        return TokenCounts(self.oprd / whole.oprd if whole.oprd > 0 else 0.0,
                           self.opd / whole.opd if whole.opd > 0 else 0.0)


@dataclass(frozen=True)
class LayerPlan:
    """Student hidden_states indices, the unique teacher indices cached, and the cache layer of each student layer."""

    student: list[int]
    teacher: list[int]
    layer_map: list[int]
    same_width: bool = True  # the two models' hidden states can be compared (the cosine diagnostic needs it)


def plan_layers(spec: ObjectiveSpec, student: nn.Module, teacher: nn.Module) -> LayerPlan:
    """The layers of `spec` for this pair. A pair of different widths is refused for OPRD-Vanilla (it aligns the
    states directly) and trains OPD without the cosine diagnostic, which has no meaning across widths."""
    s_width, t_width = hidden_size(student.config), hidden_size(teacher.config)
    check_widths(spec.method, s_width, t_width)
    num_s = decoder_parts(student).num_layers
    num_t = decoder_parts(teacher).num_layers
    s_layers = resolve_layers(spec.layers, num_s)
    paired = hidden_state_pairs(s_layers, num_s, num_t)
    t_layers = sorted(set(paired))
    return LayerPlan(s_layers, t_layers, [t_layers.index(t) for t in paired], s_width == t_width)


def _needs_states(spec: ObjectiveSpec, plan: LayerPlan) -> bool:
    """Whether the distilled layers are captured: for the OPRD loss, or for the cosine diagnostic."""
    return spec.uses_oprd or (spec.log_cosine and plan.same_width)


def _positions(spec: ObjectiveSpec, rollouts: Rollouts) -> tuple[Tensor, Tensor]:
    k = spec.k if spec.positions in ("last_k", "first_k") else None
    return select_positions(rollouts.response_mask, spec.positions, k, weighting=spec.weighting)


def _oprd_count(spec: ObjectiveSpec, rows: Tensor, seq_len: int) -> float:
    if spec.weighting == "token":
        return float(rows.numel())
    return float(torch.unique(torch.div(rows, seq_len, rounding_mode="floor")).numel())


def token_counts(spec: ObjectiveSpec, rollouts: Rollouts) -> TokenCounts:
    """This micro-batch's share of the normalisers (see TokenCounts)."""
    oprd = 0.0
    if spec.uses_oprd:
        rows, _ = _positions(spec, rollouts)
        oprd = _oprd_count(spec, rows, rollouts.input_ids.shape[1])
    opd = float(rollouts.response_mask[:, rollouts.prompt_width:].sum()) if spec.uses_opd else 0.0
    return TokenCounts(oprd, opd)


def _response_logits(model: nn.Module, final: Tensor, rollouts: Rollouts) -> Tensor:
    """LM-head logits [B, T, |V|] at the columns predicting the response tokens only."""
    return decoder_parts(model).lm_head(final[:, rollouts.response_logit_slice()])


def _head_weight(model: nn.Module, role: str) -> Tensor:
    head = decoder_parts(model).lm_head
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"compute_objective: the {role}'s LM head has a bias, which the fused OPD losses do not "
                         f"support; got {type(head).__name__} with a bias (use opd_impl='naive')")
    return head.weight


def _fused_opd_loss(spec: ObjectiveSpec, s_final: Tensor, t_final: Tensor, s_weight: Tensor, t_weight: Tensor,
                    rollouts: Rollouts) -> Tensor:
    tokens, mask = rollouts.responses, rollouts.response_mask[:, rollouts.prompt_width:]
    if spec.method in ("opd_top1", "oprd+opd"):
        return oprd_kernels.fused_sampled_token_opd_loss(s_final, s_weight, t_final, t_weight, tokens, mask)
    if spec.method == "opd_topk":
        return oprd_kernels.fused_topk_opd_loss(s_final, s_weight, t_final, t_weight, mask, k=spec.topk)
    return oprd_kernels.fused_full_vocab_opd_loss(s_final, s_weight, t_final, t_weight, mask)


@torch.no_grad()
def head_metrics(s_final: Tensor, t_final: Tensor, s_weight: Tensor, t_weight: Tensor, rollouts: Rollouts,
                 topk: int) -> dict[str, float]:
    """logit_metrics' numbers from the final states and LM-head weights, without the logits (two no-grad passes)."""
    mask = rollouts.response_mask[:, rollouts.prompt_width:].bool()
    if not mask.any():
        return {}
    ids = rollouts.responses.masked_fill(~mask, 0).unsqueeze(-1)
    shared = min(s_weight.shape[0], t_weight.shape[0])  # padded heads: compare the ids both have
    k = min(topk, shared)
    p = oprd_kernels.lm_head_stats(s_final, s_weight, ids=ids, topk=k, entropy=True, topk_among=shared)
    q = oprd_kernels.lm_head_stats(t_final, t_weight, ids=ids, topk=k, entropy=True, topk_among=shared)
    overlap = (p.topk_ids[mask].unsqueeze(-1) == q.topk_ids[mask].unsqueeze(-2)).any(-1).float().mean(-1)
    return {
        "opd/reward": float((q.log_probs - p.log_probs)[mask].mean()),
        "entropy/student": float(p.entropy[mask].mean()),
        "entropy/teacher": float(q.entropy[mask].mean()),
        f"overlap/top{k}": float(overlap.mean()),
    }


def _opd_loss(spec: ObjectiveSpec, student_logits: Tensor, teacher_logits: Tensor, rollouts: Rollouts) -> Tensor:
    tokens, mask = rollouts.responses, rollouts.response_mask[:, rollouts.prompt_width:]
    if spec.method in ("opd_top1", "oprd+opd"):
        return oprd_kernels.reference.sampled_token_opd_loss(student_logits, teacher_logits, tokens, mask)
    if spec.method == "opd_topk":
        return oprd_kernels.reference.topk_opd_loss(student_logits, teacher_logits, mask, k=spec.topk)
    return oprd_kernels.reference.full_vocab_opd_loss(student_logits, teacher_logits, mask)


@torch.no_grad()
def logit_metrics(student_logits: Tensor, teacher_logits: Tensor, rollouts: Rollouts, topk: int) -> dict[str, float]:
    """Sampled-token reward, entropies and the overlap of the top-k sets, averaged over response tokens."""
    mask = rollouts.response_mask[:, rollouts.prompt_width:].bool()
    if not mask.any():
        return {}
    log_p = torch.log_softmax(student_logits.float(), -1)[mask]
    log_q = torch.log_softmax(teacher_logits.float(), -1)[mask]
    tokens = rollouts.responses[mask].unsqueeze(-1)
    shared = min(log_p.shape[-1], log_q.shape[-1])  # padded heads: compare the ids both have
    k = min(topk, shared)
    top_p = oprd_kernels.ordered_topk(student_logits.detach()[mask][:, :shared], k)[1]  # ties: the smaller id
    top_q = oprd_kernels.ordered_topk(teacher_logits[mask][:, :shared], k)[1]
    overlap = (top_p.unsqueeze(-1) == top_q.unsqueeze(-2)).any(-1).float().mean(-1)
    return {
        "opd/reward": float((log_q.gather(-1, tokens) - log_p.gather(-1, tokens)).mean()),
        "entropy/student": float(-(log_p.exp() * log_p).sum(-1).mean()),
        "entropy/teacher": float(-(log_q.exp() * log_q).sum(-1).mean()),
        f"overlap/top{k}": float(overlap.mean()),
    }


def compute_objective(spec: ObjectiveSpec, student: nn.Module, teacher: nn.Module, rollouts: Rollouts,
                      plan: LayerPlan, share: TokenCounts | None = None) -> StepResult:
    """The loss of `spec.method` on `rollouts` (student forward with grad), and its metrics.

    Each term is a token-mean over this batch. With `share` (this batch's counts as fractions of those of every
    micro-batch of one optimizer step, `TokenCounts.share_of`) each term is scaled by its fraction: its token sum
    divided by the window's count, so that the micro-batches' losses add up to the one-batch loss. The `loss/*`
    metrics are then those shares too (they add up over the window); the other metrics are this batch's."""
    ids, mask = rollouts.input_ids, rollouts.attention_mask
    oprd_scale, opd_scale = (1.0, 1.0) if share is None else (share.oprd, share.opd)
    needs_states = _needs_states(spec, plan)
    metrics: dict[str, float] = {}
    rows = weights = cache = None
    t_final = None
    with torch.no_grad():
        if needs_states:
            rows, weights = _positions(spec, rollouts)
        if spec.uses_oprd and not spec.uses_opd:
            cache = teacher_cache(teacher, ids, mask, plan.teacher, rows)
        else:  # one teacher pass serves both terms: cached rows and the final state for its LM head
            t_states = capture_student(teacher, ids, mask, plan.teacher if needs_states else "last",
                                       final_state=True)
            t_final = t_states.final
            if needs_states:
                cache = torch.stack([s.reshape(-1, s.shape[-1]).index_select(0, rows) for s in t_states.states])
                cache = cache.to(torch.bfloat16)
            del t_states
    s_states = capture_student(student, ids, mask, plan.student if needs_states else "last",
                               final_state=spec.uses_opd)
    total = torch.zeros((), device=ids.device)
    if needs_states:
        layer_map = torch.tensor(plan.layer_map, device=ids.device)
        per_layer = oprd_kernels.cosine_similarity([s.detach() for s in s_states.states], cache, rows=rows,
                                                   weights=weights, layer_map=layer_map, reduction="none")
        metrics["rep/cosine_similarity"] = float(per_layer.mean())
        metrics.update({f"rep/cosine_similarity/layer{i}": float(c) for i, c in zip(plan.student, per_layer)})
    if spec.uses_oprd:
        kwargs = dict(rows=rows, weights=weights * oprd_scale, layer_map=layer_map, loss_type=spec.loss_type,
                      backend=spec.backend)
        if spec.gradient_injection:
            oprd_loss = injected_alignment_loss(s_states.states, cache, **kwargs)
        else:
            oprd_loss = oprd_kernels.alignment_loss(s_states.states, cache, **kwargs)
        metrics["loss/oprd"] = float(oprd_loss.detach())
        total = total + (spec.mu if spec.method == "oprd+opd" else spec.coefficient) * oprd_loss
    if spec.uses_opd and spec.opd_impl == "fused":
        columns = rollouts.response_logit_slice()
        s_final, t_resp = s_states.final[:, columns], t_final[:, columns]
        s_weight, t_weight = _head_weight(student, "student"), _head_weight(teacher, "teacher")
        opd_loss = _fused_opd_loss(spec, s_final, t_resp, s_weight, t_weight, rollouts) * opd_scale
        metrics["loss/opd"] = float(opd_loss.detach())
        if spec.logit_metrics:
            metrics.update(head_metrics(s_final.detach(), t_resp, s_weight.detach(), t_weight, rollouts, spec.topk))
        total = total + opd_loss
    elif spec.uses_opd:
        s_logits = _response_logits(student, s_states.final, rollouts)
        with torch.no_grad():
            t_logits = _response_logits(teacher, t_final, rollouts)
        opd_loss = _opd_loss(spec, s_logits, t_logits, rollouts) * opd_scale
        metrics["loss/opd"] = float(opd_loss.detach())
        if spec.logit_metrics:
            metrics.update(logit_metrics(s_logits, t_logits, rollouts, spec.topk))
        total = total + opd_loss
    metrics["loss/total"] = float(total.detach())
    return StepResult(total, metrics)
