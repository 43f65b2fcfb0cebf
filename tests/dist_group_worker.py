"""oprd.parallel.group.Group's collectives, checked on each of 2 ranks (an assertion failing on either rank fails the
launch): run by dist_equal_worker.py --check-group within tests/test_distributed.py's torchrun launch, or alone."""

from __future__ import annotations

import torch
from torch import nn

from oprd.parallel.group import join, leave
from oprd.parallel.rank_metrics import reduce_metrics


class RankError(ValueError):
    pass


def check_group() -> int:
    """Every check below on this rank; returns the rank."""
    group = join(torch.device("cpu"))
    rank = group.rank
    assert group.size == 2 and group.active and group.is_main == (rank == 0)
    assert group.shard(list(range(6)), "x") == ([0, 1, 2] if rank == 0 else [3, 4, 5])
    try:
        group.shard([1, 2, 3], "rollout.prompts_per_step")
        raise AssertionError("an uneven split was accepted")
    except ValueError as exc:
        assert "rollout.prompts_per_step: 3 cannot be split evenly across 2 processes" in str(exc)
    assert group.sum([1.0 + rank, 10.0]) == [3.0, 20.0] and group.max([float(rank)]) == [1.0]
    line = {"loss/total": 1.0 + rank, "time/step_s": 1.0 + rank, "memory/peak_rss_mb": 10.0 * rank,
            "tokens/response": 4.0, "rep/cosine_similarity": float(rank)}
    assert reduce_metrics(group, line) == {"loss/total": 3.0, "time/step_s": 2.0, "memory/peak_rss_mb": 10.0,
                                           "tokens/response": 8.0, "rep/cosine_similarity": 0.5}
    assert group.gather({"rank": rank}) == [{"rank": 0}, {"rank": 1}]
    assert group.run_on_main(lambda: f"from {rank}") == "from 0"

    def fails():
        raise RankError("run.dir holds another run")

    try:
        group.run_on_main(fails)
        raise AssertionError("rank 0's failure did not reach this rank")
    except ValueError as exc:  # rank 0: its own RankError; rank 1: a ValueError with the message
        assert str(exc) == "run.dir holds another run"

    torch.manual_seed(rank)  # different weights per rank, until broadcast
    module = nn.Linear(3, 2)
    group.broadcast_module(module)
    torch.manual_seed(0)
    assert torch.equal(module.weight, nn.Linear(3, 2).weight)
    a, b, c = (nn.Parameter(torch.ones(2)) for _ in range(3))
    a.grad = torch.full((2,), float(rank + 1))  # both ranks
    if rank == 1:
        b.grad = torch.full((2,), 5.0)  # one rank only: zeros on the other
    group.sum_gradients([a, b, c])
    assert a.grad.tolist() == [3.0, 3.0] and b.grad.tolist() == [5.0, 5.0] and c.grad is None
    group.barrier()
    return rank


if __name__ == "__main__":
    check_group()
    leave()
