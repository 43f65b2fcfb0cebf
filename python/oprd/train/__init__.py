"""The training loop and what it is configured and measured with: `trainer` (the step loop, top to bottom),
`config` (the dataclass tree and its YAML), `accumulation` (micro-batches normalised as one batch), `optim`
(optimizers and the LR schedule), `evaluate` (avg@k), `head_transfer`, `memory` and `memory_plan`.

It may import `objective`, `bridge`, `rollout`, `capture`, `parallel`, `runs` and the selection modules; `demo`
and `cli` import it, nothing else does.
"""
