"""PromptStream: the order prompts are consumed in. It must stay exactly the order of the original algorithm (one
seeded shuffle per epoch, looked up prompt by prompt), so that resuming an existing run continues identically, while
computing each epoch's shuffle once rather than once per prompt taken."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from oprd.rollout import prompts as data
from oprd.rollout.prompts import PromptStream


def oracle(prompts: list[dict], seed: int, position: int, n: int) -> list[dict]:
    """The original `take`: for every prompt, shuffle the whole index list of its epoch and pick its offset."""
    out = []
    for _ in range(n):
        epoch, offset = divmod(position, len(prompts))
        order = list(range(len(prompts)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(prompts[order[offset]])
        position += 1
    return out


def make_prompts(n: int) -> list[dict]:
    return [{"prompt": f"p{i}", "answer": str(i)} for i in range(n)]


@pytest.mark.parametrize("num_prompts", [1, 2, 7, 10])
@pytest.mark.parametrize("seed", [0, 3])
def test_takes_follow_the_original_order_across_epochs(num_prompts, seed):
    prompts = make_prompts(num_prompts)
    stream = PromptStream(prompts, seed)
    position = 0
    for n in (3, 5, 0, 7, 16, 1, 9, 2 * num_prompts + 1, 4):
        assert stream.take(n) == oracle(prompts, seed, position, n)
        position += n
        assert stream.position == position


def test_a_stream_resumed_anywhere_continues_as_the_original():
    prompts = make_prompts(13)
    rng = random.Random(1)
    positions = [0, 1, 12, 13, 14, 25, 26, 100, 1000, *(rng.randrange(0, 500) for _ in range(20))]
    for position in positions:
        stream = PromptStream(prompts, 5, position=position)
        assert stream.take(17) == oracle(prompts, 5, position, 17), position
        assert stream.take(6) == oracle(prompts, 5, position + 17, 6), position


def test_setting_the_position_after_takes_reads_the_new_epoch():
    """The trainer resumes by assigning `stream.position`: a cached epoch order must not leak into another epoch."""
    prompts = make_prompts(9)
    stream = PromptStream(prompts, 2)
    stream.take(4)
    for position in (40, 41, 3, 8, 9, 200):
        stream.position = position
        assert stream.take(5) == oracle(prompts, 2, position, 5)


def test_the_prompt_list_or_seed_changing_is_noticed():
    prompts = make_prompts(6)
    stream = PromptStream(prompts, 0)
    stream.take(2)
    stream.seed = 4
    assert stream.take(3) == oracle(prompts, 4, 2, 3)
    prompts.append({"prompt": "p6", "answer": "6"})
    assert stream.take(3) == oracle(prompts, 4, 5, 3)


def test_empty_and_negative_takes_return_nothing():
    stream = PromptStream(make_prompts(3), 0, position=2)
    assert stream.take(0) == [] and stream.take(-1) == [] and stream.position == 2


@pytest.fixture
def shuffles(monkeypatch) -> list[int]:
    """The seed of every shuffle data.py runs (the original code shuffled the whole list once per prompt taken)."""
    seeds: list[int] = []

    class CountingRandom(random.Random):
        def __init__(self, seed):
            super().__init__(seed)
            self.seed_value = seed

        def shuffle(self, x):
            seeds.append(self.seed_value)
            super().shuffle(x)

    monkeypatch.setattr(data, "random", SimpleNamespace(Random=CountingRandom))
    return seeds


def test_each_epoch_order_is_computed_once(shuffles):
    prompts = make_prompts(10)
    stream = PromptStream(prompts, 7)
    got = [p for n in (4, 4, 4, 4, 4, 4) for p in stream.take(n)]  # 24 prompts: epochs 0, 1, 2
    assert got == oracle(prompts, 7, 0, 24)
    assert shuffles == [7 * 1_000_003 + epoch for epoch in (0, 1, 2)]


def test_a_resumed_stream_computes_only_the_epochs_it_reads(shuffles):
    prompts = make_prompts(10)
    stream = PromptStream(prompts, 7, position=57)  # epoch 5, offset 7
    assert stream.take(3) + stream.take(1) + stream.take(10) == oracle(prompts, 7, 57, 14)  # epochs 5, 6, 7
    assert shuffles == [7 * 1_000_003 + epoch for epoch in (5, 6, 7)]
    stream.take(2)  # still epoch 7
    assert len(shuffles) == 3
