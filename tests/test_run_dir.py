"""The trainer's run directory: a fresh run refuses another run's outputs unless told to overwrite, crash debris goes
at start, retention follows `run.keep_checkpoints`, and resume survives a broken checkpoint and a torn metrics line
while still reproducing the uninterrupted run. Also checks that `oprd train` reports these as one line and that the
demo can be re-run into its own folder."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from test_checkpoint import overwrite_4kb_in_the_middle
from test_trainer import TOKENIZER, make_trainer, read_metrics, tiny_model, without_timings

from oprd.cli.commands import main
from oprd.runs.checkpoint import CheckpointWarning, latest_checkpoint
from oprd.runs.metrics_log import MetricsLogWarning
from oprd.runs.run_dir import RunDirError
from oprd.tasks import ArithmeticTask, write_jsonl
from oprd.train.config import load_config


def error_line(stderr: str) -> str:
    """The CLI's error: the last line of stderr (weight-loading progress bars come before it)."""
    return stderr.strip().splitlines()[-1]


def step_dirs(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("step_*"))


def test_a_fresh_run_refuses_a_directory_holding_another_run(tmp_path):
    make_trainer(tmp_path, steps=3, save_every=3).run(progress=False)
    run = tmp_path / "run"
    config_before = (run / "config.yaml").read_text()
    with pytest.raises(RunDirError) as error:
        make_trainer(tmp_path, steps=2, save_every=2).run(progress=False)
    message = str(error.value)
    assert f"run directory {run} already holds a run" in message and "checkpoints/step_00000003" in message
    assert "--resume" in message and "--overwrite" in message
    assert (run / "config.yaml").read_text() == config_before  # the old run's files are untouched
    assert step_dirs(run) == ["step_00000003"] and len(read_metrics(run / "metrics.jsonl")) == 3


def test_overwrite_deletes_the_old_run_and_nothing_else(tmp_path):
    make_trainer(tmp_path, steps=3, save_every=3).run(progress=False)
    run = tmp_path / "run"
    (run / "final").mkdir()
    (run / "final" / "config.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / "README").write_text("mine too")
    make_trainer(tmp_path, steps=2, save_every=2).run(progress=False, overwrite=True)
    assert step_dirs(run) == ["step_00000002"]  # the old step_3 is gone: a later --resume cannot pick it up
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert latest_checkpoint(run) == run / "checkpoints" / "step_00000002"
    assert not (run / "final").exists()
    assert (run / "notes.txt").read_text() == "mine" and (run / "checkpoints" / "README").read_text() == "mine too"
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    with pytest.raises(ValueError, match="exclude each other"):
        make_trainer(tmp_path).run(resume=True, overwrite=True, progress=False)
    assert not (tmp_path / "run").exists()


def test_leftover_temporaries_are_removed_when_a_run_starts(tmp_path):
    ckpt_dir = tmp_path / "run" / "checkpoints"
    (ckpt_dir / ".tmp-step_00000009-abc" / "model").mkdir(parents=True)
    (ckpt_dir / ".tmp-step_00000009-abc" / "model" / "model.safetensors").write_bytes(b"partial")
    (ckpt_dir / ".tmp-latest-xyz").write_text("step_00000009\n")
    trainer = make_trainer(tmp_path)

    def crash(**kwargs):  # stop before the first save, which would also remove them
        raise KeyboardInterrupt

    trainer.train_step = crash
    with pytest.raises(KeyboardInterrupt):
        trainer.run(progress=False)  # debris alone is not another run: no refusal
    assert list(ckpt_dir.iterdir()) == []


def test_keep_checkpoints_is_a_validated_setting_that_save_follows(tmp_path):
    with pytest.raises(ValueError, match="`run.keep_checkpoints` must be >= 1; got 0"):
        load_config(overrides=["run.keep_checkpoints=0"])
    with pytest.raises(TypeError, match="`run.keep_checkpoints` must be an int"):
        load_config(overrides=["run.keep_checkpoints=two"])
    assert load_config().run.keep_checkpoints == 2
    trainer = make_trainer(tmp_path, steps=3, save_every=1, **{"run.keep_checkpoints": 1})
    trainer.run(progress=False)
    assert step_dirs(tmp_path / "run") == ["step_00000003"]
    trainer = make_trainer(tmp_path, steps=3, save_every=1, **{"run.keep_checkpoints": 3})
    trainer.run(progress=False, overwrite=True)
    assert step_dirs(tmp_path / "run") == ["step_00000001", "step_00000002", "step_00000003"]


def test_resume_past_a_broken_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    straight = make_trainer(tmp_path, steps=3, save_every=1)
    straight.run(progress=False)
    rows = read_metrics(straight.metrics_path)
    weights = {name: p.detach().clone() for name, p in straight.student.named_parameters()}
    broken = tmp_path / "run" / "checkpoints" / "step_00000003"
    overwrite_4kb_in_the_middle(broken / "model" / "model.safetensors")  # same size: only the hash can tell

    resumed = make_trainer(tmp_path, steps=3, save_every=1)
    with pytest.warns(CheckpointWarning, match=f"{broken} is broken, skipped: model/model.safetensors has the "
                                               "recorded size but not the recorded SHA-256"):
        resumed.run(resume=True, progress=False)  # from step 2, then step 3 again
    assert without_timings(read_metrics(resumed.metrics_path)) == without_timings(rows)
    for name, p in resumed.student.named_parameters():
        assert torch.equal(p, weights[name]), name
    assert latest_checkpoint(tmp_path / "run") == broken  # re-saved intact


def test_resume_drops_a_torn_metrics_line_and_names_other_damage(tmp_path):
    make_trainer(tmp_path, steps=2, save_every=1).run(progress=False)
    path = tmp_path / "run" / "metrics.jsonl"
    intact = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"loss/total": 0.5, "st')  # the crash tore the last append
    with pytest.warns(MetricsLogWarning, match="metrics.jsonl, line 3: the last line is incomplete"):
        make_trainer(tmp_path, steps=2, save_every=1).run(resume=True, progress=False)
    assert path.read_bytes() == intact

    path.write_bytes(b"garbage\n" + intact)
    with pytest.raises(ValueError, match=f"{path}, line 1: not valid JSON"):
        make_trainer(tmp_path, steps=2, save_every=1).run(resume=True, progress=False)


def test_oprd_train_reports_run_directory_problems_in_one_line(tmp_path, capsys):
    student, teacher, prompt_file = tmp_path / "student", tmp_path / "teacher", tmp_path / "prompts.jsonl"
    tiny_model(0).save_pretrained(student)
    TOKENIZER.save_pretrained(student)
    tiny_model(1).save_pretrained(teacher)
    write_jsonl(prompt_file, ArithmeticTask(2).sample(8, random.Random(0)))
    run = tmp_path / "run"
    argv = ["train", f"model.student={student}", f"model.teacher={teacher}", f"data.prompts={prompt_file}",
            f"run.dir={run}", "optim.steps=1", "rollout.prompts_per_step=2", "rollout.max_new_tokens=4",
            "eval.samples=1", "eval.max_new_tokens=4", "data.eval_size=1", "run.device=cpu"]
    assert main(argv) == 0
    capsys.readouterr()

    assert main(argv) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith(f"error: run directory {run} already holds a run")
    assert "--resume" in err and err.endswith("--overwrite, which deletes its checkpoints, metrics and final model")
    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    assert main([*argv, "--resume", "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err

    (run / "checkpoints" / "step_00000001" / "optimizer.pt").write_bytes(b"torn")
    with pytest.warns(CheckpointWarning):
        assert main([*argv, "--resume"]) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith(f"error: {run}: no intact checkpoint to resume from") and "optimizer.pt has 4 bytes" in err
    assert err.endswith("or start the run again with --overwrite")


def test_the_demo_can_be_rerun_into_its_own_folder(tmp_path):
    from oprd.demo import DemoSettings, run_demo

    settings = DemoSettings(out=str(tmp_path / "demo"), digits=1, hidden=16, layers=1, sft_examples=32, sft_steps=2,
                            sft_batch=8, candidate_every=1, select_size=2, distill_steps=2, prompts_per_step=2,
                            eval_size=2, eval_samples=1, eval_every=1, methods=("oprd",), teacher_head_methods=(),
                            seeds=1)
    run_demo(settings, progress=False)
    settings.distill_steps = 1
    results = run_demo(settings, progress=False)
    run = tmp_path / "demo" / "runs" / "oprd" / "seed0"
    assert step_dirs(run) == ["step_00000001"]  # the first demo's step_2 would be what --resume picks up
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1]
    assert results["methods"]["oprd"]["runs"][0]["accuracy_curve"][-1][0] == 1
