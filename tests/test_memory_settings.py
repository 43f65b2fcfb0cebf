"""The 7B settings (oprd.train.optim, docs/trainer.md "Memory plan"): BF16AdamW is torch's AdamW in fp32 moments with
unbiased stochastic rounding onto bf16 weights, deterministic across replicas and across a state-dict round trip;
gradient checkpointing changes no loss or gradient; the trainer applies the settings and decodes under its autocast."""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_trainer import TOKENIZER, fixed_rollouts, prompts, tiny_model

from oprd.objective import ObjectiveSpec, compute_objective, plan_layers
from oprd.train.config import TrainConfig
from oprd.train.optim import BF16AdamW, build_optimizer, stochastic_round_to_bf16, uses_gradient_checkpointing
from oprd.train.trainer import Trainer


def bf16_neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    down = (x.view(torch.int32) & -65536).view(torch.float32)  # magnitude truncated
    up = ((x.view(torch.int32) & -65536) + 65536).view(torch.float32)
    return down, up


def test_stochastic_rounding_brackets_and_is_unbiased():
    torch.manual_seed(0)
    x = torch.randn(1000) * 10
    down, up = bf16_neighbours(x)
    rounded = stochastic_round_to_bf16(x, torch.Generator().manual_seed(1)).float()
    assert bool(((rounded == down) | (rounded == up)).all())
    value = torch.full((20000,), 1.0 + 0.3 * 2 ** -7)  # 0.3 of a bf16 ulp above 1.0 (ulp 2^-7 there)
    mean = stochastic_round_to_bf16(value, torch.Generator().manual_seed(2)).float().mean()
    assert float(mean) == pytest.approx(float(value[0]), abs=0.02 * 2 ** -7)
    negative = stochastic_round_to_bf16(-value, torch.Generator().manual_seed(2)).float().mean()
    assert float(negative) == pytest.approx(-float(value[0]), abs=0.02 * 2 ** -7)


def model_and_grads(dtype: torch.dtype) -> tuple[torch.nn.Linear, list[torch.Tensor]]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8).to(dtype)
    return layer, [torch.randn(8, 16), torch.randn(8)]


def step(optimizer, layer, grads):
    for p, g in zip(layer.parameters(), grads):
        p.grad = g.to(p.dtype)
    optimizer.step()


@pytest.mark.parametrize("chunk", [1 << 20, 7], ids=["whole", "chunks of 7"])
def test_bf16_adamw_is_torchs_adamw_on_fp32_weights(monkeypatch, chunk):
    monkeypatch.setattr("oprd.train.optim._CHUNK", chunk)
    a, grads = model_and_grads(torch.float32)
    b, _ = model_and_grads(torch.float32)
    ours = BF16AdamW(a.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    theirs = torch.optim.AdamW(b.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    for scale in (1.0, -0.5, 2.0):
        step(ours, a, [g * scale for g in grads])
        step(theirs, b, [g * scale for g in grads])
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_bf16_weights_keep_fp32_moments_and_round_alike_on_every_replica():
    want, grads = model_and_grads(torch.bfloat16)  # the same bf16 start, stepped in fp32 without rounding
    want.float()
    step(torch.optim.AdamW(want.parameters(), lr=1e-2), want, grads)
    replicas = []
    for _ in range(2):
        layer, _ = model_and_grads(torch.bfloat16)
        optimizer = BF16AdamW(layer.parameters(), lr=1e-2, seed=5)
        step(optimizer, layer, grads)
        replicas.append((layer, optimizer))
    (a, opt), (b, _) = replicas
    for p, q, w in zip(a.parameters(), b.parameters(), want.parameters()):
        assert p.dtype == torch.bfloat16 and torch.equal(p, q)  # one rounding stream per step and parameter
        down, up = bf16_neighbours(w.detach())  # the fp32 result's two bf16 neighbours (magnitude down / up)
        low, high = torch.minimum(down, up), torch.maximum(down, up)
        assert bool(((p.float() >= low - 1e-6 * low.abs()) & (p.float() <= high + 1e-6 * high.abs())).all())
    assert {v.dtype for s in opt.state.values() for k, v in s.items() if k != "step"} == {torch.float32}
    fresh_layer, _ = model_and_grads(torch.bfloat16)
    fresh = BF16AdamW(fresh_layer.parameters(), lr=1e-2, seed=5)
    fresh.load_state_dict(opt.state_dict())  # torch's Optimizer would cast the moments to bf16 here
    assert {v.dtype for s in fresh.state.values() for k, v in s.items() if k != "step"} == {torch.float32}


def test_the_optimizer_follows_the_settings():
    fp32 = torch.nn.Linear(2, 2)
    assert type(build_optimizer(fp32.parameters(), "adamw", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0,
                                seed=0)) is torch.optim.AdamW
    bf16 = torch.nn.Linear(2, 2).to(torch.bfloat16)
    assert isinstance(build_optimizer(bf16.parameters(), "adamw", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0,
                                      seed=0), BF16AdamW)
    small = tiny_model(0)
    assert not uses_gradient_checkpointing("auto", small) and uses_gradient_checkpointing("on", small)
    assert not uses_gradient_checkpointing("off", small)


def test_gradient_checkpointing_changes_no_loss_or_gradient():
    student, teacher = tiny_model(0, 3), tiny_model(1, 3)
    spec = ObjectiveSpec(method="oprd+opd", positions="last_k", k=4)
    plan = plan_layers(spec, student, teacher)
    rollouts = fixed_rollouts(student)
    out = {}
    for on in (False, True):
        if on:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        student.train()
        loss = compute_objective(spec, student, teacher, rollouts, plan).loss
        loss.backward()
        out[on] = (loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None})
        student.zero_grad(set_to_none=True)
    assert student.is_gradient_checkpointing
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-6, atol=1e-7)
    assert out[True][1].keys() == out[False][1].keys()
    for name, grad in out[False][1].items():
        torch.testing.assert_close(out[True][1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_the_trainer_applies_the_settings_and_decodes_under_its_autocast(tmp_path, monkeypatch):
    config = TrainConfig()
    config.optim.param_dtype, config.optim.gradient_checkpointing, config.optim.steps = "bf16", "on", 1
    config.rollout.prompts_per_step, config.rollout.max_new_tokens = 2, 6
    config.run.device, config.run.dir, config.optim.lr = "cpu", str(tmp_path / "run"), 1e-2
    trainer = Trainer(config, tiny_model(0, 2), tiny_model(1, 2), TOKENIZER, prompts(4))
    assert {p.dtype for p in trainer.student.parameters()} == {torch.bfloat16}
    assert trainer.student.is_gradient_checkpointing and isinstance(trainer.optimizer, BF16AdamW)
    entered = []

    @contextlib.contextmanager
    def recording():
        entered.append(True)
        yield

    monkeypatch.setattr(trainer, "_autocast", recording)
    before = [p.detach().clone() for p in trainer.student.parameters()]
    metrics = trainer.train_step()
    assert len(entered) >= 2  # the rollouts' generation, then the update's forward
    assert torch.isfinite(torch.tensor(metrics["loss/total"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.student.parameters()))


def test_adamw_8bit_quantises_the_moments_and_resumes_from_its_saved_state_exactly(tmp_path):
    from torchao.optim.subclass_8bit import OptimState8bit

    from oprd.runs.checkpoint_files import load_pt

    def layer_and_optimizer():
        torch.manual_seed(0)
        layer = torch.nn.Linear(128, 64, bias=False).to(torch.bfloat16)  # 8192 weights: quantised in blocks
        return layer, build_optimizer(layer.parameters(), "adamw_8bit", lr=1e-2, betas=(0.9, 0.99),
                                      weight_decay=0.0, seed=0)

    grads = [[torch.randn(64, 128)] for _ in range(2)]
    layer, optimizer = layer_and_optimizer()
    torch.manual_seed(1)
    step(optimizer, layer, grads[0])
    assert isinstance(optimizer.state[layer.weight]["exp_avg"], OptimState8bit)
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    weights = [p.detach().clone() for p in layer.parameters()]
    torch.manual_seed(2)
    step(optimizer, layer, grads[1])
    resumed, fresh = layer_and_optimizer()
    with torch.no_grad():
        for p, w in zip(resumed.parameters(), weights):
            p.copy_(w)
    fresh.load_state_dict(load_pt(tmp_path / "optimizer.pt"))  # through the checkpoint's weights-only load
    torch.manual_seed(2)
    step(fresh, resumed, grads[1])
    for p, q in zip(layer.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
