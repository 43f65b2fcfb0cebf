"""Stage 0: the rows streamed to shards are the two models' own hidden states at the kept response positions, paired
layer by layer as Stage 2 aligns them, within the per-response and total caps."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_bridge_method import model
from test_trainer import TOKENIZER, prompts

import oprd.bridge.collect as collect
from oprd.bridge.collect import CollectSettings, collect_rows, keep_per_response, read_manifest
from oprd.capture import position_ids_from_mask


def hidden(m, ids, mask):
    return m(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
             output_hidden_states=True).hidden_states


def test_the_shards_hold_both_models_states_at_the_kept_positions(tmp_path, monkeypatch):
    student, teacher = model(0, 32, 3), model(1, 48, 2)
    seen = []
    real = collect.generate_rollouts

    def recording(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(collect, "generate_rollouts", recording)
    settings = CollectSettings(prompts_per_batch=3, responses_per_prompt=2, max_new_tokens=8, rows_per_response=4,
                               max_rows=30)
    manifest = collect_rows(student, teacher, TOKENIZER, [p["prompt"] for p in prompts(12)], tmp_path / "rows",
                            settings=settings)
    assert manifest["student_layers"] == [1, 2, 3] and manifest["teacher_layers"] == [1, 1, 2]  # 0.5 rounds to even
    assert manifest == read_manifest(tmp_path / "rows")
    shards = sorted((tmp_path / "rows").glob("rows-*.safetensors"))
    assert len(shards) == manifest["shards"] == len(seen)
    total = 0
    for file, rollouts in zip(shards, seen):
        shard = load_file(file)
        ids, mask = rollouts.input_ids, rollouts.attention_mask
        pos = shard["positions.student"]
        assert torch.equal(pos, shard["positions.teacher"])  # one tokenizer: the same positions
        assert bool(rollouts.response_mask.reshape(-1)[pos].all())  # response positions only
        per_response = torch.bincount(torch.div(pos, ids.shape[1], rounding_mode="floor"))
        assert int(per_response.max()) <= 4
        with torch.no_grad():
            hs_s, hs_t = hidden(student, ids, mask), hidden(teacher, ids, mask)
        for s_index, t_index in zip(manifest["student_layers"], manifest["teacher_layers"]):
            torch.testing.assert_close(shard[f"student.{s_index}"], hs_s[s_index].reshape(-1, 32)[pos])
            torch.testing.assert_close(shard[f"teacher.{s_index}"], hs_t[t_index].reshape(-1, 48)[pos])
        total += pos.numel()
    assert total == manifest["rows"] == 30  # stopped at max_rows, the last batch cut
    assert student.training and teacher.training  # the models' modes are restored


def test_an_existing_collection_and_empty_prompts_are_refused(tmp_path):
    student, teacher = model(0, 32, 2), model(1, 32, 2)
    settings = CollectSettings(prompts_per_batch=2, max_new_tokens=4, max_rows=4)
    collect_rows(student, teacher, TOKENIZER, ["1+1="], tmp_path / "rows", settings=settings)
    with pytest.raises(ValueError, match="already holds collected rows"):
        collect_rows(student, teacher, TOKENIZER, ["1+1="], tmp_path / "rows", settings=settings)
    with pytest.raises(ValueError, match="`prompts` is empty"):
        collect_rows(student, teacher, TOKENIZER, [], tmp_path / "other", settings=settings)
    with pytest.raises(ValueError, match="`rows_per_response` must be an int >= 1"):
        CollectSettings(rows_per_response=0)
    (tmp_path / "rows" / "manifest.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(ValueError, match="format 'x'"):
        read_manifest(tmp_path / "rows")
    with pytest.raises(ValueError, match="no finished collection"):
        read_manifest(tmp_path / "none")


def test_keep_per_response_draws_at_most_k_per_sample_in_order():
    rows = torch.tensor([0, 1, 2, 3, 4, 10, 11, 25])  # seq_len 10: samples 0 (5 rows), 1 (2), 2 (1)
    keep = keep_per_response(rows, 10, 3, torch.Generator().manual_seed(0))
    kept = rows[keep]
    assert torch.equal(torch.bincount(kept // 10), torch.tensor([3, 2, 1]))
    assert torch.equal(kept, kept.sort().values) and len(set(kept.tolist())) == 6
