"""OPRD-Bridge across tokenizers in the trainer and Stage 0: the teacher reads its own tokens of the same text, the
loss pairs each kept student position with the teacher position ending at the same byte, and OPD is refused."""

from __future__ import annotations

import pytest
import torch
from bridges import random_bridge
from other_tokenizer import bpe_tokenizer
from test_trainer import TOKENIZER, fixed_rollouts, prompts, tiny_model
from transformers import LlamaConfig, LlamaForCausalLM

import oprd.bridge.collect as collect
from oprd.bridge.collect import CollectSettings, collect_rows, other_tokens
from oprd.bridge.token_alignment import teacher_view
from oprd.capture import position_ids_from_mask
from oprd.objective import ObjectiveSpec, compute_objective, distilled_positions, plan_layers
from oprd.train.config import load_config
from oprd.train.trainer import Trainer


@pytest.fixture(scope="module")
def bpe():
    return bpe_tokenizer()


def bpe_teacher(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(3)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                                        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                                        eos_token_id=tokenizer.eos_token_id))


def hidden(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                 output_hidden_states=True).hidden_states


def test_the_bridge_loss_reads_the_teachers_own_tokens_at_the_partner_positions(bpe):
    student, teacher = tiny_model(0), bpe_teacher(bpe)
    rollouts = fixed_rollouts(student)
    texts = [p["prompt"] for p in prompts(4)]
    rollouts.teacher = view = teacher_view(rollouts, TOKENIZER, bpe, texts, student_eos_ids=[TOKENIZER.eos_token_id])
    assert 0 < view.student_rows.numel() < view.response_positions  # multi-character tokens: some positions unpaired
    bridge = random_bridge(student, teacher, rank=4)
    spec = ObjectiveSpec(method="oprd_bridge", positions="all", backend="cpu")
    result = compute_objective(spec, student, teacher, rollouts, plan_layers(spec, student, teacher, bridge))

    rows, weights = distilled_positions(spec, rollouts)
    assert set(rows.tolist()) <= set(view.student_rows.tolist()) and rows.numel() == view.student_rows.numel()
    partner = dict(zip(view.student_rows.tolist(), view.teacher_rows.tolist()))
    t_rows = torch.tensor([partner[r] for r in rows.tolist()])
    s_states = hidden(student, rollouts.input_ids, rollouts.attention_mask)
    with torch.no_grad():
        t_states = hidden(teacher, view.input_ids, view.attention_mask)
    per_layer = []
    for i, (s_index, slot) in enumerate(zip(bridge.student_layers, bridge.layer_map)):
        h_s = s_states[s_index].reshape(-1, 32)[rows]
        h_t = t_states[bridge.teacher_layers[slot]].reshape(-1, 48)[t_rows]
        z_s = torch.nn.functional.normalize(h_s @ bridge.proj_s[i].T, dim=-1)
        z_t = torch.nn.functional.normalize((h_t - bridge.mean_t[slot]) @ bridge.proj_t[slot].T, dim=-1)
        per_layer.append((weights * ((z_s - z_t) ** 2).sum(-1)).sum())
    expected = spec.bridge_coefficient * torch.stack(per_layer).mean()
    torch.testing.assert_close(result.loss.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    assert result.metrics["bridge/unpaired_share"] == pytest.approx(view.unpaired / view.response_positions)


def trainer_config(tmp_path, method, bridge_file, steps=2):
    return load_config(overrides=[
        f"run.dir={tmp_path / 'run'}", f"optim.steps={steps}", "run.device=cpu", f"method.name={method}",
        f"bridge.path={bridge_file}", "rollout.prompts_per_step=2", "rollout.max_new_tokens=10",
        "oprd.positions=all", "data.answer_field="])


def test_the_trainer_builds_each_batchs_teacher_view_and_refuses_opd(tmp_path, bpe):
    from oprd.bridge import save_bridge

    student, teacher = tiny_model(0), bpe_teacher(bpe)
    bridge_file = save_bridge(random_bridge(student, teacher, rank=3), tmp_path / "bridge.safetensors")
    with pytest.raises(ValueError, match=r"tokenizer is not the student's.*\['opd_top1'\]"):
        Trainer(trainer_config(tmp_path, "opd_top1", bridge_file), student, teacher, TOKENIZER, prompts(8),
                teacher_tokenizer=bpe)
    trainer = Trainer(trainer_config(tmp_path, "oprd_bridge", bridge_file), student, teacher, TOKENIZER,
                      prompts(8), teacher_tokenizer=bpe)
    batch = trainer._rollouts()
    assert batch.teacher is not None and batch.teacher.input_ids.max() < len(bpe)
    last = trainer.run(progress=False)
    assert 0 < last["bridge/unpaired_share"] < 1 and "loss/oprd_bridge" in last


def test_collect_reads_the_teacher_on_its_own_tokens(tmp_path, bpe, monkeypatch):
    student, teacher = tiny_model(0, layers=3), bpe_teacher(bpe)
    seen = []
    real = collect.generate_rollouts
    monkeypatch.setattr(collect, "generate_rollouts", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    texts = [p["prompt"] for p in prompts(6)]
    settings = CollectSettings(prompts_per_batch=3, max_new_tokens=10, rows_per_response=4, max_rows=100)
    pairing = other_tokens(TOKENIZER, bpe, [TOKENIZER.eos_token_id])
    manifest = collect_rows(student, teacher, TOKENIZER, texts, tmp_path / "rows", settings=settings,
                            pairing=pairing)
    from safetensors.torch import load_file

    for k, rollouts in enumerate(seen):
        shard = load_file(tmp_path / "rows" / f"rows-{k:05d}.safetensors")
        view = teacher_view(rollouts, TOKENIZER, bpe, texts[3 * k:3 * k + 3], student_eos_ids=[TOKENIZER.eos_token_id])
        partner = dict(zip(view.student_rows.tolist(), view.teacher_rows.tolist()))
        assert [partner[s] for s in shard["positions.student"].tolist()] == shard["positions.teacher"].tolist()
        with torch.no_grad():
            hs_s = hidden(student, rollouts.input_ids, rollouts.attention_mask)
            hs_t = hidden(teacher, view.input_ids, view.attention_mask)
        for s_index, t_index in zip(manifest["student_layers"], manifest["teacher_layers"]):
            torch.testing.assert_close(shard[f"student.{s_index}"],
                                       hs_s[s_index].reshape(-1, 32)[shard["positions.student"]])
            torch.testing.assert_close(shard[f"teacher.{s_index}"],
                                       hs_t[t_index].reshape(-1, 48)[shard["positions.teacher"]])
    assert manifest["rows"] > 0


def test_the_cli_uses_the_teachers_tokenizer_only_when_its_vocabulary_differs(tmp_path, bpe):
    from oprd.cli.loading import teacher_tokenizer_for

    assert teacher_tokenizer_for(TOKENIZER, str(tmp_path)) is None  # no tokenizer files: the student's ids
    TOKENIZER.save_pretrained(tmp_path / "same")
    assert teacher_tokenizer_for(TOKENIZER, str(tmp_path / "same")) is None
    bpe.save_pretrained(tmp_path / "other")
    other = teacher_tokenizer_for(TOKENIZER, str(tmp_path / "other"))
    assert other is not None and other.get_vocab() == bpe.get_vocab() and other.padding_side == "left"


def test_rollouts_with_a_teacher_view_are_not_concatenated(bpe):
    from oprd.rollout import concat_rollouts

    rollouts = fixed_rollouts(tiny_model(0), n_prompts=2)
    rollouts.teacher = teacher_view(rollouts, TOKENIZER, bpe, [p["prompt"] for p in prompts(2)])
    with pytest.raises(ValueError, match="cannot be concatenated"):
        concat_rollouts([rollouts, rollouts], TOKENIZER.pad_token_id)
