"""What "auto" picks once "flash" is registered, and that the reasons it gives are the real ones."""

from __future__ import annotations

import torch

import selfattn
from selfattn.attention.flash import AUTO_MIN_SCORES


def _qkv(n, m=None):
    m = n if m is None else m
    return torch.randn(1, 2, n, 8), torch.randn(1, 2, m, 8), torch.randn(1, 2, m, 8)


def test_auto_prefers_sdpa_when_it_needs_no_mask():
    q, k, v = _qkv(2048)
    choice = selfattn.explain_backend(q, k, v, causal=True)
    assert choice.chosen == "torch"
    assert "SDPA serves this call without a materialised mask" in choice.reasons["flash"]


def test_auto_picks_flash_where_sdpa_needs_an_n_by_m_mask():
    n = int(AUTO_MIN_SCORES**0.5)
    q, k, v = _qkv(n)
    pad = torch.ones(1, 1, 1, n, dtype=torch.bool)
    for kwargs in (dict(mask=pad, causal=True), dict(window=(64, 0)),
                   dict(alibi_slopes=torch.ones(2))):
        choice = selfattn.explain_backend(q, k, v, **kwargs)
        assert choice.chosen == "flash", kwargs
        assert choice.reasons["torch"] == "lower priority than 'flash'"


def test_auto_falls_back_with_honest_reasons():
    q, k, v = _qkv(16)
    choice = selfattn.explain_backend(q, k, v, window=(2, 0))
    assert choice.chosen == "torch" and "short sequences" in choice.reasons["flash"]
    n = int(AUTO_MIN_SCORES**0.5)
    q, k, v = _qkv(n)
    general = torch.ones(n, n, dtype=torch.bool)
    choice = selfattn.explain_backend(q, k, v, mask=general)
    assert choice.chosen == "torch" and "general boolean mask" in choice.reasons["flash"]
    choice = selfattn.explain_backend(q[:, :, :4], k[:, :, :4], v[:, :, :4], return_weights=True)
    assert choice.chosen == "math" and "weights" in choice.reasons["flash"]


def test_auto_result_equals_math_on_a_flash_case():
    n = int(AUTO_MIN_SCORES**0.5)
    q, k, v = (t.double() for t in _qkv(n))
    window = (100, 0)
    assert selfattn.explain_backend(q, k, v, window=window).chosen == "flash"
    # compare on the last rows only: the math reference is n x n
    out = selfattn.attention(q, k, v, window=window)
    ref = selfattn.attention(q[:, :, -64:], k, v, window=window, backend="math")
    torch.testing.assert_close(out[:, :, -64:], ref, atol=1e-12, rtol=1e-12)
