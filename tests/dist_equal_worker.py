"""Launched by tests/test_distributed.py, once as one process and once under torchrun: for each case and each
strategy of argv[2], one optimizer step on fixed rollouts (the same rows, each rank given its contiguous share of the
prompts); rank 0 saves every step's metrics, gradients and updated weights to argv[1]. Fixed rollouts, because
sampling under another batch composition would draw other tokens: this isolates the step itself (counts, gradients
and metrics combined over the ranks)."""

from __future__ import annotations

import sys

import torch
from test_trainer import TOKENIZER, fixed_rollouts, tiny_model

from oprd.parallel.group import join, leave
from oprd.rollout import Rollouts
from oprd.train.config import TrainConfig
from oprd.train.trainer import Trainer


def rows_of(rollouts: Rollouts, prompts: range) -> Rollouts:
    keep = torch.isin(rollouts.prompt_index, torch.tensor(list(prompts)))
    return Rollouts(rollouts.input_ids[keep], rollouts.attention_mask[keep], rollouts.response_mask[keep],
                    rollouts.prompt_width, rollouts.prompt_index[keep] - prompts.start)


def whole(t: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP2 DTensor) tensor gathered, or a copy."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t.detach().clone()


CASES = [("oprd", 1), ("oprd+opd", 2)]  # (method, micro-batches per step): OPRD alone; + fused OPD, accumulated


def one_step(method: str, grad_accum: int, strategy: str) -> dict | None:
    """The step's metrics, gradients and weights (whole, on rank 0; None elsewhere)."""
    student, teacher = tiny_model(0, 3), tiny_model(1, 4)
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    batches = []
    for seed in range(grad_accum):
        torch.manual_seed(seed)
        batches.append(fixed_rollouts(student, n_prompts=4))
    config = TrainConfig()
    config.method.name, config.method.topk = method, 4
    config.oprd.positions, config.oprd.k = "last_k", 5
    config.rollout.prompts_per_step, config.optim.grad_accum, config.optim.steps = 4, grad_accum, 1
    config.run.device, config.optim.lr = "cpu", 1e-2
    config.parallel.strategy, _, teacher_placement = strategy.partition("+")  # "fsdp2+shard": the teacher sharded too
    config.parallel.teacher = teacher_placement or "replicate"
    prompts = [{"prompt": "1+1="}] * 8
    trainer = Trainer(config, student, teacher, TOKENIZER, prompts)
    share = 4 // trainer.group.size
    mine = range(trainer.group.rank * share, (trainer.group.rank + 1) * share)
    queue = [rows_of(b, mine) for b in batches]
    trainer._rollouts = lambda micro=0: queue.pop(0)
    metrics = trainer.train_step()
    grads = {k: whole(p.grad) for k, p in student.named_parameters() if p.grad is not None}  # every rank: collectives
    weights = {k: whole(v) for k, v in student.state_dict().items()}
    if not trainer.group.is_main:
        return None
    return {"metrics": metrics, "weights": weights, "grads": grads, "initial": initial}


def main(out: str, strategies: list[str], check_group: bool) -> None:
    results = {(method, accum, strategy): one_step(method, accum, strategy)
               for method, accum in CASES for strategy in strategies}
    if check_group:  # the collectives' own checks, in the same launch (one torchrun start fewer)
        import dist_group_worker

        results["group checked"] = join(torch.device("cpu")).gather(dist_group_worker.check_group())
    if results[next(iter(results))] is not None:
        torch.save(results, out)
    leave()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), "--check-group" in sys.argv[3:])
