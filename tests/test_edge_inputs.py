"""Edge inputs get clear errors naming the argument (not an IndexError or RuntimeError from deep inside), and NumPy
integers are accepted wherever Python ints are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_capture import rollout_batch, tiny

import oprd_kernels
from oprd import proportional_map, resolve_layers, select_positions
from oprd.capture import capture_student, teacher_cache
from oprd.layers import hidden_state_pairs
from oprd.tasks import ArithmeticTask


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_a_stacked_student_with_zero_layers_is_named(backend):
    with pytest.raises(ValueError, match=r"alignment_loss: `student` must hold at least one layer"):
        oprd_kernels.alignment_loss(torch.empty(0, 4, 8), torch.empty(0, 4, 8), backend=backend)
    with pytest.raises(ValueError, match=r"bridge_loss: `student` must hold at least one layer"):
        oprd_kernels.bridge_loss(torch.empty(0, 4, 8), torch.empty(0, 4, 2), torch.empty(0, 2, 8), backend=backend)


@pytest.mark.parametrize("shape", [(0, 11), (3, 0)])
def test_capture_of_an_empty_batch_is_named(shape):
    model = tiny("llama")
    ids = torch.zeros(shape, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"capture_student: `input_ids` must hold at least one sample and one"):
        capture_student(model, ids, torch.ones_like(ids), "all")
    with pytest.raises(ValueError, match=r"teacher_cache: `input_ids` must hold at least one sample"):
        teacher_cache(model, ids, torch.ones_like(ids), "all", torch.zeros(0, dtype=torch.int64))


@pytest.mark.parametrize("bad", [61, -1])
def test_token_ids_outside_the_vocabulary_are_named(bad):
    model = tiny("qwen2")
    ids, mask, response = rollout_batch()
    ids[1, 5] = bad
    with pytest.raises(ValueError, match=r"`input_ids` must be token ids of this model, in \[0, 60\]"):
        capture_student(model, ids, mask, "all")
    rows, _ = select_positions(response, "all")
    with pytest.raises(ValueError, match=r"teacher_cache: `input_ids` must be token ids of this model"):
        teacher_cache(model, ids, mask, "all", rows)


@pytest.mark.parametrize("mask_of", [lambda m: m * 2, lambda m: m.float(), lambda m: m - 1])
def test_attention_masks_that_are_not_0_1_are_named(mask_of):
    model = tiny("llama")
    ids, mask, _ = rollout_batch()
    with pytest.raises(ValueError, match=r"`attention_mask` must hold only 0 and 1"):
        capture_student(model, ids, mask_of(mask), "all")


def test_bool_attention_masks_are_fine():
    model = tiny("llama")
    ids, mask, _ = rollout_batch()
    a = capture_student(model, ids, mask, [2]).states[0]
    b = capture_student(model, ids, mask.bool(), [2]).states[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, "bfloat16"])
def test_teacher_cache_dtype_must_be_floating(dtype):
    model = tiny("llama")
    ids, mask, response = rollout_batch()
    rows, _ = select_positions(response, "all")
    with pytest.raises(TypeError, match=r"teacher_cache: `dtype` must be a floating torch.dtype"):
        teacher_cache(model, ids, mask, "all", rows, dtype=dtype)


def _meta(*shape):
    return torch.empty(*shape, device="meta")


@pytest.mark.parametrize("call", [
    lambda: oprd_kernels.fused_sampled_token_opd_loss(_meta(4, 8), _meta(10, 8), _meta(4, 8), _meta(10, 8),
                                                      torch.zeros(4, dtype=torch.int64, device="meta")),
    lambda: oprd_kernels.fused_topk_opd_loss(_meta(4, 8), _meta(10, 8), _meta(4, 8), _meta(10, 8), k=2),
    lambda: oprd_kernels.fused_full_vocab_opd_loss(_meta(2, 4, 8), _meta(10, 8), _meta(2, 4, 8), _meta(10, 8)),
    lambda: oprd_kernels.fused_opd_loss_at_ids(_meta(4, 8), _meta(10, 8), torch.zeros(4, 1, dtype=torch.int64,
                                                                                   device="meta"), _meta(4, 1)),
    lambda: oprd_kernels.lm_head_stats(_meta(4, 8), _meta(10, 8), topk=2),
])
def test_all_meta_inputs_to_the_fused_opd_losses_are_named(call):
    with pytest.raises(ValueError, match=r"`hidden` must hold data .* meta"):
        call()


def test_numpy_integers_are_accepted_where_ints_are():
    assert resolve_layers([np.int64(1), np.int32(-1)], np.int64(4)) == [1, 4]
    assert proportional_map(np.int64(3), np.int16(2)) == [0, 0, 1]
    assert hidden_state_pairs([np.int64(2)], 3, 5) == [3]
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    assert torch.equal(select_positions(mask, "last_k", np.int64(2))[0],
                       select_positions(mask, "last_k", 2)[0])
    assert ArithmeticTask(np.int64(2)).digits == 2
    h, w = torch.randn(5, 8), torch.randn(11, 8)
    th, tw = torch.randn(5, 6), torch.randn(11, 6)
    torch.testing.assert_close(oprd_kernels.fused_topk_opd_loss(h, w, th, tw, k=np.int64(3), row_block=np.int32(2)),
                               oprd_kernels.fused_topk_opd_loss(h, w, th, tw, k=3, row_block=2))
    torch.testing.assert_close(oprd_kernels.reference.topk_opd_loss(h @ w.T, th @ tw.T, k=np.int64(3)),
                               oprd_kernels.reference.topk_opd_loss(h @ w.T, th @ tw.T, k=3))
    stats = oprd_kernels.lm_head_stats(h, w, topk=np.int32(2), topk_among=np.int64(9))
    assert stats.topk_ids.shape == (5, 2)
    loss = oprd_kernels.BridgeLoss(np.int64(2), np.int64(3), np.int64(8))
    assert loss.proj.shape == (2, 3, 8)
    with pytest.raises(TypeError, match="num_layers"):
        resolve_layers("all", np.float64(4))
