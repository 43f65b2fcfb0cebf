"""The objective's parts: the method table, the combined objective with each OPD variant, and metrics only on
logging steps (no host reads for them otherwise)."""

from __future__ import annotations

import pytest
import torch
from bridges import bridge_for
from host_reads import HostReads
from test_trainer import fixed_rollouts, make_trainer, read_metrics, tiny_model

from oprd.objective import (
    METHOD_TERMS,
    METHODS,
    OPD_VARIANTS,
    ObjectiveSpec,
    compute_objective,
    plan_layers,
)
from oprd.objective.spec import ALIGNING_METHODS
from oprd.train.config import load_config
from oprd.train.trainer import objective_spec


def test_every_method_has_a_row_of_terms():
    assert set(METHOD_TERMS) == set(METHODS)
    # the width check before any model loads (oprd.objective.pairing) knows the state-aligning methods from one list
    assert {m for m, uses in METHOD_TERMS.items() if any(u.term.name == "oprd" for u in uses)} == set(ALIGNING_METHODS)
    spec = ObjectiveSpec(method="oprd+opd", mu=2.5, coefficient=7.0)
    combined = {use.term.name: use.coefficient(spec) for use in METHOD_TERMS["oprd+opd"]}
    assert combined == {"oprd": 2.5, "opd": 1.0}
    assert [(u.term.name, u.coefficient(spec)) for u in METHOD_TERMS["oprd"]] == [("oprd", 7.0)]
    for variant in OPD_VARIANTS:
        assert [u.term.name for u in METHOD_TERMS[variant]] == ["opd"]


@pytest.mark.parametrize("impl", ["fused", "naive"])
@pytest.mark.parametrize("variant", OPD_VARIANTS)
def test_the_combined_objective_takes_any_opd_variant(variant, impl):
    student, teacher = tiny_model(0), tiny_model(1, layers=3)
    rollouts = fixed_rollouts(student)
    common = dict(topk=3, positions="last_k", k=5, loss_type="nmse", backend="cpu", opd_impl=impl)
    parts = {}
    for method, extra in (("oprd", {}), (variant, {}), ("oprd+opd", {"opd_variant": variant})):
        spec = ObjectiveSpec(method=method, mu=2.5, **common, **extra)
        parts[method] = compute_objective(spec, student, teacher, rollouts, plan_layers(spec, student, teacher))
    want = parts[variant].loss + 2.5 * parts["oprd"].loss
    torch.testing.assert_close(parts["oprd+opd"].loss, want, rtol=1e-6, atol=1e-7)
    assert parts["oprd+opd"].metrics["loss/opd"] == pytest.approx(parts[variant].metrics["loss/opd"], rel=1e-6)
    grads = {m: torch.autograd.grad(r.loss, list(student.parameters()), allow_unused=True) for m, r in parts.items()}
    for g_c, g_opd, g_oprd in zip(grads["oprd+opd"], grads[variant], grads["oprd"]):
        want_g = (g_opd if g_opd is not None else 0) + 2.5 * (g_oprd if g_oprd is not None else 0)
        if g_c is None:
            assert g_opd is None and g_oprd is None
        else:
            torch.testing.assert_close(g_c, want_g, rtol=1e-5, atol=1e-7)


def test_the_combined_variant_is_a_validated_setting_that_reaches_the_spec():
    config = load_config(overrides=["method.name=oprd+opd", "method.opd_variant=opd_topk"])
    assert objective_spec(config).opd == "opd_topk"
    assert objective_spec(load_config(overrides=["method.name=oprd+opd"])).opd == "opd_top1"  # the paper's default
    assert objective_spec(load_config(overrides=["method.name=opd_full"])).opd == "opd_full"
    with pytest.raises(ValueError, match="`method.opd_variant`"):
        load_config(overrides=["method.opd_variant=topk"])
    with pytest.raises(ValueError, match="opd_variant"):
        ObjectiveSpec(method="oprd+opd", opd_variant="top1")


@pytest.mark.parametrize("impl", ["fused", "naive"])
@pytest.mark.parametrize("method", METHODS)
def test_a_step_without_metrics_reads_nothing_back_and_computes_the_same_loss(method, impl, monkeypatch):
    student, teacher = tiny_model(0), tiny_model(1, layers=3)
    rollouts = fixed_rollouts(student)
    spec = ObjectiveSpec(method=method, topk=3, positions="last_k", k=5, backend="cpu", opd_impl=impl)
    plan = plan_layers(spec, student, teacher, bridge_for(spec, student, teacher))
    with_metrics = compute_objective(spec, student, teacher, rollouts, plan)
    # the metrics' conversions (float of a loss, tolist of the per-layer cosine); the batch checks' reads of the
    # ids' range (int, bool) are not metrics and stay
    reads = HostReads(monkeypatch, ("__float__", "item", "tolist"))
    without = compute_objective(spec, student, teacher, rollouts, plan, with_metrics=False)
    assert reads.count == 0 and without.metrics == {}
    torch.testing.assert_close(without.loss, with_metrics.loss, rtol=0, atol=0)
    compute_objective(spec, student, teacher, rollouts, plan)
    assert reads.count > 0  # the counter sees the metrics' reads


def test_the_trainer_computes_metrics_on_logging_steps_only(tmp_path):
    trainer = make_trainer(tmp_path, steps=5, save_every=0, method="opd_top1", **{"run.log_every": "2",
                                                                                   "eval.every": "3"})
    asked = []
    real_step = trainer.train_step

    def spy(**kwargs):
        asked.append(kwargs["with_metrics"])
        return real_step(**kwargs)

    trainer.train_step = spy
    trainer.run(progress=False)
    rows = read_metrics(trainer.metrics_path)
    assert [r["step"] for r in rows] == [2, 3, 4, 5]  # every 2nd step, the evaluating step 3 and the last
    assert asked == [False, True, True, True, True]
    assert "eval/accuracy" in rows[1] and "loss/opd" in rows[1] and "grad/norm" in rows[0]
