"""Each positional encoding against a direct computation of its formula."""

from __future__ import annotations

import math

import pytest
import torch

from selfattn.attention import alibi_bias
from selfattn.positional import (
    LearnedPositions,
    RotaryEmbedding,
    SinusoidalPositions,
    T5RelativeBias,
    alibi_slopes,
    sinusoidal_table,
    t5_bucket,
)


@pytest.mark.parametrize("d", [8, 9, 512])
def test_sinusoidal_is_the_papers_formula(d):
    n = 50
    pe = sinusoidal_table(n, d)
    for pos in range(n):
        for col in range(d):
            i = col // 2
            angle = pos / 10000 ** (2 * i / d)
            want = math.sin(angle) if col % 2 == 0 else math.cos(angle)
            assert abs(pe[pos, col].item() - want) <= 2 * torch.finfo(torch.float32).eps * max(1, abs(want))


def test_sinusoidal_module_offsets_and_grows():
    mod = SinusoidalPositions(16, max_len=8)
    torch.testing.assert_close(mod(4, offset=3), sinusoidal_table(7, 16)[3:7])
    assert torch.equal(mod(20, offset=5), sinusoidal_table(25, 16)[5:])  # beyond max_len: grows


def test_learned_positions_rejects_too_long():
    mod = LearnedPositions(4, max_len=10)
    assert mod(10).shape == (10, 4)
    with pytest.raises(ValueError, match="cover 10 positions"):
        mod(4, offset=8)


def test_rope_is_pairwise_rotation():
    d, base = 8, 10000.0
    rope = RotaryEmbedding(d, base)
    x = torch.randn(1, 2, 6, d, dtype=torch.float64)
    got = rope(x.float(), offset=3).double()
    want = x.clone()
    for p in range(6):
        pos = p + 3
        for i in range(d // 2):
            theta = pos * base ** (-2 * i / d)
            a, b = x[..., p, i], x[..., p, i + d // 2]
            want[..., p, i] = a * math.cos(theta) - b * math.sin(theta)
            want[..., p, i + d // 2] = b * math.cos(theta) + a * math.sin(theta)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_on_relative_offset_only():
    rope = RotaryEmbedding(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    s1 = (rope(q, offset=5) * rope(k, offset=2)).sum()
    s2 = (rope(q, offset=105) * rope(k, offset=102)).sum()
    torch.testing.assert_close(s1, s2, rtol=1e-4, atol=1e-4)


def test_rope_rejects_odd_dim():
    with pytest.raises(ValueError, match="even head dim"):
        RotaryEmbedding(7)


def test_alibi_slopes_match_paper():
    # Press et al.: for 8 heads the slopes are 1/2, 1/4, ..., 1/256.
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # non-power of two (12): the 8-head slopes, then every other slope of the 16-head sequence
    s16 = [2 ** (-8 / 16 * (i + 1)) for i in range(16)]
    want = [2.0 ** -(i + 1) for i in range(8)] + s16[0::2][:4]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(want))


def test_alibi_bias_formula_bottom_right():
    slopes = torch.tensor([0.5, 0.25])
    b = alibi_bias(slopes, 2, 4)  # queries sit at key positions 2 and 3
    for h in range(2):
        for i in range(2):
            for j in range(4):
                assert b[0, h, i, j].item() == pytest.approx(-slopes[h].item() * abs(i + 2 - j))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_bucket_equals_transformers(bidirectional):
    T5Attention = pytest.importorskip("transformers.models.t5.modeling_t5").T5Attention
    rel = torch.arange(-300, 300).unsqueeze(0)
    want = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=32, max_distance=128)
    assert torch.equal(t5_bucket(rel, bidirectional, 32, 128), want)


def test_t5_bias_uses_bucket_of_key_minus_query():
    mod = T5RelativeBias(3, bidirectional=True)
    bias = mod(4, 6)  # (1, 3, 4, 6)
    for i in range(4):
        for j in range(6):
            bucket = t5_bucket(torch.tensor(j - (i + 2)), True, 32, 128)
            torch.testing.assert_close(bias[0, :, i, j], mod.embedding.weight[bucket])
