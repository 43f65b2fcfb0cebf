"""The backend registry (oprd_kernels/registry.py): the same request, auto, fallback and report rules for the `oprd`
family (alignment_loss, bridge_loss; $OPRD_BACKEND) and the `opd` family (fused OPD losses, lm_head_stats;
$OPRD_OPD_BACKEND)."""

import re
import warnings

import pytest
import torch

import oprd_kernels
from oprd_kernels import dispatch, reference, registry
from oprd_kernels.__main__ import collect
from oprd_kernels.opd import _passes

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
OPRD, OPD = registry.FAMILIES["oprd"], registry.FAMILIES["opd"]
FAMILIES = [OPRD, OPD]
# (family, an op of it, the backend made unavailable, another backend that can run on CPU)
CASES = [(OPRD, "alignment_loss", "cpu", "reference"), (OPD, "lm_head_stats", "triton", "rowwise")]


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for fam in FAMILIES:
        monkeypatch.delenv(fam.env_var, raising=False)
        monkeypatch.setattr(fam.provider_module(), "_WARNED", set())


def simulate_unavailable(monkeypatch, fam, backend: str, reason: str = "simulated") -> None:
    provider = fam.provider_module()
    real = provider.unavailable_reason
    monkeypatch.setattr(provider, "unavailable_reason",
                        lambda op, b, device: reason if b == backend else real(op, b, device))


def fallback_message(fam, op: str, backend: str, reason: str) -> str:
    """The one wording of the fallback warning, for every family."""
    return f"oprd_kernels: backend '{backend}' cannot run {op} here ({reason}); falling back to '{fam.fallback}'"


def test_the_table():
    assert (OPRD.ops, OPRD.backends, OPRD.env_var, OPRD.fallback) == (
        ("alignment_loss", "bridge_loss"), ("reference", "triton", "cpu"), "OPRD_BACKEND", "reference")
    assert (OPD.backends, OPD.env_var, OPD.fallback) == (("chunked", "rowwise", "triton"), "OPRD_OPD_BACKEND",
                                                          "chunked")
    # the older names are views of the same table
    assert (dispatch.BACKENDS, dispatch.OPS, dispatch.ENV_VAR) == (OPRD.backends, OPRD.ops, OPRD.env_var)
    assert oprd_kernels.BACKENDS == OPRD.backends
    assert (_passes.OPD_BACKENDS, _passes.ENV_VAR) == (OPD.backends, OPD.env_var)
    # every OPD op is a public function that resolves through the registry, and every such function is listed
    public = {name for name in oprd_kernels.opd.__all__ if name.startswith("fused_") or name == "lm_head_stats"}
    assert set(OPD.ops) == public


@pytest.mark.parametrize("fam,op,_unavailable,other", CASES, ids=["oprd", "opd"])
def test_argument_beats_variable_beats_auto(monkeypatch, fam, op, _unavailable, other):
    assert registry.requested(fam.name, op, None) == "auto"
    monkeypatch.setenv(fam.env_var, f" {fam.fallback.upper()} ")
    assert registry.requested(fam.name, op, None) == fam.fallback
    assert registry.requested(fam.name, op, other) == other
    assert registry.requested(fam.name, op, "Auto") == "auto"
    monkeypatch.setenv(fam.env_var, "not-a-backend")
    assert registry.requested(fam.name, op, other) == other  # the argument wins without reading the variable
    assert registry.resolve(fam.name, op, other, CPU)[0] == other


def test_each_family_reads_only_its_own_variable(monkeypatch):
    monkeypatch.setenv("OPRD_BACKEND", "reference")
    assert registry.requested("opd", "lm_head_stats", None) == "auto"
    monkeypatch.setenv("OPRD_OPD_BACKEND", "chunked")
    assert registry.requested("oprd", "bridge_loss", None) == "reference"
    assert _passes.resolve_passes("test", None, CPU).name == "chunked"
    assert dispatch.resolve("bridge_loss", None, CPU) == ("reference", reference.bridge_loss)


@pytest.mark.parametrize("fam,op", [(OPRD, "bridge_loss"), (OPD, "fused_topk_opd_loss")], ids=["oprd", "opd"])
def test_bad_requests_name_the_argument_or_the_variable_the_value_and_the_choices(monkeypatch, fam, op):
    choices = str(["auto", *fam.backends])
    other_family = (OPD if fam is OPRD else OPRD).backends[0]  # a backend of the other family is no backend here
    for bad in ("fastest", other_family, "", 3):
        want = f"{op}: `backend` must be one of {choices}; got {bad!r}"
        with pytest.raises(ValueError, match=f"^{re.escape(want)}$"):
            registry.requested(fam.name, op, bad)
        with pytest.raises(ValueError, match=f"^{re.escape(want)}$"):
            registry.resolve(fam.name, op, bad, CPU)
    for bad in ("fastest", other_family, ""):
        monkeypatch.setenv(fam.env_var, bad)
        want = f"{op}: `{fam.env_var}` must be one of {choices}; got {bad!r}"
        with pytest.raises(ValueError, match=f"^{re.escape(want)}$"):
            registry.resolve(fam.name, op, None, CPU)


def test_bad_requests_reach_the_public_entry_points(monkeypatch):
    h, w = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"lm_head_stats: `backend` must be one of \['auto', 'chunked'"):
        oprd_kernels.lm_head_stats(h, w, backend="cpu")
    monkeypatch.setenv("OPRD_OPD_BACKEND", "reference")
    with pytest.raises(ValueError, match="fused_full_vocab_opd_loss: `OPRD_OPD_BACKEND` must be one of"):
        oprd_kernels.fused_full_vocab_opd_loss(h, w, h, w)


def test_oprd_auto_rule():
    for op in OPRD.ops:
        for dtype in (None, torch.float32, torch.bfloat16):
            assert registry.auto("oprd", op, CPU, dtype) == "cpu"
            assert registry.auto("oprd", op, CUDA, dtype) == "triton"
        assert registry.auto("oprd", op, None) == "cpu"  # a malformed input has no device: validation reports it


def test_opd_auto_rule(monkeypatch):
    for op in OPD.ops:
        for dtype in (None, torch.float32, torch.float64):
            assert registry.auto("opd", op, CPU, dtype) == "rowwise"
        for dtype in (torch.bfloat16, torch.float16):
            assert registry.auto("opd", op, CPU, dtype) == "chunked"
    monkeypatch.setattr(_passes, "opd_unavailable_reason", lambda backend, device: None)
    for dtype in (None, torch.float32, torch.bfloat16):
        assert registry.auto("opd", "fused_topk_opd_loss", CUDA, dtype) == "triton"
    simulate_unavailable(monkeypatch, OPD, "triton")
    assert registry.auto("opd", "fused_topk_opd_loss", CUDA) == "chunked"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never picks a backend that cannot run for opd: no fallback, no warning
        assert _passes.resolve_passes("fused_topk_opd_loss", "auto", CUDA).name == "chunked"


def test_oprd_auto_on_cuda_without_triton_falls_back_with_the_warning(monkeypatch):
    simulate_unavailable(monkeypatch, OPRD, "triton")
    with pytest.warns(RuntimeWarning) as record:
        assert registry.resolve("oprd", "alignment_loss", None, CUDA) == ("reference", reference.alignment_loss)
    assert [str(r.message) for r in record] == [fallback_message(OPRD, "alignment_loss", "triton", "simulated")]


def test_the_public_opd_losses_pass_the_weight_dtype_to_auto(monkeypatch):
    loaded = []
    for name, load in list(_passes._LOADERS.items()):
        monkeypatch.setitem(_passes._LOADERS, name, lambda name=name, load=load: loaded.append(name) or load())
    g = torch.Generator().manual_seed(0)
    for dtype, want in ((torch.float32, "rowwise"), (torch.bfloat16, "chunked")):
        h, w = torch.randn(4, 3, generator=g).to(dtype), torch.randn(7, 3, generator=g).to(dtype)
        loaded.clear()
        oprd_kernels.fused_full_vocab_opd_loss(h, w, h, w)
        oprd_kernels.fused_topk_opd_loss(h, w, h, w, k=2)
        assert loaded == [want, want], dtype


@pytest.mark.parametrize("fam,op,unavailable,_other", CASES, ids=["oprd", "opd"])
def test_fallback_warns_once_per_op_and_backend_in_one_wording(monkeypatch, fam, op, unavailable, _other):
    simulate_unavailable(monkeypatch, fam, unavailable, reason="no such luck")
    provider = fam.provider_module()
    with pytest.warns(RuntimeWarning) as record:
        name, impl = registry.resolve(fam.name, op, unavailable, CPU)
    assert name == fam.fallback
    assert impl == provider.load(op, fam.fallback)
    assert [str(r.message) for r in record] == [fallback_message(fam, op, unavailable, "no such luck")]
    assert (op, unavailable) in provider._WARNED
    monkeypatch.setenv(fam.env_var, unavailable)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same (op, backend): silent, by argument or by variable
        assert registry.resolve(fam.name, op, unavailable, CPU)[0] == fam.fallback
        assert registry.resolve(fam.name, op, None, CPU)[0] == fam.fallback
    other_op = next(o for o in fam.ops if o != op)
    with pytest.warns(RuntimeWarning) as record:  # another op with the same backend: its own warning
        assert registry.resolve(fam.name, other_op, None, CPU)[0] == fam.fallback
    assert [str(r.message) for r in record] == [fallback_message(fam, other_op, unavailable, "no such luck")]


def opd_calls():
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(4, 3, generator=g), torch.randn(7, 3, generator=g)
    ids, teacher_log_probs = torch.randint(0, 7, (4, 2), generator=g), -torch.rand(4, 2, generator=g)
    return {
        "fused_sampled_token_opd_loss": lambda b: oprd_kernels.fused_sampled_token_opd_loss(h, w, h, w, ids[:, 0],
                                                                                          backend=b),
        "fused_topk_opd_loss": lambda b: oprd_kernels.fused_topk_opd_loss(h, w, h, w, k=2, backend=b),
        "fused_full_vocab_opd_loss": lambda b: oprd_kernels.fused_full_vocab_opd_loss(h, w, h, w, backend=b),
        "fused_opd_loss_at_ids": lambda b: oprd_kernels.fused_opd_loss_at_ids(h, w, ids, teacher_log_probs,
                                                                              backend=b),
        "fused_opd_loss_and_stats": lambda b: oprd_kernels.fused_opd_loss_and_stats("topk", h, w, h, w, ids[:, 0],
                                                                                    k=2, stats_k=2, backend=b)[0],
        "fused_generalized_jsd_loss": lambda b: oprd_kernels.fused_generalized_jsd_loss(h, w, h, w, backend=b),
        "lm_head_stats": lambda b: oprd_kernels.lm_head_stats(h, w, topk=2, backend=b).logsumexp,
    }


def oprd_calls():
    g = torch.Generator().manual_seed(2)
    student, teacher = [torch.randn(2, 3, 5, generator=g) for _ in range(2)], torch.randn(2, 6, 5, generator=g)
    z, proj = torch.randn(2, 6, 2, generator=g), torch.randn(2, 2, 5, generator=g)
    return {
        "alignment_loss": lambda b: oprd_kernels.alignment_loss(student, teacher, backend=b),
        "bridge_loss": lambda b: oprd_kernels.bridge_loss(student, z, proj, backend=b),
    }


@pytest.mark.parametrize("fam,calls,unavailable", [(OPRD, oprd_calls, "cpu"), (OPD, opd_calls, "triton")],
                         ids=["oprd", "opd"])
def test_every_public_op_warns_in_its_own_name_at_the_callers_line(monkeypatch, fam, calls, unavailable):
    simulate_unavailable(monkeypatch, fam, unavailable)
    calls = calls()
    assert set(calls) == set(fam.ops)
    for op, call in calls.items():
        want = call(fam.fallback)
        with pytest.warns(RuntimeWarning) as record:
            got = call(unavailable)
        assert torch.equal(got, want), op  # the fallback ran
        assert [str(r.message) for r in record] == [fallback_message(fam, op, unavailable, "simulated")]
        assert record[0].filename == __file__, (op, record[0].filename)  # attributed to the caller, not the library
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            call(unavailable)


def test_report_lists_every_op_of_every_family_and_warns_nothing(monkeypatch):
    simulate_unavailable(monkeypatch, OPD, "triton", reason="simulated opd")
    simulate_unavailable(monkeypatch, OPRD, "cpu", reason="simulated oprd")
    monkeypatch.setenv("OPRD_OPD_BACKEND", "triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = oprd_kernels.backend_report("cpu")
    assert _passes._WARNED == dispatch._WARNED == set()  # the report spends no one-time warning
    assert set(report) == {"oprd", "opd"}
    for fam in FAMILIES:
        entry = report[fam.name]
        assert entry["ops"] == list(fam.ops) and entry["variable"] == fam.env_var
        assert entry["fallback"] == fam.fallback
        assert list(entry["backends"]) == list(fam.backends)
        for backend, ops in entry["backends"].items():
            assert list(ops) == list(fam.ops), backend
        assert set(entry["auto"]) == set(entry["selected"]) == set(fam.ops)
    assert report["oprd"]["backends"]["cpu"] == {op: "simulated oprd" for op in OPRD.ops}
    assert report["oprd"]["backends"]["reference"] == {op: "available" for op in OPRD.ops}
    assert report["opd"]["backends"]["triton"] == {op: "simulated opd" for op in OPD.ops}
    assert report["oprd"]["request"] is None and report["opd"]["request"] == "triton"
    assert report["oprd"]["auto"] == {op: "cpu" for op in OPRD.ops}
    assert report["oprd"]["selected"] == {op: "reference" for op in OPRD.ops}  # auto's cpu cannot run: fallback
    assert report["opd"]["auto"] == {op: "rowwise" for op in OPD.ops}
    assert report["opd"]["selected"] == {op: "chunked" for op in OPD.ops}  # the variable's triton cannot: fallback
    assert dispatch.backend_status("cpu") == report["oprd"]["backends"]  # the older view, the same shape as before
    monkeypatch.setenv("OPRD_BACKEND", "fastest")
    selected = oprd_kernels.backend_report("cpu")["oprd"]["selected"]
    assert "`OPRD_BACKEND` must be one of" in selected and "'fastest'" in selected


def test_python_dash_m_report_comes_from_the_registry(monkeypatch):
    simulate_unavailable(monkeypatch, OPD, "triton")
    facts = collect()
    assert facts["registry"] == oprd_kernels.backend_report()
    assert facts["backends"] == oprd_kernels.backend_status()
    assert facts["opd_backends"] == {"chunked": "available", "rowwise": "available", "triton": "simulated"}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert facts["opd_auto"] == registry.auto("opd", "lm_head_stats", device)
