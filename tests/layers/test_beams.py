"""Cross-attention with ``beams``: r target rows per context row give exactly what the context repeated r times
gives (float64), with key padding, query-axis masks, weights, GQA and a KV cache; wrong uses raise one line.

Reference: the same layer called on the context (and mask) repeated row by row with ``repeat_interleave`` —
what beam search did before the hypotheses of one input shared its encoder output.
"""

from __future__ import annotations

import pytest
import torch

import selfattn
from selfattn.layers.attention import MultiHeadAttention
from selfattn.layers.kv_cache import KVCache
from selfattn.models import preset

TOL = dict(rtol=1e-12, atol=1e-12)  # float64: one reassociation of a few-term sum is all that differs


def _mha(num_kv_heads=None, seed=0):
    torch.manual_seed(seed)
    return MultiHeadAttention(16, 4, num_kv_heads).double().eval()


def _masks(bc, n, m):
    pad = torch.ones(bc, 1, 1, m, dtype=torch.bool)
    pad[1, ..., -2:] = False
    per_query = torch.rand(bc, 1, n, m, generator=torch.Generator().manual_seed(3)) < 0.7
    per_query[..., 0] = True
    bias = torch.randn(bc, 4, n, m, dtype=torch.float64)
    return {"none": None, "key padding": pad, "per query": per_query, "additive": bias, "2-d": per_query[0, 0]}


@pytest.mark.parametrize("mask_kind", ["none", "key padding", "per query", "additive", "2-d"])
@pytest.mark.parametrize("num_kv_heads", [None, 2])
@pytest.mark.parametrize("r,n", [(3, 1), (2, 4), (1, 2)])
def test_beams_equal_the_context_repeated(mask_kind, num_kv_heads, r, n):
    bc, m = 3, 5
    mha = _mha(num_kv_heads)
    x = torch.randn(bc * r, n, 16, dtype=torch.float64)
    ctx = torch.randn(bc, m, 16, dtype=torch.float64)
    mask = _masks(bc, n, m)[mask_kind]
    rep = mask if mask is None or mask.dim() < 4 else mask.repeat_interleave(r, 0)
    want, w_want = mha(x, ctx.repeat_interleave(r, 0), mask=rep, need_weights=True)
    got, w_got = mha(x, ctx, mask=mask, need_weights=True, beams=r)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(w_got, w_want, **TOL)


@pytest.mark.parametrize("n", [1, 2])
def test_beams_fold_a_score_bias_as_a_mask(n):
    """An additive score bias (with or without a boolean mask) is folded like the mask: same as repeated."""
    bc, r, m = 2, 3, 5
    mha = _mha()
    x = torch.randn(bc * r, n, 16, dtype=torch.float64)
    ctx = torch.randn(bc, m, 16, dtype=torch.float64)
    bias = torch.randn(bc, 4, n, m, dtype=torch.float64)
    mask = torch.rand(bc, 1, n, m, generator=torch.Generator().manual_seed(1)) < 0.8
    for kw in (dict(score_bias=bias), dict(score_bias=bias, mask=mask)):
        rep = {key: t.repeat_interleave(r, 0) for key, t in kw.items()}
        want, _ = mha(x, ctx.repeat_interleave(r, 0), **rep)
        got, _ = mha(x, ctx, beams=r, **kw)
        torch.testing.assert_close(got, want, **TOL)


def test_beams_on_an_empty_batch_give_an_empty_output():
    out, _ = _mha()(torch.randn(0, 1, 16, dtype=torch.float64), torch.randn(0, 5, 16, dtype=torch.float64), beams=3)
    assert out.shape == (0, 1, 16)


def test_beams_with_a_cache_hold_one_row_per_context_row():
    bc, r, m = 2, 4, 6
    mha = _mha(2)
    ctx = torch.randn(bc, m, 16, dtype=torch.float64)
    cache, ref_cache = KVCache(), KVCache()
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(bc * r, 1, 16, dtype=torch.float64)
            got, _ = mha(x, ctx, cache=cache, beams=r)
            want, _ = mha(x, ctx.repeat_interleave(r, 0), cache=ref_cache)
            torch.testing.assert_close(got, want, **TOL)
    assert cache.k.shape[0] == bc and ref_cache.k.shape[0] == bc * r


@pytest.mark.parametrize("kwargs,message", [
    (dict(beams=3), "beams must be a positive int dividing the batch"),  # 4 rows
    (dict(beams=0), "beams must be a positive int"),
    (dict(beams=2, self_attention=True), "for cross-attention"),
    (dict(beams=2, ctx_rows=4), r"context must be \(batch=2"),
    (dict(beams=2, score_bias=torch.randn(1, 1, 2, 5)), r"must broadcast to \(B / beams, Hq, Nq, Nk\) = \(2, 4, 1, 5\)"),
    (dict(beams=2, mask=torch.ones(1, 2, 1, 1, 5, dtype=torch.bool)), "one row per context row"),
    (dict(beams=2, mask=torch.ones(4, 1, 1, 5, dtype=torch.bool)), r"got shape \(4, 1, 1, 5\)"),  # per beam
])
def test_bad_beams_raise_one_line(kwargs, message):
    mha = _mha()
    x = torch.randn(4, 1, 16, dtype=torch.float64)
    ctx = None if kwargs.pop("self_attention", False) else torch.randn(kwargs.pop("ctx_rows", 2), 5, 16,
                                                                       dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        mha(x, ctx, **kwargs)


def test_decode_with_beams_equals_decode_on_repeated_memory():
    """The model: ``decode(..., beams=r)`` with the memory and mask of b sources, cached over steps, equals
    decoding b*r rows against the memory repeated (the logits of every step)."""
    torch.manual_seed(0)
    model = selfattn.build_model(preset("tiny", num_kv_heads=2)).double().eval()
    src = torch.randint(1, 32, (2, 7))
    src[1, -3:] = 0  # padding
    r = 3
    tgt = torch.randint(1, 32, (2 * r, 5))
    with torch.no_grad():
        memory, mask, _ = model.encode(src)
        cache, ref = model.new_cache(), model.new_cache()
        for i in range(5):
            got = model.decode(tgt[:, i : i + 1], memory, mask, cache=cache, beams=r)[0]
            want = model.decode(tgt[:, i : i + 1], memory.repeat_interleave(r, 0), mask.repeat_interleave(r, 0),
                                cache=ref)[0]
            torch.testing.assert_close(got, want, **TOL)
    assert cache.layers[0].cross_attn.k.shape[0] == 2
