"""The bridge file: safetensors only, atomic and verified, validated against itself and against both models."""

from __future__ import annotations

import pickle

import pytest
import torch
from transformers import LlamaConfig

from oprd.bridge import Bridge, BridgeFileError, ModelIdentity, check_bridge_fits, load_bridge, save_bridge


def identity(width, depth, name="m"):
    return ModelIdentity(name, "llama", width, depth, 32)


def make_bridge(rank=3, d_s=8, d_t=12, s_layers=(1, 2, 3), t_layers=(1, 4), layer_map=(0, 0, 1)):
    g = torch.Generator().manual_seed(0)
    return Bridge(rank, list(s_layers), list(t_layers), list(layer_map),
                  torch.randn(len(t_layers), rank, d_t, generator=g), torch.randn(len(t_layers), d_t, generator=g),
                  torch.randn(len(s_layers), rank, d_s, generator=g), identity(d_s, 3, "student"),
                  identity(d_t, 4, "teacher"), {"cosine_after": [0.9, 0.8, 0.7]})


def test_save_then_load_gives_the_same_bridge(tmp_path):
    bridge = make_bridge()
    path = save_bridge(bridge, tmp_path / "sub" / "bridge.safetensors")
    back = load_bridge(path)
    for name in ("proj_t", "mean_t", "proj_s"):
        assert torch.equal(getattr(back, name), getattr(bridge, name))
    assert (back.rank, back.student_layers, back.teacher_layers, back.layer_map) == (3, [1, 2, 3], [1, 4], [0, 0, 1])
    assert back.student == bridge.student and back.teacher == bridge.teacher and back.fit == bridge.fit
    assert not list(path.parent.glob("*.tmp"))  # the temporary name is gone


def test_a_pickle_is_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "ps_bank.pt"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(BridgeFileError, match="not a safetensors file.*never loaded"):
        load_bridge(path)
    assert not marker.exists()


def test_missing_file_tensors_and_metadata_are_named(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(BridgeFileError, match="no such file"):
        load_bridge(tmp_path / "none.safetensors")
    path = tmp_path / "partial.safetensors"
    save_file({"proj_t": torch.zeros(1, 1, 1)}, str(path))
    with pytest.raises(BridgeFileError, match=r"no tensor\(s\) \['mean_t', 'proj_s'\]"):
        load_bridge(path)
    save_file({n: torch.zeros(1, 1, 1) for n in ("proj_t", "mean_t", "proj_s")}, str(path), metadata={"x": "y"})
    with pytest.raises(BridgeFileError, match="no valid oprd_bridge metadata"):
        load_bridge(path)
    save_file({n: torch.zeros(1, 1, 1) for n in ("proj_t", "mean_t", "proj_s")}, str(path),
              metadata={"oprd_bridge": '{"format": "other/9"}'})
    with pytest.raises(BridgeFileError, match="format 'other/9'"):
        load_bridge(path)


@pytest.mark.parametrize("change, message", [
    (dict(rank=0), "`rank` must be an int >= 1"),
    (dict(layer_map=(0, 1)), "one teacher slot per student layer"),
    (dict(layer_map=(0, 0, 2)), r"slots must be in \[0, 2\)"),
    (dict(t_layers=(4, 1)), "unique and sorted"),
    (dict(s_layers=(1, 2, 9)), r"`student_layers` must be hidden_states indices in \[0, 3\]"),
])
def test_an_inconsistent_bridge_is_refused(change, message):
    with pytest.raises(BridgeFileError, match=message):
        make_bridge(**change)


def test_shapes_that_disagree_with_the_rank_or_widths_are_refused(tmp_path):
    bridge = make_bridge()
    with pytest.raises(BridgeFileError, match=r"`proj_s` must have shape \[3, 3, 8\]"):
        Bridge(3, [1, 2, 3], [1, 4], [0, 0, 1], bridge.proj_t, bridge.mean_t, bridge.proj_s[:, :2],
               bridge.student, bridge.teacher)
    with pytest.raises(BridgeFileError, match="non-finite"):
        Bridge(3, [1, 2, 3], [1, 4], [0, 0, 1], bridge.proj_t * float("nan"), bridge.mean_t, bridge.proj_s,
               bridge.student, bridge.teacher)


def test_a_file_whose_tensors_disagree_with_its_metadata_names_the_file(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    bridge = make_bridge()
    path = save_bridge(bridge, tmp_path / "b.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    save_file({"proj_t": bridge.proj_t, "mean_t": bridge.mean_t, "proj_s": bridge.proj_s[:2]}, str(path),
              metadata=meta)
    with pytest.raises(BridgeFileError, match=r"b\.safetensors.*`proj_s` must have shape"):
        load_bridge(path)


def test_the_bridge_must_fit_both_models_and_the_distilled_layers():
    bridge = make_bridge()
    student = LlamaConfig(hidden_size=8, num_hidden_layers=3, vocab_size=32, num_attention_heads=2)
    teacher = LlamaConfig(hidden_size=12, num_hidden_layers=4, vocab_size=32, num_attention_heads=2)
    check_bridge_fits(bridge, student, teacher, [1, 2, 3])
    wide = LlamaConfig(hidden_size=16, num_hidden_layers=4, vocab_size=32, num_attention_heads=2)
    with pytest.raises(BridgeFileError, match="bridge.path: was fitted for a teacher with hidden_size 12.*has 16"):
        check_bridge_fits(bridge, student, wide)
    deep = LlamaConfig(hidden_size=8, num_hidden_layers=5, vocab_size=32, num_attention_heads=2)
    with pytest.raises(BridgeFileError, match="student with num_layers 3.*has 5"):
        check_bridge_fits(bridge, deep, teacher)
    check_bridge_fits(bridge, student, teacher, [3])  # a subset: trained through bridge.restricted_to
    with pytest.raises(BridgeFileError, match=r"aligns student layers \[1, 2, 3\]; `oprd.layers` selects \[0, 3\], "
                                              r"not all among them"):
        check_bridge_fits(bridge, student, teacher, [0, 3])


def test_restricted_to_keeps_the_chosen_student_layers_and_their_teacher_layers():
    bridge = make_bridge()  # student 1, 2, 3 -> teacher slots 0, 0, 1 (layers 1, 4)
    last = bridge.restricted_to([3])
    assert (last.student_layers, last.teacher_layers, last.layer_map) == ([3], [4], [0])
    assert torch.equal(last.proj_s, bridge.proj_s[2:]) and torch.equal(last.proj_t, bridge.proj_t[1:])
    assert torch.equal(last.mean_t, bridge.mean_t[1:])
    first = bridge.restricted_to([2, 1])
    assert (first.student_layers, first.teacher_layers, first.layer_map) == ([1, 2], [1], [0, 0])
    assert torch.equal(first.proj_s, bridge.proj_s[:2]) and torch.equal(first.proj_t, bridge.proj_t[:1])
    both = bridge.restricted_to([1, 3])
    assert (both.teacher_layers, both.layer_map) == ([1, 4], [0, 1])
    for bad in ([0], [], [3, 4]):
        with pytest.raises(BridgeFileError, match="non-empty subset"):
            bridge.restricted_to(bad)
