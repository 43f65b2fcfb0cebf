"""The loss-path and teacher-pass runners work end to end on their smoke shapes (CPU): complete rows, fused and naive
OPD losses agreeing (checked inside the runner, which raises otherwise), the fused top-16 loss's delta-peak below the
naive one's, the compact teacher cache below the full pass; and the plotter draws every suite it is given."""

import json

import bench_loss_path  # benchmarks/ is put on sys.path by conftest.py
import bench_teacher_pass
import plot_suite
import pytest
import torch

OPD_METHODS = {"naive-top1", "naive-top16", "naive-full", "fused-top1", "fused-top16", "fused-full", "fused-jsd"}
# the peers a smoke run measures (liger-kernel and trl are in the test extra), with the loss each must equal
PEERS = {("liger-rkl", "eager"): "naive-full/eager", ("trl-gkd", "eager"): None,
         ("liger-jsd", "eager"): "trl-gkd/eager"}
ROW_KEYS = ("suite", "case", "method", "backend", "metric", "unit", "p20", "p50", "p80", "rows", "dim", "vocab",
            "layers", "selected", "k", "dtype", "flops", "floor_ms", "device_name", "torch", "timestamp", "loss")


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def smoke_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    loss_rows = bench_loss_path.main(["--device", "cpu", "--smoke", "--reps", "1", "--out", str(out / "lp.jsonl")])
    teacher_rows = bench_teacher_pass.main(["--device", "cpu", "--smoke", "--reps", "1",
                                            "--out", str(out / "tp.jsonl")])
    return out, loss_rows, teacher_rows


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_loss_path_smoke_rows_agree_and_fused_uses_less_memory(smoke_files):
    out, rows, _ = smoke_files
    assert _read(out / "lp.jsonl") == json.loads(json.dumps(rows))
    measured = {(r["method"], r["backend"], r["metric"]) for r in rows}
    expected = {(m, b, metric) for m in OPD_METHODS for metric in ("time", "delta_peak")
                for b in (("eager",) if m.startswith("naive") else ("rowwise", "chunked"))}
    expected |= {("oprd", b, metric) for b in ("cpu", "reference") for metric in ("time", "delta_peak")}
    expected |= {(m, b, metric) for m, b in PEERS for metric in ("time", "delta_peak")}
    assert measured == expected
    for r in rows:
        for key in ROW_KEYS:
            assert key in r, key
        assert r["suite"] == "loss_path" and r["unit"] == ("ms" if r["metric"] == "time" else "bytes")
        assert r["p20"] <= r["p50"] <= r["p80"] and r["flops"] > 0 and r["floor_ms"] > 0
    by = {(r["method"], r["backend"], r["metric"]): r for r in rows}
    for kind in ("top1", "top16", "full"):  # the runner compared the losses itself and recorded the comparison
        for backend in ("rowwise", "chunked"):
            fused = by[(f"fused-{kind}", backend, "time")]
            assert fused["loss_reference_method"] == f"naive-{kind}/eager"
            assert fused["loss_reference"] == by[(f"naive-{kind}", "eager", "time")]["loss"]
            assert fused["loss_rel_diff"] < 1e-3
    assert by[("oprd", "cpu", "time")]["loss_rel_diff"] < 1e-3
    for (method, backend), reference in PEERS.items():  # the peers' losses were checked against their counterparts
        if reference is not None:
            peer = by[(method, backend, "time")]
            assert peer["loss_reference_method"] == reference and peer["loss_rel_diff"] < 1e-3
    for backend in ("rowwise", "chunked"):  # our fused JSD was checked against TRL's, as Liger's is
        ours = by[("fused-jsd", backend, "time")]
        assert ours["loss_reference_method"] == "trl-gkd/eager" and ours["loss_rel_diff"] < 1e-5
        assert ours["loss"] == pytest.approx(by[("liger-jsd", "eager", "time")]["loss"], rel=1e-5)
    assert by[("liger-rkl", "eager", "time")]["loss"] == pytest.approx(by[("fused-full", "rowwise", "time")]["loss"],
                                                                        rel=1e-5)
    naive_peak = by[("naive-top16", "eager", "delta_peak")]["p50"]
    for backend in ("rowwise", "chunked"):  # [64, 4096] logits: the naive path holds several of them
        assert 0 < by[("fused-top16", backend, "delta_peak")]["p50"] < 0.9 * naive_peak


def test_loss_path_raises_when_fused_and_naive_disagree(tmp_path, monkeypatch):
    real = bench_loss_path.fused_topk_opd_loss
    monkeypatch.setattr(bench_loss_path, "fused_topk_opd_loss", lambda *a, **k: real(*a, **k) * 1.01)
    out = tmp_path / "bad.jsonl"
    with pytest.raises(RuntimeError, match="fused-top16/chunked.*relative difference"):
        bench_loss_path.main(["--device", "cpu", "--smoke", "--reps", "1", "--methods", "naive-top16,fused-top16",
                              "--out", str(out)])
    rows = _read(out)  # the rows were written before the run raised
    assert {r["method"] for r in rows} == {"naive-top16", "fused-top16"}
    assert all(r["loss_rel_diff"] > 5e-3 for r in rows if r["method"] == "fused-top16")


def test_loss_path_summary_prints_ratios_and_floors(smoke_files, capsys):
    _, rows, _ = smoke_files
    table = bench_loss_path.summarise(rows)
    assert "t/naive16" in table and "mm floor" in table and "B floor" in table
    naive_line = next(line for line in table.splitlines() if line.startswith("naive-top16"))
    assert naive_line.split()[5:7] == ["1.00", "1.00"]  # the baseline against itself


def test_teacher_pass_smoke_rows(smoke_files):
    out, _, rows = smoke_files
    assert _read(out / "tp.jsonl") == json.loads(json.dumps(rows))
    assert {(r["method"], r["metric"]) for r in rows} == {(m, metric) for m in ("oprd-cache", "hf-full")
                                                           for metric in ("time", "delta_peak")}
    by = {(r["method"], r["metric"]): r for r in rows}
    for r in rows:
        assert r["suite"] == "teacher_pass" and r["p20"] <= r["p50"] <= r["p80"] and r["cache_rel_diff"] < 1e-2
    ours, ref = by[("oprd-cache", "time")], by[("hf-full", "time")]
    assert (ours["cache_dtype"], ref["cache_dtype"]) == ("bfloat16", "float32")
    assert ours["cache_bytes"] * 2 == ref["cache_bytes"] == ours["layers"] * ours["rows_selected"] * ours["hidden"] * 4
    assert by[("oprd-cache", "delta_peak")]["p50"] < by[("hf-full", "delta_peak")]["p50"]


def test_plots_of_every_suite_and_of_a_missing_one(smoke_files, tmp_path):
    out, _, _ = smoke_files
    actor = tmp_path / "actor.jsonl"
    actor.write_text("\n".join(json.dumps({"suite": "actor_update", "case": "tiny", "method": m, "seq": s,
                                           "metric": metric, "p50": float(s) * (2 if m == "opd" else 1)})
                               for m in ("opd", "oprd") for s in (64, 128, 256) for metric in ("time", "delta_peak")))
    written = plot_suite.main([str(out / "lp.jsonl"), str(out / "tp.jsonl"), str(actor), "--out-dir",
                               str(tmp_path / "plots")])
    names = {p.name for p in written}
    assert names == {"loss_path_smoke.png", "teacher_pass_smoke.png", "actor_update_tiny.png"}
    for path in written:
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    only_teacher = plot_suite.main([str(out / "tp.jsonl"), "--out-dir", str(tmp_path / "plots2")])
    assert [p.name for p in only_teacher] == ["teacher_pass_smoke.png"]


def test_oom_is_reported_not_raised(monkeypatch):
    """An out-of-memory error in one method becomes an "oom" row; the others still run."""
    case = bench_loss_path.SMOKE_CASES[0]

    def boom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")

    monkeypatch.setattr(bench_loss_path, "fused_topk_opd_loss", boom)
    env = {"device": "cpu"}
    rows, mismatches = bench_loss_path.run_case(case, torch.device("cpu"), 1, env, 1e9,
                                                only={"naive-top16", "fused-top16"})
    assert not mismatches
    assert {(r["method"], r["metric"]) for r in rows} == {("naive-top16", "time"), ("naive-top16", "delta_peak"),
                                                          ("fused-top16", "oom")}
    assert "OOM" in next(r["reason"] for r in rows if r["metric"] == "oom")


def test_run_suite_runs_every_part_and_plots(tmp_path):
    import run_suite

    assert run_suite.main(["--smoke", "--reps", "1", "--out", str(tmp_path)]) == 0
    for part in run_suite.PARTS:
        rows = [json.loads(line) for line in (tmp_path / f"{part}_smoke.jsonl").read_text().splitlines()]
        assert rows and all(r["suite"] == part for r in rows)
        assert (tmp_path / "plots" / f"{part}_smoke.png").stat().st_size > 0
    import suite_tables

    text = suite_tables.main([str(p) for p in sorted(tmp_path.glob("*_smoke.jsonl"))])
    for part, baseline in suite_tables.BASELINES.items():
        assert f"**{part}**" in text
        baseline_lines = [line for line in text.splitlines() if f"| {baseline}" in line]
        assert baseline_lines and all(line.endswith("| 1.00x | 1.00x |") for line in baseline_lines), baseline_lines


def test_a_missing_peer_library_leaves_a_skipped_row_with_the_reason(tmp_path, monkeypatch, capsys):
    import peers

    monkeypatch.setattr(peers, "LIGER", ("liger_kernel_not_here.chunked_loss", "pip install 'oprd[peers]'"))
    monkeypatch.setattr(peers, "PEERS", [peers.Peer(p.name, p.backend, *peers.LIGER, p.build, p.reference, p.runs)
                                         if p.module.startswith("liger") else p for p in peers.PEERS])
    rows = bench_loss_path.main(["--device", "cpu", "--smoke", "--reps", "1", "--methods",
                                 "naive-full,liger-rkl,trl-gkd,liger-jsd", "--out", str(tmp_path / "p.jsonl")])
    skipped = {(r["method"], r["backend"]): r["reason"] for r in rows if r["metric"] == "skipped"}
    assert set(skipped) == {("liger-rkl", "eager"), ("liger-jsd", "eager")}
    assert all("liger_kernel_not_here" in why and "oprd[peers]" in why for why in skipped.values())
    assert {(r["method"], r["metric"]) for r in rows if r["method"] == "trl-gkd"} == {("trl-gkd", "time"),
                                                                                      ("trl-gkd", "delta_peak")}
    assert "liger-rkl eager: skipped (liger_kernel_not_here" in capsys.readouterr().out


def test_peer_ratio_lines_set_each_fused_loss_against_its_counterpart():
    """fused-full against Liger's compiled reverse KL, fused-jsd against its compiled JSD; nothing without them."""
    def cell(ms, mb):
        return {"time": {"p50": ms}, "delta_peak": {"p50": mb}}

    cells = {("liger-rkl", "compiled"): cell(100.0, 40.0), ("liger-jsd", "compiled"): cell(300.0, 60.0),
             ("fused-full", "rowwise"): cell(50.0, 20.0), ("fused-jsd", "rowwise"): cell(100.0, 30.0),
             ("fused-jsd", "chunked"): cell(150.0, 10.0)}
    assert bench_loss_path.peer_ratio_lines(cells) == [
        "fused-full/rowwise vs liger-rkl/compiled: 2.00x the speed, 2.00x less delta-peak",
        "fused-jsd/rowwise vs liger-jsd/compiled: 3.00x the speed, 2.00x less delta-peak",
        "fused-jsd/chunked vs liger-jsd/compiled: 2.00x the speed, 6.00x less delta-peak"]
    del cells[("liger-jsd", "compiled")]
    assert bench_loss_path.peer_ratio_lines(cells) == [
        "fused-full/rowwise vs liger-rkl/compiled: 2.00x the speed, 2.00x less delta-peak"]


def test_the_peer_table_sets_each_method_against_the_fastest_peer_at_its_loss():
    """suite_tables.peer_markdown: reverse-KL methods against Liger's compiled reverse KL, the generalised-JSD ones
    (ours, Liger's, TRL's) against Liger's compiled JSD, from the same run; a method without its baseline gets no
    row (a JSD set against the reverse KL would be a meaningless ratio)."""
    import suite_tables

    def row(method, backend, metric, p50, case="c", stamp="t"):
        return {"suite": "loss_path", "case": case, "timestamp": stamp, "method": method, "backend": backend,
                "metric": metric, "p50": p50}

    cells = {("liger-rkl", "compiled"): (100.0, 4 << 20), ("fused-full", "rowwise"): (50.0, 1 << 20),
             ("liger-jsd", "compiled"): (300.0, 6 << 20), ("fused-jsd", "rowwise"): (150.0, 2 << 20),
             ("trl-gkd", "eager"): (600.0, 12 << 20)}
    rows = [row(m, b, metric, v) for (m, b), (ms, mb) in cells.items()
            for metric, v in (("time", ms), ("delta_peak", mb))]
    rows += [row("fused-jsd", "chunked", metric, v, case="other") for metric, v in (("time", 1.0), ("delta_peak", 1))]
    lines = suite_tables.peer_markdown(rows).splitlines()[2:]
    by_method = {line.split(" | ")[1]: line for line in lines}
    assert set(by_method) == {"liger-rkl (compiled)", "fused-full (rowwise)", "liger-jsd (compiled)",
                              "fused-jsd (rowwise)", "trl-gkd (eager)"}  # "other" has no Liger JSD: no row
    assert by_method["fused-full (rowwise)"].endswith("| liger-rkl/compiled | 2.00x | 4.00x |")
    assert by_method["fused-jsd (rowwise)"].endswith("| liger-jsd/compiled | 2.00x | 3.00x |")
    assert by_method["trl-gkd (eager)"].endswith("| liger-jsd/compiled | 0.50x | 0.50x |")
    assert by_method["liger-jsd (compiled)"].endswith("| 1.00x | 1.00x |")
