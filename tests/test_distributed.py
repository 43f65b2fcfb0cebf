"""`oprd train` under torchrun, 2 CPU processes on gloo (really launched): one step equals the one-process step on the
same prompts, rank 0 alone writes one metrics line per step and the checkpoints, and a 2-process run resumes exactly.

Tolerances of the equality (fp32; the ranks sum the gradient in another order than one process does): losses and the
gradient norm rel 1e-5; each gradient within 1e-5 of its tensor's largest entry; the weights after AdamW's first step
within 1e-3 of the learning rate (Adam divides every gradient entry by its own magnitude, so an entry of 1e-8, near
Adam's eps, carries its 1e-3 relative rounding difference into the step)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import tiny, train_args  # noqa: F401 - the fixture

from oprd.runs.checkpoint import latest_checkpoint

TESTS = Path(__file__).resolve().parent
TIMINGS = ("time/", "memory/")
LR = 1e-2  # dist_equal_worker's


def environment() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(processes), *args], capture_output=True, text=True, timeout=600, env=environment())


def metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(TIMINGS)} for line in lines]


@pytest.fixture(scope="module")
def steps(tmp_path_factory) -> tuple[dict, dict]:
    """dist_equal_worker's steps: one process (the strategy has no effect there), and 2 processes per strategy."""
    root = tmp_path_factory.mktemp("steps")
    worker = str(TESTS / "dist_equal_worker.py")
    alone = subprocess.run([sys.executable, worker, str(root / "one.pt"), "ddp"], capture_output=True, text=True,
                           timeout=600, env=environment())
    assert alone.returncode == 0, alone.stderr[-3000:]
    pair = torchrun(worker, str(root / "two.pt"), "ddp,fsdp2,fsdp2+shard", "--check-group")
    assert pair.returncode == 0, pair.stderr[-3000:]
    return torch.load(root / "one.pt"), torch.load(root / "two.pt")


def test_the_groups_collectives_on_two_processes(steps):
    """dist_group_worker's checks ran on both ranks of the steps' launch (an assertion there fails the launch)."""
    assert steps[1]["group checked"] == [0, 1]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2", "fsdp2+shard"])  # +shard: the teacher sharded too
@pytest.mark.parametrize("method, grad_accum", [("oprd", 1), ("oprd+opd", 2)])
def test_a_two_process_step_equals_the_one_process_step(steps, method, grad_accum, strategy):
    a, b = steps[0][(method, grad_accum, "ddp")], steps[1][(method, grad_accum, strategy)]
    assert a["metrics"]["world_size"] == 1 and b["metrics"]["world_size"] == 2
    for key, value in a["metrics"].items():
        if key.startswith("loss/") or key == "grad/norm":  # per-batch means (rep/, opd/) average the shares
            assert b["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert {k for k in a["metrics"] if k.startswith("loss/")} >= {"loss/total", "loss/oprd"}
    assert set(b["grads"]) == set(a["grads"])  # no parameter gains a (zero) gradient, and with it weight decay
    for name, grad in a["grads"].items():
        torch.testing.assert_close(b["grads"][name], grad, rtol=0, atol=1e-5 * float(grad.abs().max()), msg=name)
    for name, weight in a["weights"].items():
        torch.testing.assert_close(b["weights"][name], weight, rtol=0, atol=1e-3 * LR, msg=name)
        assert torch.equal(weight, b["initial"][name]) == (name not in a["grads"]), f"{name}: moved without a grad"


def run_args(tiny, tmp_path, run: Path, *extra):  # noqa: F811
    """3 steps, a checkpoint each, and evaluation at the end on 3 prompts (an uneven split: 2 + 1 and a pad)."""
    prompts = tmp_path / "three.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n"
                               for p, a in (("1+1=", "2"), ("2+3=", "5"), ("4+4=", "8"))))
    return train_args(tiny, tmp_path, "optim.steps=3", "rollout.prompts_per_step=2", "rollout.max_new_tokens=4",
                      "run.save_every=1", "run.keep_checkpoints=3", f"data.prompts={prompts}", "eval.samples=2",
                      "eval.max_new_tokens=4", f"run.dir={run}", *extra)


# ddp: slow (about 30 s of launches); its step is test_a_two_process_step_equals_the_one_process_step[ddp], its
# resume the one-process load plus the per-rank RNG files this fsdp2 case reads too
@pytest.mark.parametrize("strategy", [pytest.param("ddp", marks=pytest.mark.slow), "fsdp2"])
def test_two_processes_write_one_line_per_step_and_resume_exactly(tiny, tmp_path, strategy):  # noqa: F811
    straight = tmp_path / "straight"
    done = torchrun("-m", "oprd.cli", *run_args(tiny, tmp_path, straight, f"parallel.strategy={strategy}"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("final student in") == 1  # rank 0 reports, once
    lines = metrics(straight)
    assert [line["step"] for line in lines] == [1, 2, 3] and {line["world_size"] for line in lines} == {2}
    assert "eval/accuracy" in lines[-1] and 0 < lines[-1]["eval/response_length"] <= 4
    checkpoints = sorted(p.name for p in (straight / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_00000001", "step_00000002", "step_00000003"]
    newest = latest_checkpoint(straight)
    assert (newest / "rng_state.rank1.pt").is_file() and not (newest / "rng_state.rank2.pt").exists()
    assert json.loads((newest / "trainer_state.json").read_text())["extra"] == {"world_size": 2, "parallel": strategy}

    crashed = tmp_path / "crashed"  # as if killed after step 2's checkpoint and step 3's metrics line
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step_00000003")
    shutil.rmtree(crashed / "final")
    (crashed / "checkpoints" / "latest").write_text("step_00000002\n")
    args = run_args(tiny, tmp_path, crashed, f"parallel.strategy={strategy}")
    resumed = torchrun("-m", "oprd.cli", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metrics(crashed) == lines
    for name in ("model/model.safetensors", "optimizer.pt", "rng_state.pt", "rng_state.rank1.pt"):
        a = (straight / "checkpoints" / "step_00000003" / name).read_bytes()
        b = (crashed / "checkpoints" / "step_00000003" / name).read_bytes()
        assert a == b, name


def test_a_resume_with_another_process_count_or_strategy_is_refused(tmp_path):
    from test_trainer import TOKENIZER, prompts, tiny_model

    from oprd.parallel.checkpointing import check_resumable
    from oprd.runs.checkpoint import TrainerState
    from oprd.train.config import TrainConfig
    from oprd.train.trainer import Trainer

    config = TrainConfig()
    config.run.device, config.run.dir = "cpu", str(tmp_path / "run")
    trainer = Trainer(config, tiny_model(0), tiny_model(1), TOKENIZER, prompts(4))  # one process
    size, strategy = trainer.group.size, trainer._strategy
    check_resumable(tmp_path, TrainerState(2, 4, {}), size, strategy)  # saved by one process: fine
    with pytest.raises(ValueError, match=r"saved by 2 process\(es\), this run has 1: .* --nproc_per_node 2"):
        check_resumable(tmp_path, TrainerState(2, 4, {"world_size": 2, "parallel": "fsdp2"}), size, strategy)
    with pytest.raises(ValueError, match=r"saved with parallel.strategy 'ddp', this run has 'single'"):
        check_resumable(tmp_path, TrainerState(2, 4, {"world_size": 1, "parallel": "ddp"}), size, strategy)
