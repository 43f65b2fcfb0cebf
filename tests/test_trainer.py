"""The trainer on tiny random models and the embedded arithmetic task (no downloads): every method learns on a fixed
batch, the combined objective is the sum of its parts, the loop logs and checkpoints, and a resumed run reproduces
the uninterrupted one."""

from __future__ import annotations

import json
import random

import pytest
import torch
from bridges import bridge_for
from transformers import LlamaConfig, LlamaForCausalLM

import oprd_kernels
from oprd.objective import METHODS, ObjectiveSpec, compute_objective, plan_layers
from oprd.rollout import generate_rollouts
from oprd.tasks import ArithmeticTask
from oprd.tasks.tokenizers import build_char_tokenizer
from oprd.train.config import load_config
from oprd.train.trainer import Trainer, warmup_cosine

TOKENIZER = build_char_tokenizer()


def tiny_model(seed: int, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=TOKENIZER.pad_token_id, bos_token_id=TOKENIZER.bos_token_id,
                         eos_token_id=TOKENIZER.eos_token_id)
    return LlamaForCausalLM(config)


def prompts(n: int = 32, seed: int = 0) -> list[dict]:
    return [{"prompt": e.prompt, "answer": e.answer} for e in ArithmeticTask(2).sample(n, random.Random(seed))]


def fixed_rollouts(student, n_prompts=4):
    torch.manual_seed(0)
    return generate_rollouts(student, TOKENIZER, [p["prompt"] for p in prompts(n_prompts)], responses_per_prompt=2,
                             max_new_tokens=12, temperature=1.0, top_p=1.0)


def divergences(student, teacher, rollouts, spec, plan) -> dict[str, float]:
    """What each method should lower on a fixed batch: the OPRD loss, and the exact reverse KL between the student's
    and the teacher's next-token distributions on the response tokens (what every OPD variant estimates)."""
    from oprd.capture import position_ids_from_mask

    ids, mask = rollouts.input_ids, rollouts.attention_mask
    cols, resp = rollouts.response_logit_slice(), rollouts.response_mask[:, rollouts.prompt_width:]
    with torch.no_grad():
        s = student(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[:, cols]
        t = teacher(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[:, cols]
        out = {"kl": float(oprd_kernels.reference.full_vocab_opd_loss(s, t, resp))}
        if spec.uses_oprd:
            oprd_only = ObjectiveSpec(method="oprd", positions=spec.positions, loss_type=spec.loss_type)
            out["oprd"] = float(compute_objective(oprd_only, student, teacher, rollouts, plan).loss)
        if spec.uses_bridge:
            bridge_only = ObjectiveSpec(method="oprd_bridge", positions=spec.positions)
            out["bridge"] = float(compute_objective(bridge_only, student, teacher, rollouts, plan).loss)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_every_method_lowers_what_it_distils_on_a_fixed_batch(method):
    student, teacher = tiny_model(0), tiny_model(1, layers=3)
    spec = ObjectiveSpec(method=method, topk=4, positions="all", loss_type="mse", backend="cpu")
    plan = plan_layers(spec, student, teacher, bridge_for(spec, student, teacher))
    rollouts = fixed_rollouts(student)
    optimizer = torch.optim.AdamW(student.parameters(), lr=2e-3)
    before = divergences(student, teacher, rollouts, spec, plan)
    for _ in range(10):
        result = compute_objective(spec, student, teacher, rollouts, plan)
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
    after = divergences(student, teacher, rollouts, spec, plan)
    watched = "oprd" if spec.uses_oprd else "bridge" if spec.uses_bridge else "kl"
    assert after[watched] < 0.9 * before[watched], (before, after)
    cosine = "rep/bridge_cosine" if spec.uses_bridge else "rep/cosine_similarity"
    assert cosine in result.metrics and "loss/total" in result.metrics


def test_combined_objective_is_opd_plus_mu_times_oprd():
    student, teacher = tiny_model(0), tiny_model(1)
    rollouts = fixed_rollouts(student)
    common = dict(topk=4, positions="last_k", k=5, loss_type="nmse", backend="reference")
    parts = {}
    for method in ("oprd", "opd_top1", "oprd+opd"):
        spec = ObjectiveSpec(method=method, mu=2.5, **common)
        parts[method] = compute_objective(spec, student, teacher, rollouts, plan_layers(spec, student, teacher))
    combined = parts["oprd+opd"].loss
    torch.testing.assert_close(combined, parts["opd_top1"].loss + 2.5 * parts["oprd"].loss, rtol=1e-6, atol=1e-7)
    grads = {m: torch.autograd.grad(parts[m].loss, list(student.parameters()), allow_unused=True)
             for m in parts}
    for g_c, g_opd, g_oprd in zip(grads["oprd+opd"], grads["opd_top1"], grads["oprd"]):
        if g_c is not None:
            want = (g_opd if g_opd is not None else 0) + 2.5 * (g_oprd if g_oprd is not None else 0)
            torch.testing.assert_close(g_c, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("opd_impl", ["fused", "naive"])
def test_opd_terms_are_the_reference_losses_on_response_logits(opd_impl):
    student, teacher = tiny_model(0), tiny_model(1)
    rollouts = fixed_rollouts(student)
    cols = rollouts.response_logit_slice()
    mask = rollouts.response_mask[:, rollouts.prompt_width:]
    ids, attention = rollouts.input_ids, rollouts.attention_mask
    from oprd.capture import position_ids_from_mask

    with torch.no_grad():
        s = student(input_ids=ids, attention_mask=attention, position_ids=position_ids_from_mask(attention)).logits
        t = teacher(input_ids=ids, attention_mask=attention, position_ids=position_ids_from_mask(attention)).logits
        for method, want in [
            ("opd_top1", oprd_kernels.reference.sampled_token_opd_loss(s[:, cols], t[:, cols], rollouts.responses,
                                                                       mask)),
            ("opd_topk", oprd_kernels.reference.topk_opd_loss(s[:, cols], t[:, cols], mask, k=3)),
            ("opd_full", oprd_kernels.reference.full_vocab_opd_loss(s[:, cols], t[:, cols], mask)),
        ]:
            spec = ObjectiveSpec(method=method, topk=3, opd_impl=opd_impl)
            got = compute_objective(spec, student, teacher, rollouts, plan_layers(spec, student, teacher))
            torch.testing.assert_close(got.loss, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["opd_top1", "opd_topk", "opd_full", "oprd+opd"])
def test_fused_opd_matches_the_naive_objective_in_loss_gradients_and_metrics(method):
    student, teacher = tiny_model(0), tiny_model(1, layers=3)
    rollouts = fixed_rollouts(student)
    results, grads = {}, {}
    for impl in ("fused", "naive"):
        spec = ObjectiveSpec(method=method, topk=4, positions="last_k", k=5, backend="cpu", opd_impl=impl)
        results[impl] = compute_objective(spec, student, teacher, rollouts, plan_layers(spec, student, teacher))
        grads[impl] = torch.autograd.grad(results[impl].loss, list(student.parameters()), allow_unused=True)
    torch.testing.assert_close(results["fused"].loss, results["naive"].loss, rtol=1e-5, atol=1e-6)
    named = [n for n, _ in student.named_parameters()]
    for name, g_f, g_n in zip(named, grads["fused"], grads["naive"]):
        assert (g_f is None) == (g_n is None), name
        if g_f is not None:
            torch.testing.assert_close(g_f, g_n, rtol=1e-4, atol=1e-6, msg=name)
    assert any("lm_head" in n or "embed" in n for n, g in zip(named, grads["fused"]) if g is not None and g.any())
    assert results["fused"].metrics.keys() == results["naive"].metrics.keys()
    for key, value in results["naive"].metrics.items():
        assert results["fused"].metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_fused_opd_refuses_an_lm_head_with_a_bias():
    student, teacher = tiny_model(0), tiny_model(1)
    student.lm_head.bias = torch.nn.Parameter(torch.zeros(student.lm_head.out_features))
    spec = ObjectiveSpec(method="opd_top1")
    with pytest.raises(ValueError, match="bias"):
        compute_objective(spec, student, teacher, fixed_rollouts(teacher), plan_layers(spec, student, teacher))
    with pytest.raises(ValueError, match="opd_impl"):
        ObjectiveSpec(method="opd_top1", opd_impl="fast")


def test_warmup_cosine_schedule():
    f = warmup_cosine(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)


def make_trainer(tmp_path, steps=4, save_every=2, method="oprd+opd", **overrides):
    config = load_config(overrides=[
        f"run.dir={tmp_path / 'run'}", f"optim.steps={steps}", f"run.save_every={save_every}", "run.device=cpu",
        f"method.name={method}", "method.topk=4", "rollout.prompts_per_step=3", "rollout.responses_per_prompt=2",
        "rollout.max_new_tokens=10", "oprd.positions=all", "optim.lr=1e-3", "eval.every=2", "eval.samples=2",
        "eval.max_new_tokens=10", "data.eval_size=4", *[f"{k}={v}" for k, v in overrides.items()]])
    task = ArithmeticTask(2)
    return Trainer(config, tiny_model(0), tiny_model(1), TOKENIZER, prompts(40), prompts(4, seed=9),
                   grader=task.grade)


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timings(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "memory/"))} for r in rows]


def test_the_loop_logs_evaluates_and_checkpoints(tmp_path):
    trainer = make_trainer(tmp_path)
    last = trainer.run(progress=False)
    rows = read_metrics(trainer.metrics_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert "eval/accuracy" in rows[1] and "eval/accuracy" in rows[3] and "eval/accuracy" not in rows[0]
    assert {"loss/opd", "loss/oprd", "rep/cosine_similarity", "opd/reward", "entropy/student", "lr",
            "time/tokens_per_s", "response/length"} <= set(rows[0])
    assert last["step"] == 4
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_00000002", "step_00000004"]
    assert (tmp_path / "run" / "config.yaml").exists()


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    straight = make_trainer(tmp_path / "a")
    straight.run(progress=False)

    interrupted = make_trainer(tmp_path / "b")
    real_step = interrupted.train_step

    def crash_after_two_steps(**kwargs):
        if interrupted.step == 2:  # the checkpoint of step 2 is written; the process dies before step 3 ends
            raise KeyboardInterrupt
        return real_step(**kwargs)

    interrupted.train_step = crash_after_two_steps
    with pytest.raises(KeyboardInterrupt):
        interrupted.run(progress=False)
    resumed = make_trainer(tmp_path / "b")
    resumed.run(resume=True, progress=False)
    assert without_timings(read_metrics(resumed.metrics_path)) == without_timings(read_metrics(straight.metrics_path))
    for (name, a), b in zip(straight.student.named_parameters(), resumed.student.parameters()):
        assert torch.equal(a, b), name


def wide_teacher(seed: int = 1) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(TOKENIZER), hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=TOKENIZER.pad_token_id, bos_token_id=TOKENIZER.bos_token_id,
                         eos_token_id=TOKENIZER.eos_token_id)
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("method", ["opd_top1", "opd_topk", "opd_full"])
def test_opd_trains_with_a_teacher_of_another_width(tmp_path, method):
    config = load_config(overrides=[f"run.dir={tmp_path / 'run'}", "optim.steps=2", "run.device=cpu",
                                    f"method.name={method}", "method.topk=4", "rollout.prompts_per_step=2",
                                    "rollout.max_new_tokens=8", "optim.lr=1e-3"])
    trainer = Trainer(config, tiny_model(0), wide_teacher(), TOKENIZER, prompts(8))
    last = trainer.run(progress=False)
    assert last["step"] == 2 and last["loss/opd"] == last["loss/opd"]  # trained, finite
    assert not any(k.startswith("rep/cosine") for k in last)  # no diagnostic across widths


@pytest.mark.parametrize("method", ["oprd", "oprd+opd"])
def test_oprd_vanilla_refuses_a_teacher_of_another_width_before_any_model_work(method):
    spec = ObjectiveSpec(method=method)
    with pytest.raises(ValueError, match=r"`model.teacher` has hidden size 48 and `model.student` 32.*Bridge"):
        plan_layers(spec, tiny_model(0), wide_teacher())
