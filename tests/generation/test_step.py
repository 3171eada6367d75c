"""The lean decoding step (selfattn.generation.step) against the general ``model.decode``.

Reference: every lean step of a greedy and a beam search is recomputed by ``decode`` on a copy of the cache and
must give the same logits bit for bit (``torch.equal``: the same kernels in the same order), over model variants
(pre/post-norm, GQA, RoPE, learned positions, RMSNorm, GELU/SwiGLU, untied embeddings, int8, float64), on
non-finite and overflowing values (the guards route both paths alike), and the same outputs end to end. Calls the
step does not serve go to ``decode``: hooks, observers, weights, gradients, several positions, bad shapes.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selfattn.generation import beam_search, greedy, sample, step
from selfattn.generation.fast import for_inference
from selfattn.models.architectures import build_model
from selfattn.models.config import preset

SRC = [[5, 6, 7, 8, 9, 3], [4, 4], [10, 11, 12, 13, 14, 15, 16]]
KW = dict(src=SRC, bos_id=1, stop_tokens=[2], pad_id=0, max_new_tokens=7)

VARIANTS = {
    "post-norm": {},  # the preset's (the paper's)
    "pre-norm": dict(norm_first=True),  # with the stack's final norm
    "gqa": dict(num_kv_heads=2, norm_first=True),
    "rope": dict(positional="rope"),
    "learned": dict(positional="learned", max_len=64),
    "rmsnorm-gelu": dict(norm="rmsnorm", activation="gelu", norm_first=True),
    "swiglu-untied": dict(activation="swiglu", share_embeddings=False),
}


def _model(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    return build_model(preset("tiny", **kw)).to(dtype).eval()


def _same(a, b):
    """Bit for bit, a NaN matching a NaN."""
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _checked(monkeypatch):
    """Make every lean step also run ``decode`` on a copy of its cache and compare; returns the step count."""
    real, seen = step.decode_step, []

    def both(model, tgt, memory_mask, cache, beams):
        twin = copy.deepcopy(cache)
        if hasattr(model, "encode"):
            memory = tgt.new_zeros(tgt.shape[0] // beams, 1, model.cfg.d_model, dtype=cache.layers[0].cross_attn.k.dtype)
            want = model.decode(tgt, memory, memory_mask, cache=twin, beams=beams)[0]  # memory unused: cached
        else:  # a decoder-only LM
            want = model(tgt, cache=twin)
        got = real(model, tgt, memory_mask, cache, beams)
        _same(got, want)
        assert twin.offset == cache.offset
        for a, b in zip(twin.layers, cache.layers):
            _same(a.self_attn.k, b.self_attn.k)
            _same(a.self_attn.v, b.self_attn.v)
        seen.append(tgt.shape[0])
        return got

    monkeypatch.setattr("selfattn.generation.fast.decode_step", both)
    return seen


@pytest.mark.parametrize("variant", [*VARIANTS, "int8", "float64"])
def test_every_lean_step_equals_decode_bit_for_bit(monkeypatch, variant):
    dtype = torch.float64 if variant == "float64" else torch.float32
    model = _model(dtype, **VARIANTS.get(variant, {}))
    fast = for_inference(model, int8=variant == "int8")
    assert fast.lean_steps and step.step_plan(fast.model) is None
    seen = _checked(monkeypatch)
    out_greedy = greedy(fast, **KW)
    out_beam = beam_search(fast, beam_size=3, num_return=2, **KW)
    assert len(seen) >= KW["max_new_tokens"] - 1 and 9 in seen, "greedy and beam steps (3 beams x 3 sources)"
    fast.lean_steps = False  # the general path end to end: the same hypotheses and scores
    assert greedy(fast, **KW) == out_greedy
    want = beam_search(fast, beam_size=3, num_return=2, **KW)
    assert [[(h.tokens, h.logprob) for h in hs] for hs in out_beam] == [[(h.tokens, h.logprob) for h in hs] for hs in want]


@pytest.mark.parametrize("variant", ["post-norm", "pre-norm-gqa", "char-lm"])
def test_an_lm_steps_bit_for_bit_too(monkeypatch, variant):
    """Decoder-only LMs: every lean step of greedy, sampling and beam search equals the LM's forward with the cache."""
    torch.manual_seed(0)
    kw = {"pre-norm-gqa": dict(norm_first=True, num_kv_heads=2)}.get(variant, {})
    cfg = preset("char-lm", vocab_size=20) if variant == "char-lm" else preset("tiny", kind="decoder", **kw)
    fast = for_inference(build_model(cfg).eval())
    assert fast.lean_steps
    seen = _checked(monkeypatch)
    lm_kw = dict(prompt=torch.tensor([[5, 6, 7], [3, 4, 9]]), stop_tokens=[2], max_new_tokens=6)
    out = greedy(fast, **lm_kw), sample(fast, generator=torch.Generator().manual_seed(1), **lm_kw)
    hyps = beam_search(fast, beam_size=3, **{**lm_kw, "prompt": lm_kw["prompt"][:1]})
    assert len(seen) >= 5
    fast.lean_steps = False
    assert (greedy(fast, **lm_kw), sample(fast, generator=torch.Generator().manual_seed(1), **lm_kw)) == out
    assert [h.tokens for h in beam_search(fast, beam_size=3, **{**lm_kw, "prompt": lm_kw["prompt"][:1]})[0]] == \
        [h.tokens for h in hyps[0]]


@settings(max_examples=12, deadline=None)
@given(norm_first=st.booleans(), kv_heads=st.sampled_from([1, 2, 4]),
       positional=st.sampled_from(["sinusoidal", "learned", "rope"]), activation=st.sampled_from(["relu", "swiglu"]),
       beam=st.integers(1, 3), seed=st.integers(0, 2**16),
       src=st.lists(st.lists(st.integers(3, 31), min_size=1, max_size=9), min_size=1, max_size=4))
def test_drawn_models_and_batches_step_bit_for_bit(norm_first, kv_heads, positional, activation, beam, seed, src):
    """Hypothesis-drawn models (norm order, GQA, positions, activation), beams and ragged batches: every lean step
    of the search equals decode's."""
    torch.manual_seed(seed)
    model = build_model(preset("tiny", norm_first=norm_first, num_kv_heads=kv_heads, positional=positional,
                               activation=activation, max_len=64)).eval()
    fast = for_inference(model)
    kw = {**KW, "src": src, "stop_tokens": [], "max_new_tokens": 5}  # no stop token: every input takes 4 lean steps
    with pytest.MonkeyPatch.context() as mp:
        seen = _checked(mp)
        if beam == 1:
            greedy(fast, **kw)
        else:
            beam_search(fast, beam_size=beam, **kw)
    assert len(seen) == 4


@pytest.mark.parametrize("case", ["nan-memory", "inf-weight", "overflowing-logits"])
def test_non_finite_and_overflowing_values_take_the_same_route(monkeypatch, case):
    """A NaN in the encoder memory (the cross-attention keys/values), an inf in a decoder weight, or logits past
    float32's range (the guard sends the call to the reference): each lean step equals decode's."""
    model = _model()
    fast = for_inference(model)
    inner = fast.model
    with torch.no_grad():
        if case == "inf-weight":
            inner.decoder.layers[1].ff.linear2.weight[3, 5] = math.inf
        elif case == "overflowing-logits":
            inner.decoder.layers[0].cross_attn.q_proj.weight.mul_(1e19)  # D * max|q| * max|k| far above 2^127
    if case == "nan-memory":
        real = inner.encode

        def encode(src, padding=None):
            memory, mask, w = real(src, padding)
            return memory.index_fill(1, torch.tensor([1]), math.nan), mask, w  # position 1 of every source
        monkeypatch.setattr(inner, "encode", encode)
    seen = _checked(monkeypatch)
    beam_search(fast, beam_size=2, **KW)
    assert seen, "lean steps ran"


def test_the_plan_names_what_it_does_not_serve():
    assert step.step_plan(build_model(preset("tiny", kind="encoder")).eval()) is not None  # an encoder: no steps
    for kw in (dict(positional="t5"), dict(positional="alibi"), dict(attention_type="sliding", window=4),
               dict(attention_type="linear")):
        assert step.step_plan(for_inference(_model(**kw)).model) is not None, kw
    assert step.step_plan(for_inference(_model(), attention_backend="math").model) is not None
    assert "backend 'auto'" in step.step_plan(_model())  # the model's own backend; for_inference sets "torch"
    assert for_inference(_model(), compile=True, compile_backend="aot_eager").lean_steps is False


def _first_steps(fast):
    """Encode SRC, run the first (general) step, fan out to 2 beams: (memory, mask, cache, next tokens)."""
    src = torch.tensor([s + [0] * (7 - len(s)) for s in SRC])
    memory, mask, _ = fast.encode(src, src != 0)
    cache = fast.new_cache()
    fast.decode(torch.ones(3, 1, dtype=torch.long), memory, mask, cache=cache)
    cache.reorder(torch.arange(3).repeat_interleave(2), cross=False)
    return memory, mask, cache, torch.full((6, 1), 5)


def test_calls_it_does_not_serve_go_to_decode(monkeypatch):
    fast = for_inference(_model())
    calls = []
    monkeypatch.setattr("selfattn.generation.fast.decode_step", lambda *a: calls.append(a) or step.decode_step(*a))
    with torch.no_grad():
        memory, mask, cache, tgt = _first_steps(fast)
        fast.decode(tgt, memory, mask, cache=cache, beams=2)
        assert len(calls) == 1  # the served step
        with pytest.raises(ValueError, match="SDPA cannot return the attention weights"):  # decode's own answer
            fast.decode(tgt, memory, mask, cache=cache, beams=2, need_weights=True)
        fast.decode(torch.full((6, 2), 5), memory, mask, cache=cache, beams=2)  # two positions
        hits = []
        handle = fast.model.decoder.layers[0].ff.linear1.register_forward_hook(lambda *a: hits.append(1))
        fast.decode(tgt, memory, mask, cache=cache, beams=2)
        handle.remove()
        assert hits == [1]
        fast.model.decoder.layers[1].cross_attn.observer = lambda *a, **k: hits.append(2)
        fast.decode(tgt, memory, mask, cache=cache, beams=2)
        del fast.model.decoder.layers[1].cross_attn.observer
        assert hits == [1, 2]
        with pytest.raises(ValueError, match="KV cache holds batch size 6"):
            fast.decode(tgt[:4], memory, mask, cache=cache, beams=2)  # rows the cache does not hold: decode's error
    with torch.enable_grad():
        fast.decode(tgt, memory, mask, cache=cache, beams=2)
    assert len(calls) == 1
