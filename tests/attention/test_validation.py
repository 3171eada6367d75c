"""Bad input gets one clear ValueError ("expected X, got Y"), never a deep torch error or a silent answer.

Each case here once surfaced as a ZeroDivisionError, TypeError, IndexError, a reshape error, or a
silently wrong result (issue 12 §1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import selfattn
from selfattn.attention import BACKENDS
from selfattn.attention.spec import validate_call
from selfattn.layers.attention import MultiHeadAttention
from selfattn.layers.kv_cache import KVCache
from selfattn.models.config import ModelConfig
from selfattn.models.transformer import Embeddings


def _qkv(b=1, h=2, n=4, m=4, d=8):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, h, n, d, generator=g), torch.randn(b, h, m, d, generator=g),
            torch.randn(b, h, m, d, generator=g))


@pytest.mark.parametrize("backend", ["auto", "math", "torch", "flash"])
def test_zero_head_dim_is_rejected(backend):
    q, k, v = _qkv(d=0)
    with pytest.raises(ValueError, match="head dims must be >= 1"):
        selfattn.attention(q, k, v, backend=backend)


@pytest.mark.parametrize("causal", ["yes", 1, None, np.bool_(True)])
def test_causal_must_be_a_bool(causal):
    with pytest.raises(ValueError, match="causal must be a bool"):
        selfattn.attention(*_qkv(), causal=causal)


@pytest.mark.parametrize("window", [(True, False), (1.5, 0), (-1, 2), (1, 2, 3), 4])
def test_bad_windows_are_rejected(window):
    with pytest.raises(ValueError, match="window"):
        selfattn.attention(*_qkv(), window=window)


def test_numpy_integer_windows_are_accepted():
    q, k, v = _qkv()
    a = selfattn.attention(q, k, v, window=(np.int64(1), np.int32(0)), backend="math")
    b = selfattn.attention(q, k, v, window=(1, 0), backend="math")
    assert torch.equal(a, b)


@pytest.mark.parametrize("slopes, match", [
    (torch.ones(3), r"shape \(Hq,\) = \(2,\)"),
    (torch.ones(2, dtype=torch.int64), "floating"),
    (torch.tensor([0.5, float("nan")]), "finite"),
    (torch.tensor([0.5, float("inf")]), "finite"),
    ([0.5, 0.25], "tensor"),
])
def test_bad_alibi_slopes_are_rejected(slopes, match):
    with pytest.raises(ValueError, match=match):
        selfattn.attention(*_qkv(), alibi_slopes=slopes)


def test_alibi_slopes_on_another_device_are_rejected():
    q, k, v = (t.to("meta") for t in _qkv())
    with pytest.raises(ValueError, match="device"):
        selfattn.attention(q, k, v, alibi_slopes=torch.ones(2), backend="math")


@pytest.mark.parametrize("scale", [True, False, "1", float("nan"), 0, -1.0, float("inf")])
def test_bad_scales_are_rejected(scale):
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        selfattn.attention(*_qkv(), scale=scale)


@pytest.mark.parametrize("scale", [np.float32(0.25), np.float64(0.25), 0.25])
@pytest.mark.parametrize("backend", ["math", "torch", "flash"])
def test_numpy_scales_are_accepted_alike(scale, backend):
    q, k, v = _qkv()
    out = selfattn.attention(q, k, v, scale=scale, backend=backend)
    assert torch.allclose(out, selfattn.attention(q, k, v, scale=0.25, backend="math"), atol=1e-6)


@pytest.mark.parametrize("dropout_p", [True, "0.1", 1.0, -0.1])
def test_bad_dropout_is_rejected(dropout_p):
    with pytest.raises(ValueError, match="dropout_p"):
        selfattn.attention(*_qkv(), dropout_p=dropout_p)


@pytest.mark.parametrize("backend", sorted(set(BACKENDS) - {"triton"}))
@pytest.mark.parametrize("shape", [dict(n=0), dict(b=0), dict(m=0)], ids=["Nq=0", "B=0", "Nk=0"])
def test_empty_calls_give_the_empty_or_dead_result(backend, shape):
    q, k, v = (t.requires_grad_() for t in _qkv(**shape))
    dtype = {"cpu_bf16": torch.bfloat16, "torch_f32": torch.bfloat16}.get(backend, torch.float32)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    call = validate_call(
        q, k, v, mask=None, causal=False, scale=None, dropout_p=0.0, window=None, alibi_slopes=None,
        return_weights=False)
    if BACKENDS[backend].supports(call) is not None:
        pytest.skip(BACKENDS[backend].supports(call))
    out = selfattn.attention(q, k, v, backend=backend)
    assert out.shape == (q.shape[0], q.shape[1], q.shape[2], v.shape[3]) and not out.any()
    out.sum().backward()  # zero gradients, no error


def test_multihead_attention_rejects_a_2d_input():
    mha = MultiHeadAttention(16, 2)
    with pytest.raises(ValueError, match=r"x must be \(batch, length, d_model=16\), got shape \(5, 16\)"):
        mha(torch.randn(5, 16))


def test_multihead_attention_rejects_zero_heads():
    with pytest.raises(ValueError, match="num_heads must be a positive int, got 0"):
        MultiHeadAttention(16, 0)


def test_kv_cache_reused_with_another_batch_size_is_rejected():
    mha = MultiHeadAttention(16, 2)
    cache = KVCache()
    mha(torch.randn(2, 3, 16), cache=cache, causal=True)
    with pytest.raises(ValueError, match="KV cache holds batch size 2, got input of batch size 3"):
        mha(torch.randn(3, 1, 16), cache=cache, causal=True)
    with pytest.raises(ValueError, match="differ in batch, heads or head dim"):
        cache.append(torch.randn(3, 2, 1, 8), torch.randn(3, 2, 1, 8))


def test_token_type_ids_out_of_range_are_rejected():
    cfg = ModelConfig(d_model=16, num_heads=2, type_vocab_size=2, max_len=32, positional="learned")
    emb = Embeddings(cfg, 10)
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"token type ids must lie in \[0, 2\), got range \[0, 2\]"):
        emb(tokens, token_types=torch.tensor([[0, 1, 2, 0]]))
    with pytest.raises(ValueError, match="token_types must be integer ids shaped like tokens"):
        emb(tokens, token_types=torch.zeros(1, 3, dtype=torch.long))


_SEG = torch.zeros(1, 4, dtype=torch.int64)


@pytest.mark.parametrize("segment_ids, match", [
    (_SEG, "pair"),
    ((_SEG,), "pair"),
    ((_SEG, [0, 0, 0, 0]), "k_seg must be a tensor"),
    ((torch.zeros(1, 3, dtype=torch.int64), _SEG), r"q_seg must have shape \(1, 4\)"),
    ((_SEG, torch.zeros(2, 4, dtype=torch.int64)), r"k_seg must have shape \(1, 4\)"),
    ((_SEG.float(), _SEG), "integer"),
    ((_SEG, _SEG.bool()), "integer"),
    ((_SEG, _SEG.to("meta")), "device"),
])
def test_bad_segment_ids_are_rejected(segment_ids, match):
    with pytest.raises(ValueError, match=match):
        selfattn.attention(*_qkv(), segment_ids=segment_ids)


def test_segments_are_part_of_the_call_signature():
    q, k, v = _qkv()
    plain = validate_call(q, k, v, mask=None, causal=False, scale=None, dropout_p=0.0, window=None,
                          alibi_slopes=None, return_weights=False)
    packed = validate_call(q, k, v, mask=None, causal=False, scale=None, dropout_p=0.0, window=None,
                           alibi_slopes=None, return_weights=False, segment_ids=(_SEG, _SEG))
    assert packed.segments and not plain.segments and packed != plain


def test_a_validated_signature_is_reused_and_still_refuses_lookalikes():
    """validate_call remembers validated signatures (metadata and flags, never values): a repeat returns the same
    call, while arguments equal to a good one but of another type (``causal=1``, ``scale=True``), another grad
    mode, or ALiBi slopes (whose values are checked) are validated afresh."""
    q = k = v = torch.randn(1, 2, 3, 4)
    good = dict(mask=None, causal=True, scale=None, dropout_p=0.0, window=None, alibi_slopes=None,
                return_weights=False)
    first = validate_call(q, k, v, **good)
    assert validate_call(q, k, v, **good) is first
    for bad, match in ((dict(causal=1), "causal must be a bool"), (dict(scale=True), "scale must be"),
                       (dict(dropout_p=False), "dropout_p must be"), (dict(window=(True, 0)), "window sizes")):
        validate_call(q, k, v, **{**good, "scale": 1.0, "window": (1, 0)})  # the good lookalike, remembered
        with pytest.raises(ValueError, match=match):
            validate_call(q, k, v, **{**good, "scale": 1.0, "window": (1, 0), **bad})
    qg = torch.randn(1, 2, 3, 4, requires_grad=True)
    assert validate_call(qg, k, v, **good).requires_grad
    with torch.no_grad():
        assert not validate_call(qg, k, v, **good).requires_grad
    slopes = torch.ones(2)
    validate_call(q, k, v, **{**good, "alibi_slopes": slopes})
    slopes[0] = float("nan")  # same metadata, a value the check refuses
    with pytest.raises(ValueError, match="alibi_slopes must be finite"):
        validate_call(q, k, v, **{**good, "alibi_slopes": slopes})
