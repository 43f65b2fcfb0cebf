"""`oprd train ... rollout.engine=vllm` on real vLLM (the CPU build): whole runs through the CLI for OPRD and top-k
OPD, the off-policy gap the metrics report, and what a resumed run reproduces. Runs in the vLLM venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from vllm_models import TOKENIZER, prompt_texts, vllm_model, write_run_inputs

from oprd.tasks import ArithmeticTask
from oprd.train.config import load_config
from oprd.train.trainer import Trainer

FAST = ["optim.steps=3", "rollout.prompts_per_step=4", "rollout.responses_per_prompt=2", "rollout.max_new_tokens=12",
        "eval.max_new_tokens=8", "eval.samples=1", "data.eval_size=4", "optim.lr=1e-3", "run.device=cpu",
        "rollout.engine=vllm", "rollout.vllm_kv_cache_mb=16"]


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_run_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.mark.parametrize("method", ["oprd", "opd_topk"])
def test_oprd_train_with_the_vllm_engine(inputs, tmp_path, method):
    """A process of its own per run, as a user starts it: the engine and its teardown included."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "oprd.cli", "train", f"model.student={inputs / 'student'}",
            f"model.teacher={inputs / 'teacher'}", f"data.prompts={inputs / 'prompts.jsonl'}", f"run.dir={run}",
            f"method.name={method}", "method.topk=4", *FAST]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]  # vLLM's teardown at exit included
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row["rollout/logprob_gap"] < 1e-4  # synced every step: the rollouts are the student's own
        assert row["time/weight_sync_s"] > 0 and row["time/rollout_s"] > 0
        assert torch.isfinite(torch.tensor(row["loss/total"]))
    assert rows[0]["loss/total"] != rows[-1]["loss/total"]
    assert (run / "final" / "config.json").exists() and "eval/accuracy" in rows[-1]


def make_trainer(folder, steps=4):
    config = load_config(overrides=[f"run.dir={folder}", f"optim.steps={steps}", "run.save_every=2",
                                    "method.name=oprd", "oprd.positions=all", "eval.every=0", *FAST[1:]])
    task = ArithmeticTask(2)
    prompts = [{"prompt": p, "answer": "0"} for p in prompt_texts(40)]
    return Trainer(config, vllm_model(0), vllm_model(1), TOKENIZER, prompts, grader=task.grade)


def without_timings(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "memory/"))} for r in rows]


def test_a_resumed_vllm_run_reproduces_the_uninterrupted_one(tmp_path):
    """What docs/trainer.md promises: the same prompts, steps and weights, and (the rows' seeds coming from the run's
    seed, rank, step and micro-batch) the same samples from the same vLLM build on the same machine."""
    straight = make_trainer(tmp_path / "a")
    straight.run(progress=False)
    straight.close()
    interrupted = make_trainer(tmp_path / "b")
    real_step = interrupted.train_step

    def crash_after_two_steps(**kwargs):
        if interrupted.step == 2:
            raise KeyboardInterrupt
        return real_step(**kwargs)

    interrupted.train_step = crash_after_two_steps
    with pytest.raises(KeyboardInterrupt):
        interrupted.run(progress=False)
    interrupted.close()
    resumed = make_trainer(tmp_path / "b")
    resumed.run(resume=True, progress=False)
    resumed.close()
    a, b = read_metrics(straight.metrics_path), read_metrics(resumed.metrics_path)
    assert without_timings(a) == without_timings(b)
    for (name, x), y in zip(straight.student.named_parameters(), resumed.student.parameters()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("strategy", ["fsdp2", "ddp"])
def test_torchrun_gives_each_rank_its_own_engine(inputs, tmp_path, strategy):
    """Two processes, each with a colocated engine sampling its half of the prompts from weights synced from the
    sharded (FSDP2: gathered on every rank) or replicated student; the gap stays that of one process."""
    run = tmp_path / "run"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    args = [torchrun, "--nproc_per_node", "2", "-m", "oprd.cli", "train", f"model.student={inputs / 'student'}",
            f"model.teacher={inputs / 'teacher'}", f"data.prompts={inputs / 'prompts.jsonl'}", f"run.dir={run}",
            f"parallel.strategy={strategy}", *[a for a in FAST if not a.startswith("optim.steps")], "optim.steps=2"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(run / "metrics.jsonl")
    assert [(r["step"], r["world_size"]) for r in rows] == [(1, 2), (2, 2)]
    assert all(r["rollout/logprob_gap"] < 1e-4 and r["time/weight_sync_s"] > 0 for r in rows)
