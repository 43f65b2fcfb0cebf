"""Prompts in each tokenizer's chat template (oprd.rollout.prompt_format) and everywhere prompts are encoded: rollouts,
SFT, the teacher's view across tokenizers, Stage 0, the config, the trainer and `oprd bridge collect`.

Tokenizers are built here (the character one and the test BPE), a template set on a copy; no downloads.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from other_tokenizer import bpe_tokenizer
from test_trainer import TOKENIZER, fixed_rollouts, prompts, tiny_model

import oprd.bridge.collect as collect
import oprd.train.evaluate as evaluate_module
from oprd.bridge.collect import CollectSettings, collect_rows, other_tokens
from oprd.bridge.token_alignment import teacher_view
from oprd.demo.sft import sft_batch
from oprd.rollout import encode_prompts
from oprd.rollout.prompt_format import prompt_ids
from oprd.train.config import load_config
from oprd.train.trainer import Trainer

# over the characters both test tokenizers know: "<bos>1+2;= " for the character one
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['content'] }};{% endfor %}"
            "{% if add_generation_prompt %}= {% endif %}")
BPE_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }},{% endfor %}{% if add_generation_prompt %};"\
               "{% endif %}"


def with_template(tokenizer, template: str = TEMPLATE):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def chars():
    return with_template(TOKENIZER)


@pytest.fixture(scope="module")
def bpe():
    return bpe_tokenizer()


def plain(tokenizer, texts):
    return tokenizer(texts)["input_ids"]


# ----------------------------------------------------------------------------------------------- prompt_ids


def test_auto_renders_the_template_and_encodes_it_without_a_second_bos(chars):
    rendered = chars.apply_chat_template([{"role": "user", "content": "1+2"}], tokenize=False,
                                         add_generation_prompt=True)
    assert rendered == "<bos>1+2;= "  # by hand, from TEMPLATE
    ids = prompt_ids(chars, ["1+2", "34*5"])
    assert ids[0] == chars(rendered, add_special_tokens=False)["input_ids"]
    bos = chars.bos_token_id
    assert ids[0] == [bos] + chars("1+2;= ", add_special_tokens=False)["input_ids"]
    assert all(row[0] == bos and row[1] != bos for row in ids)  # the template's BOS, once
    assert ids[1] == plain(chars, ["34*5;= "])[0]


def test_without_a_template_auto_and_off_are_the_plain_encoding(chars):
    texts = ["1+2=", "34*5="]
    assert TOKENIZER.chat_template is None
    assert prompt_ids(TOKENIZER, texts) == prompt_ids(TOKENIZER, texts, "off") == plain(TOKENIZER, texts)
    assert prompt_ids(chars, texts, "off") == plain(TOKENIZER, texts)  # off ignores a template
    assert prompt_ids(chars, texts, "on") == prompt_ids(chars, texts) != plain(TOKENIZER, texts)


def test_on_without_a_template_bad_modes_and_bad_prompts_are_refused(chars):
    with pytest.raises(ValueError, match=rf"prompt_ids: `chat_template` is 'on' but the tokenizer "
                                         rf"{type(TOKENIZER).__name__} has no chat template"):
        prompt_ids(TOKENIZER, ["1+2="], "on")
    for bad in ("bogus", "", None, True):
        with pytest.raises(ValueError) as info:
            prompt_ids(chars, ["1+2="], bad)
        assert "prompt_ids: `chat_template`" in str(info.value) and repr(bad) in str(info.value)
        assert "['auto', 'on', 'off']" in str(info.value)
    for bad, shown in (("1+2=", "str"), (["1+2=", 3], "list holding ['int', 'str']"), (None, "NoneType")):
        with pytest.raises(TypeError) as info:
            prompt_ids(chars, bad)
        assert str(info.value) == f"prompt_ids: `prompts` must be a sequence of str; got {shown}"


# ----------------------------------------------------------------------------------------------- users


def test_encode_prompts_left_pads_templated_prompts(chars):
    texts = ["1+2", "345*67", "8"]
    ids, mask = encode_prompts(chars, texts, torch.device("cpu"))
    expected = prompt_ids(chars, texts)
    assert ids.shape == (3, max(len(e) for e in expected)) == mask.shape
    for row, e in zip(range(3), expected):
        pad = ids.shape[1] - len(e)
        assert ids[row, pad:].tolist() == e and mask[row].tolist() == [0] * pad + [1] * len(e)
        assert ids[row, :pad].tolist() == [chars.pad_token_id] * pad
    off, _ = encode_prompts(chars, texts, torch.device("cpu"), "off")
    assert torch.equal(off, TOKENIZER(texts, return_tensors="pt", padding=True)["input_ids"])
    right = copy.deepcopy(chars)
    right.padding_side = "right"
    with pytest.raises(ValueError, match="padding_side='right'"):
        encode_prompts(right, texts, torch.device("cpu"))
    with pytest.raises(ValueError, match="encode_prompts: `chat_template`"):
        encode_prompts(chars, texts, torch.device("cpu"), "yes")


def test_sft_batches_encode_the_prompt_as_rollouts_do(chars):
    texts, solutions = ["1+2=", "34*5="], ["3", "170"]
    for tok, mode in ((chars, "auto"), (chars, "off"), (TOKENIZER, "auto")):
        ids, mask, labels = sft_batch(tok, texts, solutions, torch.device("cpu"), mode)
        for row, (p, s) in enumerate(zip(prompt_ids(tok, texts, mode), solutions)):
            target = tok(s, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            n = int(mask[row].sum())
            assert ids[row, -n:].tolist() == p + target and n == len(p) + len(target)
            assert labels[row, -n:].tolist() == [-100] * len(p) + target
    templated = sft_batch(chars, texts, solutions, torch.device("cpu"))[0]
    assert (templated == chars.bos_token_id).sum(dim=1).tolist() == [1, 1]  # no double BOS


def test_the_teacher_renders_its_own_template_and_the_pairing_is_unchanged(bpe):
    teacher = with_template(bpe, BPE_TEMPLATE)
    rollouts = fixed_rollouts(tiny_model(0))  # the student's (character tokenizer, no template)
    texts = [p["prompt"] for p in prompts(4)]
    views = {mode: teacher_view(rollouts, TOKENIZER, teacher, texts, chat_template=mode) for mode in ("auto", "off")}
    templated, plain_ids = prompt_ids(teacher, texts), prompt_ids(teacher, texts, "off")
    assert templated != plain_ids and templated[0][0] == bpe.bos_token_id != templated[0][1]
    for mode, expected in (("auto", templated), ("off", plain_ids)):
        view = views[mode]
        for b, i in enumerate(rollouts.prompt_index.tolist()):
            row = view.input_ids[b, :view.prompt_width]
            pad = view.prompt_width - len(expected[i])
            assert row[pad:].tolist() == expected[i] and not view.attention_mask[b, :pad].any()
    auto, off = views["auto"], views["off"]
    assert torch.equal(auto.input_ids[:, auto.prompt_width:], off.input_ids[:, off.prompt_width:])
    assert torch.equal(auto.attention_mask[:, auto.prompt_width:], off.attention_mask[:, off.prompt_width:])
    assert torch.equal(auto.student_rows, off.student_rows) and auto.unpaired == off.unpaired

    def in_response(view):
        width = view.input_ids.shape[1]
        return torch.stack([view.teacher_rows // width, view.teacher_rows % width - view.prompt_width])

    assert torch.equal(in_response(auto), in_response(off)) and auto.teacher_rows.numel() > 0
    with pytest.raises(ValueError, match="teacher_view: `chat_template` is 'on'"):
        teacher_view(rollouts, TOKENIZER, bpe, texts, chat_template="on")
    with pytest.raises(ValueError, match="teacher_view: `chat_template` must be one of"):
        teacher_view(rollouts, TOKENIZER, teacher, texts, chat_template="Auto")


# ----------------------------------------------------------------------------------------------- Stage 0, config


def test_collect_rows_samples_templated_prompts_and_records_the_mode(tmp_path, chars, monkeypatch):
    seen = []
    real = collect.generate_rollouts
    monkeypatch.setattr(collect, "generate_rollouts", lambda *a, **k: seen.append((real(*a, **k), k)) or seen[-1][0])
    texts = [p["prompt"] for p in prompts(2)]
    for mode in ("auto", "off"):
        seen.clear()
        settings = CollectSettings(prompts_per_batch=2, max_new_tokens=4, rows_per_response=2, max_rows=4,
                                   chat_template=mode)
        manifest = collect_rows(tiny_model(0), tiny_model(1), chars, texts, tmp_path / mode, settings=settings)
        assert manifest["settings"]["chat_template"] == mode and seen[0][1]["chat_template"] == mode
        rollouts = seen[0][0]
        for b, i in enumerate(rollouts.prompt_index.tolist()):
            expected = prompt_ids(chars, texts, mode)[i]
            assert rollouts.input_ids[b, rollouts.prompt_width - len(expected):rollouts.prompt_width].tolist() == \
                expected
    for bad in ("bogus", None):
        with pytest.raises(ValueError, match=r"CollectSettings: `chat_template` must be one of \['auto', 'on', "
                                             r"'off'\]; got " + repr(bad)):
            CollectSettings(chat_template=bad)
    with pytest.raises(ValueError, match="other_tokens: `chat_template`"):
        other_tokens(TOKENIZER, chars, [TOKENIZER.eos_token_id], "bogus")


def test_the_config_key_defaults_to_auto_and_is_validated(tmp_path):
    from oprd.train.config import save_config

    assert load_config().data.chat_template == "auto"
    assert load_config(overrides=["data.chat_template=off"]).data.chat_template == "off"
    for text, mode in (("on", "on"), ("off", "off"), ("'on'", "on"), ("auto", "auto")):
        (tmp_path / "c.yaml").write_text(f"data: {{chat_template: {text}}}\n")  # bare on/off: YAML 1.1 booleans
        config = load_config(tmp_path / "c.yaml")
        assert config.data.chat_template == mode
        save_config(config, tmp_path / "saved.yaml")
        assert load_config(tmp_path / "saved.yaml") == config
    with pytest.raises(ValueError) as info:
        load_config(overrides=["data.chat_template=bogus"])
    assert all(s in str(info.value) for s in ("`data.chat_template`", "'bogus'", "['auto', 'on', 'off']"))
    (tmp_path / "c.yaml").write_text("data: {chat_template: 3}\n")
    with pytest.raises(TypeError, match="`data.chat_template` must be a string; got 3"):
        load_config(tmp_path / "c.yaml")


# ----------------------------------------------------------------------------------------------- trainer, CLI


def trainer(tmp_path, mode, tokenizer, **kwargs):
    config = load_config(overrides=[
        f"run.dir={tmp_path / mode}", "optim.steps=1", "run.device=cpu", "method.name=oprd", "oprd.positions=all",
        "rollout.prompts_per_step=2", "rollout.max_new_tokens=4", "eval.samples=1", "eval.max_new_tokens=4",
        f"data.chat_template={mode}"])
    return Trainer(config, tiny_model(0), tiny_model(1), tokenizer, prompts(4), prompts(2, seed=9), **kwargs)


def test_the_trainer_passes_the_mode_to_rollouts_the_teacher_view_and_evaluation(tmp_path, chars, bpe, monkeypatch):
    modes = []
    real = evaluate_module.generate_rollouts
    monkeypatch.setattr(evaluate_module, "generate_rollouts",
                        lambda *a, **k: modes.append(k["chat_template"]) or real(*a, **k))
    teacher_tok = with_template(bpe, BPE_TEMPLATE)
    for mode in ("auto", "off"):
        t = trainer(tmp_path, mode, chars, teacher_tokenizer=teacher_tok)  # OPRD: only the view reads its tokens
        texts = [p["prompt"] for p in t.stream.take(2)]
        t.stream = type(t.stream)(t.prompts, t.config.run.seed)  # the same prompts again for _rollouts
        rollouts = t._rollouts()
        for batch, tok in ((rollouts, chars), (rollouts.teacher, teacher_tok)):
            for b, i in enumerate(rollouts.prompt_index.tolist()):
                expected = prompt_ids(tok, texts, mode)[i]
                width = batch.prompt_width
                assert batch.input_ids[b, width - len(expected):width].tolist() == expected
                assert int(batch.attention_mask[b, :width].sum()) == len(expected)
        t.evaluate()
        assert modes[-1] == mode
    with pytest.raises(ValueError, match=r"config: `data.chat_template` is 'on' but the tokenizer"):
        trainer(tmp_path, "on", TOKENIZER)
    with pytest.raises(ValueError, match=r"config: `data.chat_template` is 'on'"):  # the teacher's tokenizer too
        trainer(tmp_path, "on", chars, teacher_tokenizer=bpe_tokenizer())


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from tiny_hf import save_tiny_model

    root = tmp_path_factory.mktemp("pair")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"{a}+{a}="}) + "\n" for a in range(4)))
    return ["--student", str(save_tiny_model(root / "student")), "--teacher",
            str(save_tiny_model(root / "teacher", tokenizer=False)), "--prompts", str(root / "prompts.jsonl"),
            "--max-new-tokens", "3", "--batch", "2", "--max-rows", "4", "--rows-per-response", "2"]


def test_the_collect_flag(pair, tmp_path, capsys):
    from oprd.cli.commands import main

    with pytest.raises(SystemExit) as info:
        main(["bridge", "collect", *pair, "--out", str(tmp_path / "a"), "--chat-template", "bogus"])
    assert info.value.code == 2 and "argument --chat-template: invalid choice: 'bogus'" in capsys.readouterr().err
    assert main(["bridge", "collect", *pair, "--out", str(tmp_path / "b"), "--chat-template", "on"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: oprd bridge collect: `--chat-template` is 'on' but the tokenizer")
    assert "Traceback" not in err and not (tmp_path / "b").exists()  # refused before any model loads
    assert main(["bridge", "collect", *pair, "--out", str(tmp_path / "c"), "--chat-template", "off"]) == 0
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["settings"]["chat_template"] == "off"
