"""Several processes on PyTorch's own engine (torchrun): the process group and its collectives (`group`), the
launch check (`processes`), FSDP2 sharding (`sharding`, `fsdp_check`) and one metrics line from every rank
(`rank_metrics`).

It may import `runs` (rank 0 writes a run's checkpoints) and nothing else of `oprd`; `rollout`, `capture` and
everything above import it.
"""
