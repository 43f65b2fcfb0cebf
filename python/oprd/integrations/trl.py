"""`OPRDTrainer`: TRL's on-policy `DistillationTrainer` (TRL >= 1.16) with oprd's objective in place of its
generalized JSD.

TRL keeps what it does: the dataset and chat templates, generation (transformers or vLLM), accelerate's DDP / FSDP /
DeepSpeed, logging and checkpoints. oprd supplies the loss through `oprd.objective.compute_objective`, the call
`oprd train` makes: the truncated teacher pass into the compact cache, the lean student capture (no LM head for
OPRD alone), the fused alignment loss, the OPD terms of the combined methods, and the metrics.

A batch from TRL (`prompt_ids` left-padded, `completion_ids` right-padded, `completion_mask` up to and including
EOS) is already oprd's rollout layout (`rollouts_from`). Gradient accumulation is a global token-mean over the
micro-batches of one optimizer step (oprd.train.accumulation): each micro-batch's terms are scaled by its share of the
window's token counts, so the accumulated gradient is the one-batch gradient; across processes DDP averages the
per-process gradients.

    from oprd.integrations.trl import OPRDTrainer
    from oprd.objective import ObjectiveSpec
    trainer = OPRDTrainer(model=student, teacher_model=teacher, args=DistillationConfig(...), train_dataset=prompts,
                          processing_class=tokenizer, objective=ObjectiveSpec(method="oprd", positions="last_k"))
    trainer.train()

Limits: one tokenizer for both models (TRL's trainer requires it; OPRD-Bridge across tokenizers runs in `oprd
train`); the Bridge methods need `bridge=` (a loaded `oprd.bridge.Bridge`); under FSDP the teacher must not be
sharded (its truncated pass runs on the unwrapped module).
"""

from __future__ import annotations

import torch

try:
    from trl import DistillationTrainer
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("oprd.integrations.trl needs TRL >= 1.16: pip install 'oprd[trl]'") from exc

from oprd.bridge.file import Bridge
from oprd.objective import ObjectiveSpec, TokenCounts, compute_objective, plan_layers, token_counts
from oprd.rollout import Rollouts


def rollouts_from(inputs: dict) -> Rollouts:
    """oprd's `Rollouts` from a TRL distillation batch (each row its own prompt)."""
    prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
    prompt_mask, completion_mask = inputs["prompt_mask"], inputs["completion_mask"]
    if "tool_mask" in inputs:  # tool outputs are not the student's own tokens: no loss there
        completion_mask = completion_mask * inputs["tool_mask"]
    response_mask = torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1)
    return Rollouts(torch.cat([prompt_ids, completion_ids], dim=1),
                    torch.cat([prompt_mask, inputs["completion_mask"]], dim=1), response_mask, prompt_ids.shape[1],
                    torch.arange(prompt_ids.shape[0], device=prompt_ids.device))


class OPRDTrainer(DistillationTrainer):
    """`DistillationTrainer` whose loss is `objective` (an `oprd.objective.ObjectiveSpec`; default: OPRD on every
    layer over the last 2,000 response tokens, the paper's Table 2 setting). Other arguments are TRL's."""

    loss_is_scaled_for_ga = True  # each micro-batch's loss is already its share of the window's

    _tag_names = ["trl", "distillation", "oprd"]
    _name = "OPRD"

    def __init__(self, *args, objective: ObjectiveSpec | None = None, bridge: Bridge | None = None, **kwargs):
        if objective is not None and not isinstance(objective, ObjectiveSpec):
            raise TypeError(f"OPRDTrainer: `objective` must be an oprd.objective.ObjectiveSpec or None; got "
                            f"{type(objective).__name__}")
        super().__init__(*args, **kwargs)
        self.objective = objective or ObjectiveSpec()
        student = self.accelerator.unwrap_model(self.model)
        teacher = self.accelerator.unwrap_model(self.teacher_model)
        bridge = None if bridge is None else bridge.to(self.accelerator.device)
        self.layer_plan = plan_layers(self.objective, student, teacher, bridge)  # refuses an unusable pair now

    def _window_share(self, rollouts: Rollouts, training: bool) -> tuple[TokenCounts | None, int]:
        """(this micro-batch's counts as shares of the accumulation window's, the window's micro-batches). The
        window's total is counted once per generation (TRL builds a new buffer list each time), not per micro-batch:
        the counts read positions back to the host."""
        window = getattr(self, "_buffered_inputs", None) if training else None
        if not window or len(window) < 2:
            return None, 1
        counted, total = getattr(self, "_window_total", (None, None))
        if counted is not window:
            total = sum((token_counts(self.objective, rollouts_from(b)) for b in window), TokenCounts())
            self._window_total = (window, total)
        return token_counts(self.objective, rollouts).share_of(total), len(window)

    def _objective_loss(self, student, rollouts: Rollouts, share: TokenCounts | None):
        teacher = self.accelerator.unwrap_model(self.teacher_model)
        teacher.eval()
        return compute_objective(self.objective, student, teacher, rollouts, self.layer_plan, share)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = self.model.training
        rollouts = rollouts_from(inputs)
        share, size = self._window_share(rollouts, training)
        unwrapped = self.accelerator.unwrap_model(model)
        # through the DDP/FSDP wrapper's forward, as TRL routes its own loss (prepare_for_backward, gathered params)
        result = self._forward_redirection(model, unwrapped, self._objective_loss, unwrapped, rollouts, share)
        metrics = self._metrics["train" if training else "eval"]
        for key, value in result.metrics.items():  # TRL logs each list's mean: loss/* shares must sum over the window
            metrics[key].append(value * size if key.startswith("loss/") else value)
        return (result.loss, None) if return_outputs else result.loss
