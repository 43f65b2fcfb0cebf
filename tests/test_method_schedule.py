"""`method.then` after `method.switch_step` steps: the paper's best Table 4 row, Bridge then OPD top-1. The switch
happens at the step the config says, is step-based (a resume across it continues exactly), and is checked whole."""

from __future__ import annotations

import pytest
import torch
from bridges import random_bridge
from test_trainer import TOKENIZER, prompts, read_metrics, tiny_model, wide_teacher, without_timings

from oprd.bridge import save_bridge
from oprd.train.config import load_config
from oprd.train.trainer import Trainer


def schedule_trainer(tmp_path, bridge_file, steps=4, switch=2):
    config = load_config(overrides=[
        f"run.dir={tmp_path / 'run'}", f"optim.steps={steps}", "run.save_every=1", "run.device=cpu",
        "method.name=oprd_bridge", "method.then=opd_top1", f"method.switch_step={switch}", f"bridge.path={bridge_file}",
        "rollout.prompts_per_step=2", "rollout.max_new_tokens=8", "oprd.positions=all", "optim.lr=1e-3",
        "data.answer_field="])
    return Trainer(config, tiny_model(0), wide_teacher(), TOKENIZER, prompts(20))


@pytest.fixture
def bridge_file(tmp_path):
    return save_bridge(random_bridge(tiny_model(0), wide_teacher(), rank=3), tmp_path / "bridge.safetensors")


def test_the_run_switches_method_after_switch_step(tmp_path, bridge_file):
    trainer = schedule_trainer(tmp_path, bridge_file)
    assert [trainer.objective_at(s)[0].method for s in (1, 2, 3, 4)] == ["oprd_bridge"] * 2 + ["opd_top1"] * 2
    trainer.run(progress=False)
    rows = read_metrics(trainer.metrics_path)
    assert [("loss/oprd_bridge" in r, "loss/opd" in r) for r in rows] == [(True, False)] * 2 + [(False, True)] * 2


def test_a_resume_across_the_switch_continues_exactly(tmp_path, bridge_file):
    straight = schedule_trainer(tmp_path / "a", bridge_file)
    straight.run(progress=False)
    interrupted = schedule_trainer(tmp_path / "b", bridge_file)
    real_step = interrupted.train_step

    def crash_at_the_switch(**kwargs):
        if interrupted.step == 2:
            raise KeyboardInterrupt
        return real_step(**kwargs)

    interrupted.train_step = crash_at_the_switch
    with pytest.raises(KeyboardInterrupt):
        interrupted.run(progress=False)
    resumed = schedule_trainer(tmp_path / "b", bridge_file)
    resumed.run(resume=True, progress=False)
    assert without_timings(read_metrics(resumed.metrics_path)) == without_timings(read_metrics(straight.metrics_path))
    for (name, a), b in zip(straight.student.named_parameters(), resumed.student.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("overrides, message", [
    (["method.then=opd_top1"], r"`method.switch_step` must be in \[1, optim.steps - 1\] = \[1, 9\]"),
    (["method.then=opd_top1", "method.switch_step=10"], r"\[1, 9\] when `method.then` is set \('opd_top1'\)"),
    (["method.then=oprd", "method.switch_step=3"], "`method.then` must differ from `method.name`"),
    (["method.then=oprd_bridge", "method.switch_step=3", "method.name=opd_top1"],
     r"`bridge.path` must name a bridge file .* for method 'oprd_bridge' \(`method.then`\)"),
    (["method.then=top1"], "`method.then` must be one of"),
])
def test_a_bad_schedule_is_refused_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(overrides=["optim.steps=10", *overrides])
