import random

import pytest
import torch

from selfattn.data.packing import pack_first_fit, segment_layout, segment_mask


def test_each_pair_once_capacities_respected_deterministic() -> None:
    rng = random.Random(0)
    lengths = [(rng.randint(1, 20), rng.randint(1, 20)) for _ in range(300)]
    rows = pack_first_fit(lengths, 40, 40)
    assert sorted(i for r in rows for i in r) == list(range(300))
    for r in rows:
        assert sum(lengths[i][0] for i in r) <= 40 and sum(lengths[i][1] for i in r) <= 40
    assert rows == pack_first_fit(lengths, 40, 40)
    # packing must beat one pair per row
    assert len(rows) < 300 // 2


def test_too_long_pair_rejected() -> None:
    with pytest.raises(ValueError, match="pair 1"):
        pack_first_fit([(3, 3), (50, 3)], 40, 40)


def test_segment_layout() -> None:
    ids, pos = segment_layout([2, 3], 7)
    assert ids.tolist() == [1, 1, 2, 2, 2, 0, 0]
    assert pos.tolist() == [0, 1, 0, 1, 2, 0, 0]
    with pytest.raises(ValueError):
        segment_layout([4, 4], 7)
    assert torch.equal(segment_layout([], 2)[0], torch.zeros(2, dtype=torch.long))


def test_segment_mask_brute_force() -> None:
    q = torch.tensor([[1, 1, 2, 2, 2, 0]])
    got = segment_mask(q, q, causal=True)
    assert got.shape == (1, 1, 6, 6)
    for i in range(6):
        for j in range(6):
            assert bool(got[0, 0, i, j]) == (q[0, i] == q[0, j] and j <= i)
    assert bool(segment_mask(q, q).any(-1).all())
    with pytest.raises(ValueError, match="expected"):
        segment_mask(q[0], q)
