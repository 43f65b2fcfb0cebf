"""oprd.positions against hand-worked batches: left-padded prompts, right-padded responses, mixed lengths."""

import pytest
import torch

from oprd.positions import select_positions

# 3 samples, S = 8. Prompts are left-padded into columns 0..2, responses start at column 3.
#   sample 0: 4 response tokens (cols 3..6)   -> flat rows 3..6
#   sample 1: empty response
#   sample 2: 5 response tokens (cols 3..7)   -> flat rows 19..23
MASK = torch.tensor([
    [0, 0, 0, 1, 1, 1, 1, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 1, 1, 1, 1, 1],
])


def rows_of(mask, mode, k=None, weighting="token"):
    rows, weights = select_positions(mask, mode, k, weighting=weighting)
    assert rows.dtype == torch.int64 and weights.dtype == torch.float32 and rows.shape == weights.shape
    return rows.tolist(), weights


def test_all_mode_selects_every_response_token():
    rows, w = rows_of(MASK, "all")
    assert rows == [3, 4, 5, 6, 19, 20, 21, 22, 23]
    torch.testing.assert_close(w, torch.full((9,), 1 / 9))


def test_last_mode_takes_the_last_valid_token_and_skips_empty_samples():
    rows, w = rows_of(MASK, "last")
    assert rows == [6, 23]
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5]))


def test_last_k_clips_to_short_responses_without_padding():
    rows, _ = rows_of(MASK, "last_k", 2)
    assert rows == [5, 6, 22, 23]
    rows, _ = rows_of(MASK, "last_k", 5)  # sample 0 has only 4
    assert rows == [3, 4, 5, 6, 19, 20, 21, 22, 23]
    rows, _ = rows_of(MASK, "last_k", 2000)
    assert rows == [3, 4, 5, 6, 19, 20, 21, 22, 23]


def test_first_k():
    rows, _ = rows_of(MASK, "first_k", 3)
    assert rows == [3, 4, 5, 19, 20, 21]


def test_sample_weighting_is_a_mean_of_per_sample_means_over_non_empty_samples():
    rows, w = rows_of(MASK, "last_k", 5, weighting="sample")
    expected = [1 / 8] * 4 + [1 / 10] * 5  # two non-empty samples: 1/(4*2), 1/(5*2)
    torch.testing.assert_close(w, torch.tensor(expected))
    assert abs(float(w.sum()) - 1) < 1e-6


def test_token_weighting_of_last_k_batch():
    rows, w = rows_of(MASK, "last_k", 3)
    assert rows == [4, 5, 6, 21, 22, 23]
    torch.testing.assert_close(w, torch.full((6,), 1 / 6))


def test_bool_mask_and_non_contiguous_responses():
    mask = torch.tensor([[1, 0, 1, 1, 0, 1]], dtype=torch.bool)  # a gap: still ordered by position
    assert rows_of(mask, "last_k", 2)[0] == [3, 5]
    assert rows_of(mask, "first_k", 2)[0] == [0, 2]
    assert rows_of(mask, "last")[0] == [5]


def test_all_empty_batch_gives_empty_rows_and_weights():
    for mode, k in [("all", None), ("last", None), ("last_k", 4), ("first_k", 1)]:
        for weighting in ("token", "sample"):
            rows, w = rows_of(torch.zeros(2, 5, dtype=torch.long), mode, k, weighting)
            assert rows == [] and w.numel() == 0


def test_random_batches_agree_with_a_per_sample_loop():
    gen = torch.Generator().manual_seed(7)
    for _ in range(20):
        b, s = int(torch.randint(1, 5, (1,), generator=gen)), int(torch.randint(1, 12, (1,), generator=gen))
        prompt = torch.randint(0, s + 1, (b,), generator=gen)
        length = torch.randint(0, s + 1, (b,), generator=gen)
        mask = torch.zeros(b, s, dtype=torch.long)
        for i in range(b):
            mask[i, prompt[i]:min(s, prompt[i] + length[i])] = 1
        k = int(torch.randint(1, 6, (1,), generator=gen))
        expected = []
        for i in range(b):
            valid = [i * s + j for j in range(s) if mask[i, j]]
            expected += valid[-k:] if valid else []
        assert rows_of(mask, "last_k", k)[0] == expected


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(response_mask=[[1, 0]]), TypeError, "response_mask"),
    (dict(response_mask=torch.ones(4, dtype=torch.long)), ValueError, r"response_mask.*\[B, S\]"),
    (dict(response_mask=torch.ones(2, 3)), TypeError, "response_mask.*dtype"),
    (dict(response_mask=torch.tensor([[0, 2]])), ValueError, "response_mask.*0 and 1"),
    (dict(response_mask=MASK, mode="middle"), ValueError, "mode"),
    (dict(response_mask=MASK, mode="last_k"), ValueError, "`k`"),
    (dict(response_mask=MASK, mode="first_k", k=0), ValueError, "`k`"),
    (dict(response_mask=MASK, mode="last_k", k=2.0), ValueError, "`k`"),
    (dict(response_mask=MASK, mode="all", k=3), ValueError, "`k` is only used"),
    (dict(response_mask=MASK, weighting="batch"), ValueError, "weighting"),
])
def test_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        select_positions(**kwargs)
