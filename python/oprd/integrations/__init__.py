"""OPRD inside the trainers people already run: `trl` (an `OPRDTrainer` over TRL's on-policy distillation trainer;
optional dependency, `pip install 'oprd[trl]'`), and for verl's FSDP engine `verl` (the teacher side) and
`verl_samples` (verl's sample layouts to oprd's), which `examples/verl/` wraps into verl without a fork.

Adapters only: they may import `objective`, `bridge`, `rollout`, `capture` and the selection modules, never `train`
or the CLI, and nothing in `oprd` imports them.
"""
