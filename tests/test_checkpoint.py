"""oprd.runs.checkpoint: exact round trip and continuation, crash safety, retention, integrity checks with fallback to
the newest intact checkpoint, and no code execution on load."""

import functools
import json
import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from oprd.runs import checkpoint
from oprd.runs.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

transformers = pytest.importorskip("transformers")


def make_run(seed: int = 0, tie: bool = False):
    """A tiny Llama, AdamW and a LambdaLR, freshly initialised from `seed`."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie)
    model = transformers.LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    return model, optimizer, scheduler


def train_step(model, optimizer, scheduler) -> None:
    """A deterministic toy step whose batch and loss weight come from all three global RNGs."""
    ids = torch.randint(0, 32, (2, 8))
    weight = 1.0 + random.random() + float(np.random.rand())
    loss = model(input_ids=ids, labels=ids).loss * weight
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def trained_run(steps: int = 2, seed: int = 0, tie: bool = False):
    model, optimizer, scheduler = make_run(seed, tie)
    for _ in range(steps):
        train_step(model, optimizer, scheduler)
    return model, optimizer, scheduler


def save(run_dir, run, step, keep=2, **extra):
    model, optimizer, scheduler = run
    state = TrainerState(step=step, data_position=4 * step, extra=extra)
    return save_checkpoint(run_dir, model=model, optimizer=optimizer, scheduler=scheduler, state=state, keep=keep)


def assert_same_params(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def step_dirs(run_dir) -> list[str]:
    return sorted(p.name for p in (Path(run_dir) / "checkpoints").iterdir() if p.name.startswith("step_"))


def test_round_trip_restores_everything(tmp_path):
    run = trained_run()
    path = save(tmp_path, run, step=2, note="hi", nested={"a": [1, 2.5, None]})
    assert path == tmp_path / "checkpoints" / "step_00000002"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert latest_checkpoint(tmp_path) == path

    model, optimizer, scheduler = make_run(seed=1)
    state = load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler)
    assert state == TrainerState(step=2, data_position=8, extra={"note": "hi", "nested": {"a": [1, 2.5, None]}})
    assert_same_params(run[0], model)

    saved_opt, loaded_opt = run[1].state_dict(), optimizer.state_dict()
    assert saved_opt["param_groups"] == loaded_opt["param_groups"]
    assert saved_opt["state"].keys() == loaded_opt["state"].keys() and len(saved_opt["state"]) > 0
    for i, s in saved_opt["state"].items():
        assert s.keys() == loaded_opt["state"][i].keys()
        for name, value in s.items():
            assert torch.equal(value, loaded_opt["state"][i][name]), (i, name)
    assert scheduler.last_epoch == run[2].last_epoch == 2
    assert scheduler.get_last_lr() == run[2].get_last_lr()
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in run[1].param_groups]


def test_tied_embeddings_load_strictly(tmp_path):
    run = trained_run(tie=True)
    path = save(tmp_path, run, step=1)
    model, _, _ = make_run(seed=1, tie=True)
    load_checkpoint(path, model=model, restore_rng=False)
    assert_same_params(run[0], model)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_rng_states_restored(tmp_path):
    run = trained_run()
    path = save(tmp_path, run, step=2)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    load_checkpoint(path, model=make_run(seed=1)[0])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2]
    assert torch.equal(got[2], expected[2])


def test_resume_continues_bitwise(tmp_path):
    random.seed(0)
    np.random.seed(0)
    straight = trained_run(steps=4)

    random.seed(0)
    np.random.seed(0)
    first_half = trained_run(steps=2)
    path = save(tmp_path, first_half, step=2)
    for _ in range(3):  # disturb every RNG, as a new process would have different states
        train_step(*first_half)
    resumed = make_run(seed=7)
    assert load_checkpoint(path, model=resumed[0], optimizer=resumed[1], scheduler=resumed[2]).step == 2
    for _ in range(2):
        train_step(*resumed)
    assert_same_params(straight[0], resumed[0])


def test_crash_in_process_leaves_previous_checkpoint(tmp_path, monkeypatch):
    run = trained_run()
    good = save(tmp_path, run, step=1)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if Path(f).name == "optimizer.pt":
            Path(f).write_bytes(b"partial")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, run, step=2)
    monkeypatch.undo()
    assert step_dirs(tmp_path) == ["step_00000001"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # an exception (unlike a kill) cleans up at once
    assert latest_checkpoint(tmp_path) == good
    load_checkpoint(good, model=make_run(seed=1)[0], restore_rng=False)

    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        save(tmp_path, run, step=2)
    monkeypatch.undo()
    assert step_dirs(tmp_path) == ["step_00000001"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # an exception (unlike a kill) cleans up at once
    assert latest_checkpoint(tmp_path) == good


CRASH_SCRIPT = """
import os, sys
from pathlib import Path
import torch
sys.path.insert(0, {tests!r})
import test_checkpoint as t
from oprd.runs import checkpoint

run = t.trained_run()
t.save({run_dir!r}, run, step=1)
real_save = torch.save
def dying_save(obj, f, *args, **kwargs):
    if Path(f).name == "optimizer.pt":
        Path(f).write_bytes(b"partial")
        os._exit(3)  # a hard kill: no exception handler runs
    return real_save(obj, f, *args, **kwargs)
checkpoint.torch.save = dying_save
t.save({run_dir!r}, run, step=2)
"""


def test_hard_crash_mid_write(tmp_path):
    script = CRASH_SCRIPT.format(tests=str(Path(__file__).parent), run_dir=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr

    ckpt_dir = tmp_path / "checkpoints"
    leftovers = [p for p in ckpt_dir.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers and (leftovers[0] / "model").is_dir()  # the partial write really happened
    assert step_dirs(tmp_path) == ["step_00000001"]
    good = latest_checkpoint(tmp_path)
    assert good == ckpt_dir / "step_00000001"
    assert load_checkpoint(good, model=make_run(seed=1)[0], restore_rng=False).step == 1

    save(tmp_path, trained_run(), step=2)
    assert latest_checkpoint(tmp_path) == ckpt_dir / "step_00000002"
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".tmp-")]


def test_latest_fallback_and_resave(tmp_path):
    run = trained_run()
    assert latest_checkpoint(tmp_path) is None
    save(tmp_path, run, step=1)
    save(tmp_path, run, step=3)
    ckpt_dir = tmp_path / "checkpoints"
    (ckpt_dir / "latest").unlink()
    assert latest_checkpoint(tmp_path) == ckpt_dir / "step_00000003"
    (ckpt_dir / "latest").write_text("step_00000009\n")  # names a missing directory
    assert latest_checkpoint(tmp_path) == ckpt_dir / "step_00000003"
    (ckpt_dir / "step_00000003" / "trainer_state.json").unlink()  # incomplete: skipped with a warning
    (ckpt_dir / "latest").write_text("step_00000003\n")
    with pytest.warns(CheckpointWarning, match="step_00000003 is broken, skipped: trainer_state.json is missing"):
        assert latest_checkpoint(tmp_path) == ckpt_dir / "step_00000001"

    path = save(tmp_path, run, step=3, again=True)  # a re-save of a step replaces it
    assert load_checkpoint(path, model=make_run(seed=1)[0], restore_rng=False).extra == {"again": True}
    assert not list(ckpt_dir.glob(".tmp-*"))


def test_failed_resave_keeps_the_existing_step(tmp_path, monkeypatch):
    run = trained_run()
    path = save(tmp_path, run, step=1, first=True)
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(src).name.startswith(".tmp-step_"):  # the rename of the new copy into place
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        save(tmp_path, run, step=1, first=False)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == path
    assert load_checkpoint(path, model=make_run(seed=1)[0], restore_rng=False).extra == {"first": True}


def test_keep_deletes_oldest(tmp_path):
    run = trained_run()
    for step in (1, 2, 3, 4):
        save(tmp_path, run, step=step, keep=2)
    assert step_dirs(tmp_path) == ["step_00000003", "step_00000004"]
    save(tmp_path, run, step=5, keep=1)
    assert step_dirs(tmp_path) == ["step_00000005"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(ValueError, match="keep"):
        save(tmp_path, run, step=6, keep=0)


def test_not_a_checkpoint_names_the_path(tmp_path):
    model = make_run()[0]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere", model=model)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty is not an intact checkpoint: manifest.json is missing"):
        load_checkpoint(empty, model=model)
    path = save(tmp_path, trained_run(), step=1)
    (path / "trainer_state.json").unlink()
    with pytest.raises(CheckpointError, match=f"{path.name} is not an intact checkpoint: trainer_state.json is miss"):
        load_checkpoint(path, model=model)


def test_state_dict_key_mismatch(tmp_path):
    path = save(tmp_path, trained_run(), step=1)
    weights = path / "model" / "model.safetensors"
    tensors = load_file(weights)
    del tensors["model.norm.weight"]
    tensors["model.extra.weight"] = torch.zeros(2)
    save_file(tensors, weights, metadata={"format": "pt"})
    checkpoint._write_manifest(path)  # a consistent checkpoint whose keys do not match
    with pytest.raises(ValueError, match=r"missing keys \['model.norm.weight'\].*unexpected keys \['model.extra"):
        load_checkpoint(path, model=make_run()[0])


def test_invalid_trainer_state_rejected_before_writing(tmp_path):
    run = trained_run()
    with pytest.raises(ValueError, match="round trip"):
        save(tmp_path, run, step=1, pair=(1, 2))
    with pytest.raises(ValueError, match="JSON"):
        save(tmp_path, run, step=1, obj=object())
    with pytest.raises(ValueError, match="step"):
        save(tmp_path, run, step=-1)
    assert not (tmp_path / "checkpoints").exists()


def test_files_load_weights_only_and_pickle_payload_refused(tmp_path):
    path = save(tmp_path, trained_run(), step=1)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pt"):
        torch.load(path / name, weights_only=True)

    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    torch.save({"state": {}, "param_groups": [], "evil": Payload()}, path / "optimizer.pt")
    model, optimizer, _ = make_run()
    with pytest.raises(CheckpointError, match="optimizer.pt"):  # the manifest notices the replaced file first
        load_checkpoint(path, model=model, optimizer=optimizer)
    checkpoint._write_manifest(path)  # whoever can replace the file can rewrite the manifest: weights_only stops it
    with pytest.raises(ValueError, match="optimizer.pt"):
        load_checkpoint(path, model=model, optimizer=optimizer)
    assert not marker.exists()
    torch.load(path / "optimizer.pt", weights_only=False)  # proof that the payload is live
    assert marker.is_dir()


# --- integrity: the manifest, fallback to the newest intact checkpoint ----------------------------------------------

def truncate_half(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def overwrite_4kb_in_the_middle(file: Path) -> None:
    """Same size, different bytes (each one inverted, so the content surely changes)."""
    data = bytearray(file.read_bytes())
    start = len(data) // 2 - 2048
    assert start > 0, "file too small for the test"
    data[start:start + 4096] = bytes(b ^ 0xFF for b in data[start:start + 4096])
    file.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated model.safetensors": ("model/model.safetensors", truncate_half,
                                    r"model/model.safetensors has \d+ bytes, the manifest says \d+"),
    "truncated optimizer.pt": ("optimizer.pt", truncate_half, r"optimizer.pt has \d+ bytes, the manifest says \d+"),
    "4 KB overwritten in model.safetensors": ("model/model.safetensors", overwrite_4kb_in_the_middle,
                                              "model/model.safetensors has the recorded size but not the recorded "
                                              "SHA-256"),
    "missing scheduler.pt": ("scheduler.pt", Path.unlink, "scheduler.pt is missing"),
}


@pytest.mark.parametrize("damage", CORRUPTIONS)
def test_a_broken_newest_checkpoint_falls_back_to_the_intact_one(tmp_path, damage):
    older = trained_run(steps=1)
    save(tmp_path, older, step=1)
    newest = save(tmp_path, trained_run(steps=2), step=2)
    rel, corrupt, problem = CORRUPTIONS[damage]
    corrupt(newest / rel)

    with pytest.warns(CheckpointWarning, match=f"checkpoint {re.escape(str(newest))} is broken, skipped: {problem}"):
        found = latest_checkpoint(tmp_path)
    assert found == tmp_path / "checkpoints" / "step_00000001"
    model, optimizer, scheduler = make_run(seed=1)
    assert load_checkpoint(found, model=model, optimizer=optimizer, scheduler=scheduler).step == 1
    assert_same_params(older[0], model)
    assert scheduler.last_epoch == 1
    with pytest.raises(CheckpointError, match=f"{newest.name} is not an intact checkpoint: {problem}"):
        load_checkpoint(newest, model=make_run(seed=1)[0])  # a direct load refuses it as well


def test_no_intact_checkpoint_is_one_clear_error(tmp_path):
    run = trained_run()
    first, second = save(tmp_path, run, step=1), save(tmp_path, run, step=2)
    truncate_half(first / "optimizer.pt")
    (second / "model" / "model.safetensors").unlink()
    with pytest.warns(CheckpointWarning) as warned:
        with pytest.raises(CheckpointError) as error:
            latest_checkpoint(tmp_path)
    assert len(warned) == 2
    message = str(error.value)
    assert message.startswith(f"{tmp_path}: no intact checkpoint to resume from")
    assert f"{second} (model/model.safetensors is missing)" in message
    assert re.search(f"{re.escape(str(first))} \\(optimizer.pt has \\d+ bytes", message)
    assert "--overwrite" in message and "\n" not in message


def test_a_checkpoint_without_a_manifest_cannot_be_verified(tmp_path):
    path = save(tmp_path, trained_run(), step=1)
    (path / "manifest.json").unlink()  # what a checkpoint of the previous format looks like
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="older than checkpoint manifests"):
        latest_checkpoint(tmp_path)
    (path / "manifest.json").write_text('{"format": 1, "files": {"optimizer.pt": {"size": "big"}}}')
    with pytest.raises(CheckpointError, match="manifest.json is not a manifest of format 1"):
        load_checkpoint(path, model=make_run()[0])


def test_the_manifest_covers_every_file_and_ignores_unlisted_ones(tmp_path):
    path = save(tmp_path, trained_run(), step=1)
    listed = set(json.loads((path / "manifest.json").read_text())["files"])
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {"manifest.json"}
    assert listed == on_disk and {"trainer_state.json", "optimizer.pt", "model/model.safetensors"} <= listed
    (path / "notes.txt").write_text("a file a person added")
    assert latest_checkpoint(tmp_path) == path  # unlisted files are not checked (and never read)


def test_sharded_weights_verify_and_load(tmp_path):
    run = trained_run()
    run[0].save_pretrained = functools.partial(run[0].save_pretrained, max_shard_size="8KB")
    path = save(tmp_path, run, step=1)
    shards = sorted(p.name for p in (path / "model").glob("*.safetensors"))
    assert len(shards) > 1 and (path / "model" / "model.safetensors.index.json").is_file()
    model = make_run(seed=1)[0]
    load_checkpoint(path, model=model, restore_rng=False)
    assert_same_params(run[0], model)
    truncate_half(path / "model" / shards[-1])
    with pytest.raises(CheckpointError, match=f"model/{shards[-1]} has"):
        load_checkpoint(path, model=model)
