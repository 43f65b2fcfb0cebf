"""OPRD inside verl 0.9 without a fork: one wrapped method on verl's FSDP actor engine.

`install()` wraps `FSDPEngineWithLMHead.forward_step` in the process that imports it. verl's own forward still runs
(its log-probs, its policy or distillation loss); around it the student's blocks at the distilled layers are tapped
(`oprd.capture.taps.tapped`, so FSDP2's hooks on the blocks run as usual), a frozen teacher colocated on the actor's
GPU computes its states for the micro-batch (`teacher_sample_tensors`), and the OPRD term (`micro_batch_loss`),
weighted as verl's `loss_agg_mode` aggregates a per-token loss, is added to the loss verl backpropagates.

Settings come from the environment variable OPRD_VERL_CONFIG (JSON), so that verl's Ray workers, which import this
module through Ray's `worker_process_setup_hook` (run_oprd_fsdp2.sh), see them:
  {"teacher": "<HF path>", "loss_type": "mse", "coefficient": 1.0, "layers": "all", "positions": "all",
   "loss_agg_mode": "token-mean", "keep_policy_loss": false}
verl's own loss still runs (for its metrics); with keep_policy_loss false only OPRD is backpropagated.
`loss_agg_mode` must equal verl's `actor_rollout_ref.actor.loss_agg_mode`.

Status: check_with_verl.py runs the two oprd functions through verl 0.9.1's own no-padding conversion, micro-batch
split and `agg_loss` on CPU; this wrapper is not run here (verl's FSDP engine is registered for CUDA and NPU only, and
no GPU was lent): see docs/integrations.md. Limits: FSDP2 (`strategy=fsdp2`), Ulysses sequence parallel size 1, the
teacher replicated on every actor rank (a teacher too large for that belongs in its own worker: the same
`teacher_sample_tensors` output rides the batch as per-sample keys).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import wraps

import torch
from verl.utils import tensordict_utils as tu

from oprd.capture import decoder_parts
from oprd.capture.taps import tapped
from oprd.integrations.verl_samples import (
    POSITIONS,
    STATES,
    micro_batch_loss,
    teacher_sample_tensors,
    verl_token_coefficients,
)
from oprd.objective import LayerPlan, ObjectiveSpec, plan_layers

ENV = "OPRD_VERL_CONFIG"


@dataclass
class OPRDRun:
    """What one actor process needs: the objective, the layer plan, the frozen teacher and verl's aggregation."""

    spec: ObjectiveSpec
    plan: LayerPlan
    teacher: torch.nn.Module
    loss_agg_mode: str
    keep_policy_loss: bool = False  # add OPRD to verl's loss (e.g. GRPO + OPRD); default OPRD alone, as in the paper

    def loss(self, data, student_states: list[torch.Tensor]) -> torch.Tensor:
        """The OPRD term for one micro-batch in verl's no-padding layout (on the actor's device)."""
        if int(tu.get_non_tensor_data(data=data, key="sp_size", default=1)) != 1:
            raise ValueError("oprd_verl_glue: Ulysses sequence parallel (sp_size > 1) slices the packed states; "
                             "run with ulysses_sequence_parallel_size=1")
        padded = {"input_ids": torch.cat([data["prompts"], data["responses"]], dim=1),
                  "attention_mask": data["attention_mask"], "response_mask": data["response_mask"]}
        side = teacher_sample_tensors(self.teacher, padded, self.spec, self.plan)
        coefficients = verl_token_coefficients(
            data["response_mask"], self.loss_agg_mode, dp_size=int(data["dp_size"]),
            batch_num_tokens=data["batch_num_tokens"], global_batch_size=data["global_batch_size"])
        return micro_batch_loss(student_states, data["input_ids"].offsets(), side[POSITIONS], side[STATES],
                                coefficients, self.spec, self.plan)


def load_run(student: torch.nn.Module, device: torch.device) -> OPRDRun:
    """OPRDRun from OPRD_VERL_CONFIG, with the teacher loaded in bf16 on `device`."""
    from transformers import AutoModelForCausalLM

    raw = os.environ.get(ENV)
    if not raw:
        raise ValueError(f"oprd_verl_glue: set {ENV} to a JSON object with at least 'teacher' (an HF model path)")
    settings = json.loads(raw)
    if "teacher" not in settings:
        raise ValueError(f"oprd_verl_glue: {ENV} needs 'teacher'; got keys {sorted(settings)}")
    teacher = AutoModelForCausalLM.from_pretrained(settings["teacher"], dtype=torch.bfloat16).to(device)
    teacher.eval().requires_grad_(False)
    spec = ObjectiveSpec(method="oprd", loss_type=settings.get("loss_type", "mse"),
                         coefficient=float(settings.get("coefficient", 1.0)), layers=settings.get("layers", "all"),
                         positions=settings.get("positions", "all"))
    return OPRDRun(spec, plan_layers(spec, student, teacher), teacher, settings.get("loss_agg_mode", "token-mean"),
                   bool(settings.get("keep_policy_loss", False)))


def with_oprd(forward_step):
    """verl's forward_step, with the OPRD term added to the training loss of every micro-batch."""

    @wraps(forward_step)
    def wrapped(self, micro_batch, loss_function, forward_only):
        if forward_only or loss_function is None:  # log-prob passes: verl's own
            return forward_step(self, micro_batch, loss_function, forward_only)
        if getattr(self, "_oprd_run", None) is None:
            self._oprd_run = load_run(self.module, next(self.module.parameters()).device)
        run: OPRDRun = self._oprd_run
        captured: dict[int, torch.Tensor] = {}

        def loss_with_oprd(*args, **kwargs):
            if "student_logits" in kwargs:  # verl's top-k distillation calls its loss as a logits processor too
                return loss_function(*args, **kwargs)
            loss, metrics = loss_function(*args, **kwargs)
            data = kwargs["data"]
            oprd = run.loss(data, [captured[i] for i in run.plan.student])
            metrics["oprd/loss"] = oprd.detach().item()
            return (loss + oprd if run.keep_policy_loss else oprd), metrics

        with tapped(decoder_parts(self.module), run.plan.student, captured.__setitem__, stop_early=False):
            return forward_step(self, micro_batch, loss_with_oprd, forward_only)

    return wrapped


def install() -> None:
    """Wrap verl's FSDP actor engine in this process (Ray's worker_process_setup_hook calls this)."""
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    if not getattr(FSDPEngineWithLMHead.forward_step, "_oprd", False):
        FSDPEngineWithLMHead.forward_step = with_oprd(FSDPEngineWithLMHead.forward_step)
        FSDPEngineWithLMHead.forward_step._oprd = True
