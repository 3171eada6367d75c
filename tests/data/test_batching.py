"""Token-budget batching: every pair exactly once, the padded budget respected, masks True at real tokens."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selfattn.data.batching import pad, padded_tokens, token_batches

lengths = st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=0, max_size=300)


@settings(max_examples=60, deadline=None)
@given(pairs=lengths, budget=st.integers(40, 600), seed=st.integers(0, 2**31), cap=st.integers(0, 20))
def test_budget_and_exactly_once(pairs, budget, seed, cap):
    src, tgt = [p[0] for p in pairs], [p[1] for p in pairs]
    batches = token_batches(src, tgt, budget, generator=torch.Generator().manual_seed(seed), max_sentences=cap)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(pairs)))  # each pair once, none lost
    for b in batches:
        assert b, "no empty batches"
        assert padded_tokens(b, src) <= budget and padded_tokens(b, tgt) <= budget
        if cap:
            assert len(b) <= cap


def test_batches_are_length_homogeneous_and_greedy():
    # 100 pairs of length 10 and 100 of length 30, budget 300: 30 + 30 + 30 + 10 short, 10 x 10 long
    src = [10] * 100 + [30] * 100
    batches = token_batches(src, src, 300, generator=torch.Generator().manual_seed(0))
    assert sorted(len(b) for b in batches) == [10] * 11 + [30] * 3
    for b in batches:
        assert len({src[i] for i in b}) == 1


def test_unshuffled_order_short_to_long_and_seed_changes_order():
    src = list(range(1, 50))
    plain = token_batches(src, src, 100, shuffle=False)
    maxes = [max(src[i] for i in b) for b in plain]
    assert maxes == sorted(maxes)
    a = token_batches(src, src, 100, generator=torch.Generator().manual_seed(1))
    b = token_batches(src, src, 100, generator=torch.Generator().manual_seed(2))
    assert sorted(map(sorted, a)) == sorted(map(sorted, b)) and a != b


def test_errors():
    with pytest.raises(ValueError, match="pair 1 has 12 source / 3 target tokens, more than max_tokens=10"):
        token_batches([1, 12], [1, 3], 10)
    with pytest.raises(ValueError, match="equal length"):
        token_batches([1], [1, 2], 10)
    with pytest.raises(ValueError, match="max_tokens must be a positive int"):
        token_batches([1], [1], 0)


def test_pad_mask_true_at_real_tokens():
    ids, mask = pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert (ids != 0).equal(mask)
    with pytest.raises(ValueError, match="shorter than the longest"):
        pad([[1, 2]], 0, length=1)
