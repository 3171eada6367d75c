"""capture_attention equals the math backend's ``return_weights`` for every kind, mask and layout.

The reference is independent of the capture path: the same model run with backend "math" and
``need_weights=True`` (explicit scores, float32/64 softmax), while capture runs the model on the
fused "torch" backend (which refuses to return weights, so capture cannot fall back to O(N²)).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selfattn import build_model, preset
from selfattn.attention import math_attention
from selfattn.inspect import blockwise_weights, capture_attention

F64 = torch.float64


def _tol(dtype: torch.dtype, d: int, m: int) -> float:
    # p = exp(s - lse): an absolute error δ in s or lse moves p by ≤ p·δ ≤ δ. s is a d-term dot
    # product of O(1) values (error ~ d·eps) and lse sums m terms (error ~ log2(m)·eps).
    return 8 * torch.finfo(dtype).eps * (d + math.log2(max(m, 2)))


def _pair(cfg, **over):
    """The same weights twice: the reference on "math", the captured one on "torch"."""
    torch.manual_seed(0)
    ref = build_model(cfg.replace(attention_backend="math", **over)).to(F64).eval()
    fused = copy.deepcopy(ref)
    for mod in fused.modules():
        if hasattr(mod, "backend"):
            mod.backend = "torch"
    return ref, fused


def _tokens(b, n, vocab, pad_tail=0, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (b, n), generator=g)
    if pad_tail:
        ids[0, n - pad_tail:] = 0  # pad_id 0 -> key-padding mask built by the model
    return ids


ENCODER_VARIANTS = [
    dict(),
    dict(num_kv_heads=2),  # grouped-query: 4 query heads share 2 kv heads
    dict(positional="rope", num_kv_heads=1),
    dict(positional="alibi"),
    dict(positional="t5"),  # float bias folded with the padding mask
    dict(attention_type="sliding", window=2),
]


@pytest.mark.parametrize("over", ENCODER_VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_encoder_model_matches_math_weights(over):
    cfg = preset("tiny", kind="encoder", num_decoder_layers=0)
    ref, fused = _pair(cfg, **over)
    ids = _tokens(2, 9, cfg.vocab_size, pad_tail=3)
    _, want = ref(ids, need_weights=True)  # list of (b, h, n, m)
    got = capture_attention(fused, ids, kind="encoder")
    assert got.weights.shape == (2, 2, 4, 9, 9)
    for li in range(2):
        torch.testing.assert_close(got.weights[:, li], want[li], atol=_tol(F64, 16, 9), rtol=0)


@pytest.mark.parametrize("over", [dict(), dict(positional="rope", num_kv_heads=2),
                                  dict(positional="alibi", attention_type="sliding", window=3)],
                         ids=["plain", "rope-gqa", "alibi-window"])
def test_lm_causal_matches_math_weights_with_subsets(over):
    cfg = preset("char-lm", num_decoder_layers=2, pad_id=0)
    ref, fused = _pair(cfg, **over)
    ids = _tokens(2, 11, cfg.vocab_size)
    ids[1, 0] = 0  # padding at the start: with causal, row 0 of batch 1 may attend nothing
    _, want = ref(ids, need_weights=True)
    got = capture_attention(fused, {"tokens": ids}, kind="decoder", layers=[1], heads=[3, 0], rows=[10, 0, 4])
    expect = want[1][0][:, [3, 0]][:, :, [10, 0, 4]]  # (b, 2, 3, m)
    torch.testing.assert_close(got.weights[:, 0], expect, atol=_tol(F64, 32, 11), rtol=0)
    assert got.weights[1, 0, :, 1].abs().max() == 0  # the fully-masked row is 0, not NaN
    assert got.head(1, 3).shape == (3, 11) and got.rows == [10, 0, 4]


@pytest.mark.parametrize("kind", ["encoder", "decoder", "cross"])
def test_encoder_decoder_every_kind(kind):
    cfg = preset("tiny", num_kv_heads=2)
    ref, fused = _pair(cfg)
    src, tgt = _tokens(2, 7, cfg.vocab_size, pad_tail=2), _tokens(2, 5, cfg.vocab_size, pad_tail=1, seed=2)
    memory, mmask, enc_w = ref.encode(src, need_weights=True)
    _, dec_w = ref.decode(tgt, memory, mmask, need_weights=True)
    want = {"encoder": enc_w, "decoder": [w[0] for w in dec_w], "cross": [w[1] for w in dec_w]}[kind]
    got = capture_attention(fused, (src, tgt), kind=kind)
    for li in range(2):
        torch.testing.assert_close(got.weights[:, li], want[li], atol=_tol(F64, 16, 7), rtol=0)


def test_encoder_kind_needs_only_the_source_and_stops_early():
    cfg = preset("tiny")
    _, fused = _pair(cfg)
    calls = []
    fused.decoder.register_forward_pre_hook(lambda *a: calls.append(1))
    fused.encoder.layers[1].register_forward_pre_hook(lambda *a: calls.append(2))
    got = capture_attention(fused, _tokens(1, 6, cfg.vocab_size), kind="encoder", layers=0)
    assert got.layers == [0] and calls == []  # nothing after encoder layer 0 ran


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 9), m=st.integers(1, 9), g=st.sampled_from([1, 2]), causal=st.booleans(),
       left=st.one_of(st.none(), st.integers(0, 4)), right=st.one_of(st.none(), st.integers(0, 4)),
       use_window=st.booleans(), alibi=st.booleans(), mask_kind=st.sampled_from(["none", "bool", "float"]),
       block=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_blockwise_equals_math_backend(n, m, g, causal, left, right, use_window, alibi, mask_kind, block, seed):
    gen = torch.Generator().manual_seed(seed)
    b, h, d = 2, 4, 3
    q = torch.randn(b, h, n, d, generator=gen, dtype=F64)
    k = torch.randn(b, g, m, d, generator=gen, dtype=F64)
    v = torch.randn(b, g, m, d, generator=gen, dtype=F64)
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(b, 1, n, m, generator=gen) > 0.3
    elif mask_kind == "float":
        mask = torch.randn(1, h, n, m, generator=gen, dtype=F64)
    window = (left, right) if use_window else None
    slopes = torch.rand(h, generator=gen) if alibi else None
    _, want = math_attention(q, k, v, mask=mask, causal=causal, window=window, alibi_slopes=slopes,
                             return_weights=True)
    kv = k.repeat_interleave(h // g, dim=1)  # (b, h, m, d)
    got = blockwise_weights(q, kv, rows=list(range(n)), n=n, mask=mask, causal=causal, window=window,
                            slopes=slopes, block=block)
    torch.testing.assert_close(got, want, atol=_tol(F64, d, m), rtol=0)


def test_one_head_at_16k_tokens_on_the_fused_backend():
    """A 16,384-token LM on SDPA: captured rows equal a float64 brute force from the model's q, k."""
    n = 16384
    cfg = preset("char-lm", num_decoder_layers=1, d_model=16, num_heads=2, d_ff=32, max_len=n,
                 positional="rope", attention_backend="torch")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, n))
    rows = [0, 1, 5000, n - 1]
    got = capture_attention(model, ids, kind="decoder", heads=1, rows=rows)
    assert got.weights.shape == (1, 1, 1, 4, n)
    attn = model.decoder.layers[0].self_attn
    with torch.no_grad():  # brute force from the layer's own projections, in float64
        x = model.decoder.layers[0].sub_self.norm(model.embed(ids))
        q = attn.rope(attn._split(attn.q_proj(x), 2)).double()[0, 1, rows]  # (4, d)
        k = attn.rope(attn._split(attn.k_proj(x), 2)).double()[0, 1]  # (n, d)
    s = q @ k.T / math.sqrt(8)  # (4, n)
    s = s.masked_fill(torch.arange(n)[None, :] > torch.tensor(rows)[:, None], float("-inf"))
    want = torch.softmax(s, dim=-1)
    torch.testing.assert_close(got.weights[0, 0, 0].double(), want, atol=_tol(torch.float32, 8, n), rtol=0)


def test_bad_requests_raise_value_errors():
    lm = build_model(preset("char-lm", num_decoder_layers=1)).eval()
    ids = torch.randint(0, 65, (1, 5))
    with pytest.raises(ValueError, match="has no encoder attention"):
        capture_attention(lm, ids, kind="encoder")
    with pytest.raises(ValueError, match="kind must be one of"):
        capture_attention(lm, ids, kind="self")
    with pytest.raises(ValueError, match=r"heads must be ints in \[0, 4\)"):
        capture_attention(lm, ids, heads=[4])
    with pytest.raises(ValueError, match=r"layers must be ints in \[0, 1\)"):
        capture_attention(lm, ids, layers=3)
    seq2seq = build_model(preset("tiny")).eval()
    with pytest.raises(ValueError, match="needs inputs \\(src, tgt\\)"):
        capture_attention(seq2seq, ids.clamp(max=31), kind="cross")


def test_model_keeps_its_backend_and_never_asks_for_weights():
    """A spy backend serves the model: capture must not request weights from it (no O(N²) path)."""
    from selfattn.attention import BACKENDS, Backend

    calls = []

    def spy(q, k, v, **kw):
        calls.append(kw["return_weights"])
        return math_attention(q, k, v, **kw)

    with BACKENDS.temporarily(add=(Backend("spy-capture-test", spy, lambda call: None, priority=10**6),)):
        cfg = preset("tiny", num_encoder_layers=3, attention_backend="spy-capture-test")
        model = build_model(cfg).eval()
        src, tgt = _tokens(1, 6, cfg.vocab_size), _tokens(1, 4, cfg.vocab_size, seed=3)
        got = capture_attention(model, (src, tgt), kind="cross", layers=[1], heads=[2])
    assert got.weights.shape == (1, 1, 1, 4, 6)
    assert len(calls) >= 3 + 2 and not any(calls)  # 3 encoder layers, decoder layers 0-1 ran; none asked for weights


def test_linear_attention_layers_are_refused():
    cfg = preset("tiny", attention_type="linear")
    model = build_model(cfg).eval()
    src, tgt = _tokens(1, 5, cfg.vocab_size), _tokens(1, 3, cfg.vocab_size, seed=4)
    with pytest.raises(ValueError, match="linear attention, which forms no attention weights"):
        capture_attention(model, (src, tgt), kind="encoder")
    got = capture_attention(model, (src, tgt), kind="cross")  # cross-attention stays softmax
    torch.testing.assert_close(got.weights.sum(-1), torch.ones(1, 2, 4, 3), atol=1e-6, rtol=0)
