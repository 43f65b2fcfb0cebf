"""`oprd demo --bridge --quick`: every Bridge stage runs end to end on the embedded task (the numbers mean little at
this size), and the outputs hold what the tables and the closing notes quote."""

from __future__ import annotations

import json

from oprd.bridge import load_bridge
from oprd.cli.commands import main


def test_quick_bridge_demo_runs_every_stage(tmp_path, capfd):
    out = tmp_path / "bridge-demo"
    stale = out / "bridge_rows"  # an earlier run's collection (of other models) must not be reused
    stale.mkdir(parents=True)
    (stale / "manifest.json").write_text('{"format": "oprd-bridge-rows/1", "rows": 7}')
    assert main(["demo", "--bridge", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    labels = ["opd_top1", "opd_topk", "oprd_bridge", "oprd_bridge, then opd_top1"]
    assert list(results["methods"]) == labels
    for label in labels:
        method = results["methods"][label]
        assert method["seeds"] == [0, 1] and 0 <= method["accuracy"] <= 1 and method["response_length"] > 0
    bridge = load_bridge(out / "bridge.safetensors")
    assert bridge.student.hidden_size == 64 and bridge.teacher.hidden_size == 48 and bridge.rank == 4
    assert [e["rank"] for e in results["bridge"]["rank_sweep"]] == [1, 2, 4]
    assert results["bridge"]["rows"] == 64 and len(results["bridge"]["pairs"]) == 3
    steps = [json.loads(line) for line in (out / "runs" / "oprd_bridge_then_opd_top1" / "seed0" / "metrics.jsonl")
             .read_text().splitlines()]
    assert [("loss/oprd_bridge" in s, "loss/opd" in s) for s in steps] == [(True, False)] * 2 + [(False, True)] * 2
    cross = results["cross_tokenizer"]  # the BPE teacher: its own vocabulary, positions paired by byte ends
    assert list(cross["methods"]) == ["oprd_bridge"] and cross["methods"]["oprd_bridge"]["seeds"] == [0, 1]
    pair_bridge = load_bridge(out / "bpe_bridge.safetensors")
    assert pair_bridge.rank == 2 and pair_bridge.teacher.vocab_size == cross["teacher_vocab"] != \
        bridge.student.vocab_size
    assert 0 < cross["methods"]["oprd_bridge"]["unpaired_share"] < 1  # BPE tokens span several characters
    pair_steps = [json.loads(line) for line in (out / "runs" / "bpe_oprd_bridge" / "seed0" / "metrics.jsonl")
                  .read_text().splitlines()]
    assert all("loss/oprd_bridge" in s and "bridge/unpaired_share" in s for s in pair_steps)
    tables = (out / "tables.md").read_text()
    assert "| oprd_bridge, then opd_top1 |" in tables and "rank sweep" in tables and "33.9" in tables
    assert "Across tokenizers" in tables and "| teacher (BPE) |" in tables
    for name in ("accuracy.png", "accuracy_cross_tokenizer.png", "rank_sweep.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "USDT" not in capfd.readouterr().err
