"""`oprd.head_from_teacher`: the student starts from the teacher's LM head and final norm (and nothing else of it),
refused with the key's name for pairs it cannot serve, in preflight (from the configs) as in the Trainer."""

from __future__ import annotations

import pytest
import torch
from test_preflight import config_for, models  # noqa: F401 (a fixture)
from test_trainer import TOKENIZER, make_trainer, tiny_model
from transformers import LlamaConfig, LlamaForCausalLM

from oprd.cli.preflight import check_train
from oprd.train.head_transfer import check_head_transfer, copy_head_and_norm


def test_the_student_gets_the_teachers_head_and_norm_and_keeps_the_rest(tmp_path):
    trainer = make_trainer(tmp_path, **{"oprd.head_from_teacher": "true"})
    student, teacher = trainer.student, trainer.teacher
    fresh = tiny_model(0)  # the student as make_trainer built it
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight)
    assert student.lm_head.weight.data_ptr() != teacher.lm_head.weight.data_ptr()  # a copy, not the teacher's tensor
    assert not torch.equal(fresh.lm_head.weight, teacher.lm_head.weight)  # so the copy changed something
    for (name, got), want in zip(student.named_parameters(), fresh.parameters()):
        if not name.startswith(("lm_head", "model.norm")):
            assert torch.equal(got, want), name
    # the optimizer holds the student's own parameter objects, now with the copied values
    held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(student.lm_head.weight) in held
    trainer.run(progress=False)  # and it trains


def test_off_by_default_the_student_keeps_its_own_head(tmp_path):
    trainer = make_trainer(tmp_path)
    assert torch.equal(trainer.student.lm_head.weight, tiny_model(0).lm_head.weight)


def tied_model():
    config = LlamaConfig(vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def test_pairs_it_cannot_serve_are_refused_with_the_key():
    teacher = tiny_model(1)
    wide = LlamaForCausalLM(LlamaConfig(vocab_size=len(TOKENIZER), hidden_size=48, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    other_vocab = LlamaForCausalLM(LlamaConfig(vocab_size=len(TOKENIZER) + 3, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    for student, text in ((tiny_model(0), None), (tied_model(), "ties its LM head"),
                          (other_vocab, "same vocabulary size")):
        if text is None:
            copy_head_and_norm(student, teacher)
            continue
        before = student.lm_head.weight.clone()
        with pytest.raises(ValueError, match=rf"`oprd.head_from_teacher`.*{text}"):
            copy_head_and_norm(student, teacher)
        assert torch.equal(student.lm_head.weight, before)  # refused before anything was written
    with pytest.raises(ValueError, match=r"`oprd.head_from_teacher`.*equal hidden sizes; got student 32, teacher 48"):
        check_head_transfer(tiny_model(0).config, wide.config)


def test_preflight_refuses_it_from_the_configs(models, tmp_path):  # noqa: F811
    config = config_for(models, tmp_path, f"model.teacher={models['wide']}", "method.name=opd_top1",
                        "oprd.head_from_teacher=true")
    with pytest.raises(ValueError, match=r"`oprd.head_from_teacher`.*equal hidden sizes"):
        check_train(config)
    check_train(config_for(models, tmp_path, "oprd.head_from_teacher=true"))  # same width and vocabulary: fine
