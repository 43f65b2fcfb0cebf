"""oprd.integrations.trl: OPRD inside TRL's on-policy DistillationTrainer, on tiny local models (no downloads). The
loss of a batch equals `oprd train`'s on the same rollouts (values and gradients), accumulation is the global
token-mean, a short run lowers the OPRD loss, and a run resumed from TRL's own checkpoint continues exactly."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_trainer import TOKENIZER, fixed_rollouts, prompts
from transformers import LlamaConfig, LlamaForCausalLM

from oprd.objective import ObjectiveSpec, compute_objective, plan_layers
from oprd.rollout import concat_rollouts

trl = pytest.importorskip("trl", minversion="1.16")  # installed by the test extra: this skip means a broken install
datasets = pytest.importorskip("datasets")

from oprd.integrations.trl import OPRDTrainer, rollouts_from  # noqa: E402


def model(seed: int, layers: int, hidden: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(TOKENIZER), hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64, pad_token_id=TOKENIZER.pad_token_id,
                                        bos_token_id=TOKENIZER.bos_token_id, eos_token_id=TOKENIZER.eos_token_id))


def make_trainer(tmp_path, student, teacher, spec, bridge=None, **config):
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                    max_completion_length=10, report_to=[], use_cpu=True, logging_steps=1, save_strategy="no",
                    learning_rate=1e-3, seed=0, disable_tqdm=True)
    settings.update(config)
    dataset = datasets.Dataset.from_list([{"prompt": p["prompt"]} for p in prompts(32)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return OPRDTrainer(model=student, teacher_model=teacher, args=trl.DistillationConfig(**settings),
                           train_dataset=dataset, processing_class=TOKENIZER, objective=spec, bridge=bridge)


def trl_inputs(rollouts) -> dict:
    width = rollouts.prompt_width
    return {"prompt_ids": rollouts.input_ids[:, :width], "prompt_mask": rollouts.attention_mask[:, :width],
            "completion_ids": rollouts.input_ids[:, width:],
            "completion_mask": rollouts.response_mask[:, width:]}


def gradients(module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("method", ["oprd", "oprd+opd"])
def test_a_batchs_loss_and_gradients_equal_oprds_own_on_the_same_rollouts(tmp_path, method):
    student, teacher = model(0, 2), model(1, 3)
    spec = ObjectiveSpec(method=method, positions="last_k", k=5, mu=2.0)
    trainer = make_trainer(tmp_path, student, teacher, spec)
    rollouts = fixed_rollouts(student)
    assert torch.equal(rollouts_from(trl_inputs(rollouts)).response_mask, rollouts.response_mask)
    trainer.model.train()
    got = trainer.compute_loss(trainer.model, trl_inputs(rollouts))
    got.backward()
    got_grads = gradients(student)
    want = compute_objective(spec, student, teacher, rollouts, plan_layers(spec, student, teacher)).loss
    want.backward()
    want_grads = gradients(student)
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-6, atol=1e-7)
    assert got_grads.keys() == want_grads.keys() and got_grads
    for name, g in want_grads.items():
        torch.testing.assert_close(got_grads[name], g, rtol=1e-5, atol=1e-7, msg=name)
    metrics = trainer._metrics["train"]
    assert metrics["loss/total"] == [pytest.approx(float(want.detach()))] and "rep/cosine_similarity" in metrics


def test_a_bridge_method_trains_a_teacher_of_another_width_through_trl(tmp_path):
    from bridges import random_bridge

    student, teacher = model(0, 2), model(1, 3, hidden=48)
    bridge = random_bridge(student, teacher, rank=4)
    spec = ObjectiveSpec(method="oprd_bridge", positions="last_k", k=5)
    trainer = make_trainer(tmp_path, student, teacher, spec, bridge=bridge)
    rollouts = fixed_rollouts(student)
    trainer.model.train()
    got = trainer.compute_loss(trainer.model, trl_inputs(rollouts))
    want = compute_objective(spec, student, teacher, rollouts, plan_layers(spec, student, teacher, bridge)).loss
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-6, atol=1e-7)
    assert "rep/bridge_cosine" in trainer._metrics["train"]


def test_accumulated_micro_batches_add_up_to_the_one_batch_loss(tmp_path):
    student, teacher = model(0, 2), model(1, 3)
    spec = ObjectiveSpec(method="oprd", positions="all")
    trainer = make_trainer(tmp_path, student, teacher, spec)
    first, second = fixed_rollouts(student, n_prompts=3), fixed_rollouts(student, n_prompts=2)
    per_row = [float(r.response_mask.sum()) / r.input_ids.shape[0] for r in (first, second)]
    assert per_row[0] != per_row[1]  # unequal lengths: a mean of the two batches' means would differ
    trainer._buffered_inputs = [trl_inputs(first), trl_inputs(second)]
    trainer.model.train()
    total = sum(trainer.compute_loss(trainer.model, trl_inputs(r)) for r in (first, second))
    whole = concat_rollouts([first, second], TOKENIZER.pad_token_id)
    want = compute_objective(spec, student, teacher, whole, plan_layers(spec, student, teacher)).loss
    torch.testing.assert_close(total.detach(), want.detach(), rtol=1e-5, atol=1e-7)
    assert sum(trainer._metrics["train"]["loss/oprd"]) / 2 == pytest.approx(float(want), rel=1e-5)  # logged: window
    # the next generation's window is counted afresh (its total is cached per buffer, not kept across them)
    third = fixed_rollouts(student, n_prompts=1)
    trainer._buffered_inputs = [trl_inputs(second), trl_inputs(third)]
    total = sum(trainer.compute_loss(trainer.model, trl_inputs(r)) for r in (second, third))
    whole = concat_rollouts([second, third], TOKENIZER.pad_token_id)
    want = compute_objective(spec, student, teacher, whole, plan_layers(spec, student, teacher)).loss
    torch.testing.assert_close(total.detach(), want.detach(), rtol=1e-5, atol=1e-7)


def test_a_short_run_lowers_the_oprd_loss(tmp_path):
    student, teacher = model(0, 2), model(1, 3)
    spec = ObjectiveSpec(method="oprd", positions="all")
    plan = plan_layers(spec, student, teacher)
    held = fixed_rollouts(model(0, 2))  # a fixed batch of the initial student's answers
    before = float(compute_objective(spec, student, teacher, held, plan).loss)
    trainer = make_trainer(tmp_path, student, teacher, spec, max_steps=8, gradient_accumulation_steps=2)
    trainer.train()
    after = float(compute_objective(spec, student, teacher, held, plan).loss)
    assert after < 0.8 * before
    logged = [h["loss/oprd"] for h in trainer.state.log_history if "loss/oprd" in h]
    assert len(logged) == 8 and logged[-1] < logged[0]


def test_a_run_resumed_from_trls_checkpoint_continues_exactly(tmp_path):
    spec = ObjectiveSpec(method="oprd", positions="all")
    teacher = model(1, 3)
    full = make_trainer(tmp_path / "full", model(0, 2), teacher, spec, max_steps=4, save_strategy="steps",
                        save_steps=2)
    full.train()
    checkpoint = tmp_path / "full" / "out" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "trainer_state.json").is_file()
    resumed = make_trainer(tmp_path / "full", model(5, 2), teacher, spec, max_steps=4, save_strategy="steps",
                           save_steps=2)  # other initial weights: the checkpoint must replace them
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    losses = {h["step"]: h["loss"] for h in full.state.log_history if "loss" in h}
    again = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h}
    assert again.keys() >= {3, 4} and all(again[s] == losses[s] for s in (3, 4))


def test_a_bad_objective_argument_is_refused(tmp_path):
    with pytest.raises(TypeError, match="`objective` must be an oprd.objective.ObjectiveSpec"):
        make_trainer(tmp_path, model(0, 2), model(1, 3), {"method": "oprd"})
    with pytest.raises(ValueError, match="oprd_bridge"):
        make_trainer(tmp_path, model(0, 2), model(1, 3), ObjectiveSpec(method="oprd_bridge"))
