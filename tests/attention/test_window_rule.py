"""The window rule, stated once in attention/spec.py, against a brute-force reading of its definition.

Query i of n sits at key position pos = i + (m - n) (bottom-right aligned); it may attend key j when
pos - left <= j <= pos + right (None = unlimited), and causal adds j <= pos.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from selfattn.attention.structure import structural_mask, window_allows, window_sides

WINDOWS = [None, (None, None), (0, 0), (2, None), (None, 1), (1, 3), (3, 0), (0, 2)]


def brute(n: int, m: int, causal: bool, window) -> torch.Tensor:
    left, right = window if window is not None else (None, None)
    out = torch.zeros(n, m, dtype=torch.bool)
    for i, j in itertools.product(range(n), range(m)):
        pos = i + m - n
        out[i, j] = ((not causal or j <= pos) and (left is None or j >= pos - left)
                     and (right is None or j <= pos + right))
    return out


@pytest.mark.parametrize("n,m", [(1, 1), (4, 4), (3, 7), (6, 2)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", WINDOWS)
def test_window_helpers_and_structural_mask_equal_brute_force(n, m, causal, window):
    want = brute(n, m, causal, window)
    pos = torch.arange(n).unsqueeze(1) + (m - n)  # (n, 1)
    delta = torch.arange(m).unsqueeze(0) - pos  # (n, m)
    got = window_allows(delta, *window_sides(causal, window))
    torch.testing.assert_close(torch.ones(n, m, dtype=torch.bool) if got is None else got, want)
    assert (got is None) == bool(want.all() and window_sides(causal, window) == (None, None))
    sm = structural_mask(n, m, causal=causal, window=window, device="cpu")
    torch.testing.assert_close(torch.ones(n, m, dtype=torch.bool) if sm is None else sm, want)
