"""The checks before any model loads (oprd.cli.preflight, oprd.cli.model_files): model directories, whole weights, the
student/teacher pair, the run directory and the prompt files, each refused with a message that names the key or
file and what to do."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest
from safetensors import safe_open
from tiny_hf import save_tiny_model

from oprd.cli.model_files import TOKENIZER_FILES, WEIGHT_FILES, check_model_dir
from oprd.cli.preflight import check_run_dir, check_train, train_prompts
from oprd.runs.checkpoint import CheckpointError, CheckpointWarning
from oprd.runs.run_dir import RunDirError
from oprd.train.config import load_config


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"student": save_tiny_model(root / "student"), "teacher": save_tiny_model(root / "teacher", tokenizer=False),
            "wide": save_tiny_model(root / "wide", hidden=48, tokenizer=False),
            "sharded": save_tiny_model(root / "sharded", max_shard_size="20KB")}


def copy_model(models, name, to):
    return shutil.copytree(models[name], to)


# --- model directories ----------------------------------------------------------------------------------------------

def test_whole_directories_pass(models):
    assert check_model_dir(str(models["student"]), "model.student", tokenizer=True) == models["student"]
    assert len(list(models["sharded"].glob("model-*.safetensors"))) > 1  # the fixture is really sharded
    check_model_dir(str(models["sharded"]), "model.student", tokenizer=True)


def test_a_directory_without_config_or_weights_names_what_was_looked_for(models, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`model.teacher` .* \(it does not exist\)"):
        check_model_dir(str(tmp_path / "absent"), "model.teacher")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"\(it is a file\)"):
        check_model_dir(str(tmp_path / "file"), "model.teacher")
    directory = copy_model(models, "teacher", tmp_path / "m")
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"`model.teacher` '.*m' has no weights \(looked for "
                                                + ", ".join(WEIGHT_FILES).replace(".", r"\.") + r"\)"):
        check_model_dir(str(directory), "model.teacher")
    (directory / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"not a local Hugging Face model directory \(no config.json\)"):
        check_model_dir(str(directory), "model.teacher")


def test_a_student_without_a_tokenizer_names_the_files_looked_for(models, tmp_path):
    check_model_dir(str(models["teacher"]), "model.teacher")  # the teacher needs none
    with pytest.raises(FileNotFoundError, match=r"`model.student` .* has no tokenizer \(looked for "
                                                + ", ".join(TOKENIZER_FILES).replace(".", r"\.") + r"\)"):
        check_model_dir(str(models["teacher"]), "model.student", tokenizer=True)


def loads(file) -> bool:
    try:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                f.get_tensor(key)
        return True
    except Exception:
        return False


@pytest.mark.parametrize("cut", [4, 8, 100, "header_end", "last_byte"])
def test_truncated_safetensors_are_refused_like_safetensors_refuses_them(models, tmp_path, cut):
    directory = copy_model(models, "teacher", tmp_path / "m")
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    size = {"header_end": header_end, "last_byte": len(data) - 1}.get(cut, cut)
    weights.write_bytes(data[:size])
    assert not loads(weights)
    with pytest.raises(ValueError, match=rf"`model.teacher` .*model\.safetensors is truncated \({size} bytes"):
        check_model_dir(str(directory), "model.teacher")


def test_trailing_bytes_and_a_garbled_header_are_refused(models, tmp_path):
    directory = copy_model(models, "teacher", tmp_path / "m")
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data + b"\0" * 5)
    assert not loads(weights)
    with pytest.raises(ValueError, match="has 5 bytes beyond the"):
        check_model_dir(str(directory), "model.teacher")
    weights.write_bytes(data[:8] + b"[" + data[9:])  # the header is no longer a JSON object
    with pytest.raises(ValueError, match="is not a safetensors file"):
        check_model_dir(str(directory), "model.teacher")


def test_sharded_weights_need_every_shard_whole(models, tmp_path):
    directory = copy_model(models, "sharded", tmp_path / "m")
    shards = sorted(directory.glob("model-*.safetensors"))
    shards[-1].write_bytes(shards[-1].read_bytes()[:-10])
    with pytest.raises(ValueError, match=rf"{shards[-1].name} is truncated"):
        check_model_dir(str(directory), "model.student")
    shards[0].unlink()
    with pytest.raises(FileNotFoundError, match=rf"1 of the {len(shards)} shards model\.safetensors\.index\.json "
                                                rf"names are missing \({shards[0].name}\)"):
        check_model_dir(str(directory), "model.student")
    (directory / "model.safetensors.index.json").write_text('{"weight_map": 3}')
    with pytest.raises(ValueError, match="is not a weight index"):
        check_model_dir(str(directory), "model.student")


def test_pytorch_bin_weights_pass_whole_and_fail_truncated(models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    directory = copy_model(models, "teacher", tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    (directory / "model.safetensors").unlink()
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    check_model_dir(str(directory), "model.teacher")
    AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)  # what the check lets through loads
    data = (directory / "pytorch_model.bin").read_bytes()
    (directory / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"pytorch_model\.bin is truncated"):
        check_model_dir(str(directory), "model.teacher")


# --- the pair and the config ----------------------------------------------------------------------------------------

def config_for(models, tmp_path, *overrides, prompts=None):
    if prompts is None:
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"}\n')
    return load_config(None, [f"model.student={models['student']}", f"model.teacher={models['teacher']}",
                              f"data.prompts={prompts}", f"run.dir={tmp_path / 'run'}", *overrides])


@pytest.mark.parametrize("method", ["oprd", "oprd+opd"])
def test_oprd_vanilla_refuses_a_teacher_of_another_width(models, tmp_path, method):
    config = config_for(models, tmp_path, f"model.teacher={models['wide']}", f"method.name={method}")
    with pytest.raises(ValueError, match="`model.teacher` has hidden size 48 and `model.student` 32"):
        check_train(config)


def test_a_later_phase_is_checked_like_the_first(models, tmp_path):
    config = config_for(models, tmp_path, f"model.teacher={models['wide']}", "method.name=opd_top1",
                        "method.then=oprd", "method.switch_step=1", "optim.steps=3")
    with pytest.raises(ValueError, match="method 'oprd' \\(OPRD-Vanilla\\) aligns hidden states directly"):
        check_train(config)


def test_opd_trains_with_a_teacher_of_another_width(models, tmp_path):
    prompts, eval_prompts = check_train(config_for(models, tmp_path, f"model.teacher={models['wide']}",
                                                   "method.name=opd_top1"))
    assert len(prompts) == 2 and eval_prompts == [{"prompt": "1+1=", "answer": "2"},
                                                  {"prompt": "2+2=", "answer": "4"}]


def test_a_bridge_method_needs_a_bridge_file_fitted_for_the_pair(models, tmp_path):
    from bridges import random_bridge
    from transformers import AutoModelForCausalLM

    from oprd.bridge import BridgeFileError, save_bridge

    with pytest.raises(ValueError, match="`bridge.path` must name a bridge file .* for method 'oprd_bridge'"):
        config_for(models, tmp_path, f"model.teacher={models['wide']}", "method.name=oprd_bridge")
    missing = config_for(models, tmp_path, f"model.teacher={models['wide']}", "method.name=oprd_bridge",
                         f"bridge.path={tmp_path / 'none.safetensors'}")
    with pytest.raises(BridgeFileError, match="no such file"):
        check_train(missing)

    student = AutoModelForCausalLM.from_pretrained(models["student"])
    wide, narrow = (AutoModelForCausalLM.from_pretrained(models[n]) for n in ("wide", "teacher"))
    fitted = save_bridge(random_bridge(student, wide), tmp_path / "wide.safetensors")
    ok = config_for(models, tmp_path, f"model.teacher={models['wide']}", "method.name=oprd_bridge",
                    f"bridge.path={fitted}")
    assert len(check_train(ok)[0]) == 2
    other = save_bridge(random_bridge(student, narrow), tmp_path / "narrow.safetensors")
    with pytest.raises(BridgeFileError, match="teacher with hidden_size 32 .* `model.teacher` has 48"):
        check_train(config_for(models, tmp_path, f"model.teacher={models['wide']}", "method.name=oprd_bridge",
                               f"bridge.path={other}"))
    assert len(check_train(config_for(models, tmp_path, f"model.teacher={models['wide']}", "method.name=oprd_bridge",
                                      f"bridge.path={fitted}", "oprd.layers=last"))[0]) == 2  # a subset trains
    last = save_bridge(random_bridge(student, wide, layers="last"), tmp_path / "last.safetensors")
    with pytest.raises(BridgeFileError, match=r"aligns student layers \[2\]; `oprd.layers` selects \[1, 2\], not all"):
        check_train(config_for(models, tmp_path, f"model.teacher={models['wide']}", "method.name=oprd_bridge",
                               f"bridge.path={last}"))


def test_layers_beyond_the_students_depth_are_refused(models, tmp_path):
    with pytest.raises(ValueError, match=r"`oprd.layers` '1,5' does not fit `model.student` .* \(2 blocks\)"):
        check_train(config_for(models, tmp_path, "oprd.layers=1,5"))


def test_a_config_json_that_does_not_parse_is_one_message(models, tmp_path):
    teacher = copy_model(models, "teacher", tmp_path / "t")
    (teacher / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"`model.teacher` .*: config.json does not load as a Hugging Face config"):
        check_train(config_for(models, tmp_path, f"model.teacher={teacher}"))


# --- prompts: training needs no answers, evaluation does ------------------------------------------------------------

def test_prompts_without_answers_train_once_evaluation_is_off_or_elsewhere(models, tmp_path):
    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"prompt": "1+1="}\n{"prompt": "2+2="}\n')
    with pytest.raises(ValueError) as info:
        train_prompts(config_for(models, tmp_path, prompts=bare))
    message = str(info.value)
    assert "bare.jsonl:1 has no field 'answer'" in message and "`data.eval_prompts` is not set" in message
    assert "`data.answer_field=` (empty)" in message and "point `data.eval_prompts` at a file" in message
    assert train_prompts(config_for(models, tmp_path, "data.answer_field=", prompts=bare)) == (
        [{"prompt": "1+1="}, {"prompt": "2+2="}], [])
    graded = tmp_path / "graded.jsonl"
    graded.write_text("".join(json.dumps({"prompt": f"{i}+0=", "answer": str(i)}) + "\n" for i in range(5)))
    prompts, eval_prompts = train_prompts(config_for(models, tmp_path, f"data.eval_prompts={graded}",
                                                     "data.eval_size=3", prompts=bare))
    assert prompts == [{"prompt": "1+1="}, {"prompt": "2+2="}]
    assert eval_prompts == [{"prompt": f"{i}+0=", "answer": str(i)} for i in range(3)]


def test_an_eval_file_without_answers_is_named(models, tmp_path):
    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"prompt": "1+1="}\n')
    with pytest.raises(ValueError, match=r"bare.jsonl:1 has no field 'answer'.*from `data.eval_prompts`:"):
        train_prompts(config_for(models, tmp_path, f"data.eval_prompts={bare}"))
    with pytest.raises(ValueError, match=r"has no field 'question'.*set `data.prompt_field`"):
        train_prompts(config_for(models, tmp_path, "data.prompt_field=question"))


# --- the run directory ----------------------------------------------------------------------------------------------

def test_run_dir_must_be_a_directory_not_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"`run.dir` .*file is a file, not a directory; choose another run.dir"):
        check_run_dir(str(tmp_path / "file"))
    with pytest.raises(ValueError, match=r"`run.dir` .*file/a/b is under .*file, which is a file"):
        check_run_dir(str(tmp_path / "file" / "a" / "b"))
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(ValueError, match="is a broken symbolic link"):
        check_run_dir(str(tmp_path / "link"))
    with pytest.raises(ValueError, match="`run.dir` is empty"):
        check_run_dir("")


def test_a_new_run_dir_is_checked_without_creating_anything(tmp_path):
    check_run_dir(str(tmp_path / "a" / "b"))
    assert list(tmp_path.iterdir()) == []  # neither the directory nor the probe file stays


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through permission bits; test_an_unwritable_run_dir_simulated covers the path")
def test_an_unwritable_run_dir_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=r"`run.dir` .*locked/run: cannot write there \(in .*locked, where it "
                                             r"would be created\)"):
            check_run_dir(str(locked / "run"))
    finally:
        locked.chmod(0o700)


def test_an_unwritable_run_dir_simulated(tmp_path, monkeypatch):
    """As root the permission bits do not stop a write, so the file system's refusal is simulated."""
    import oprd.cli.preflight

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(oprd.cli.preflight.tempfile, "mkstemp", refuse)
    with pytest.raises(ValueError, match=r"`run.dir` .*run: cannot write there \(in .*, where it would be "
                                         r"created\): Permission denied; choose a run.dir you can write in"):
        check_run_dir(str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError, match=r"/run: cannot write there: Permission denied"):
        check_run_dir(str(tmp_path / "run"))


def test_a_fresh_run_into_another_runs_outputs_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    check_run_dir(str(run))  # other files are no run
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunDirError, match=r"already holds a run \(metrics.jsonl\); continue it with --resume"):
        check_run_dir(str(run))
    check_run_dir(str(run), overwrite=True)
    check_run_dir(str(run), resume=True)
    assert (run / "metrics.jsonl").is_file()  # the check deletes nothing, even with overwrite


def test_resume_needs_one_checkpoint_that_passes_the_cheap_check(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000002").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint to resume from; broken: .*step_00000002 "
                                              r"\(manifest.json is missing"), \
            pytest.warns(CheckpointWarning, match="step_00000002 is broken, skipped"):
        check_run_dir(str(run), resume=True)
    check_run_dir(str(tmp_path / "new"), resume=True)  # nothing to resume: starts fresh, as Trainer.run does


def test_resume_passes_with_an_intact_checkpoint_behind_a_broken_one(models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from oprd.runs.checkpoint import TrainerState, save_checkpoint

    run = tmp_path / "run"
    model = AutoModelForCausalLM.from_pretrained(models["teacher"], local_files_only=True)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    saved = save_checkpoint(run, model=model, optimizer=optimizer, scheduler=scheduler, state=TrainerState(1, 2))
    (run / "checkpoints" / "step_00000009").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silent: the Trainer warns about the broken one when it resumes
        check_run_dir(str(run), resume=True)
    (saved / "optimizer.pt").write_bytes(b"cut")
    with pytest.raises(CheckpointError, match=r"step_00000009 \(manifest.json is missing.*step_00000001 \(.*"
                                              r"optimizer.pt"), pytest.warns(CheckpointWarning):
        check_run_dir(str(run), resume=True)
