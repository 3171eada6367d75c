"""Fast decoding (selfattn.generation.fast): a compiled decoder step gives the eager model's greedy and beam
outputs; int8 dynamic quantization replaces every linear layer and stays close to float32.

The compiled step runs through torch.compile's "aot_eager" backend here (the traced graph without Inductor's
code generation, which takes minutes on a shared 2-core CPU); float32 throughout, so the logits agree to
rounding and the chosen tokens are identical.
"""

import pytest
import torch
from torch import nn

from selfattn.generation import beam_search, greedy
from selfattn.generation.fast import for_inference, quantize_int8
from selfattn.models.architectures import build_model
from selfattn.models.config import preset

SRC = [[5, 6, 7, 8, 9, 3], [4, 4], [10, 11, 12, 13, 14, 15, 16]]
KW = dict(src=SRC, bos_id=1, stop_tokens=[2], pad_id=0, max_new_tokens=6)


def _model(**kw):
    torch.manual_seed(0)
    return build_model(preset("tiny", **kw)).eval()


def test_compiled_step_greedy_and_beam_equal_eager():
    model = _model()
    fast = for_inference(model, compile=True, compile_backend="aot_eager")
    assert greedy(fast, **KW) == greedy(model, **KW)
    want = beam_search(model, beam_size=3, num_return=2, **KW)
    got = beam_search(fast, beam_size=3, num_return=2, **KW)
    assert [[h.tokens for h in hs] for hs in got] == [[h.tokens for h in hs] for hs in want]
    for hs, ws in zip(got, want):
        for h, w in zip(hs, ws):
            assert h.score == pytest.approx(w.score, abs=1e-5)


def test_int8_quantizes_every_linear_and_stays_close():
    model = _model()
    q = quantize_int8(model)
    assert not any(type(m) is nn.Linear for m in q.modules())  # every linear replaced ...
    assert any(type(m) is nn.Linear for m in model.modules())  # ... in a copy
    src = torch.tensor(SRC[0])[None]  # (1, m)
    tgt = torch.tensor([[1, 5, 6, 7]])  # (1, n)
    with torch.no_grad():
        want, got = model(src, tgt), q(src, tgt)
    rel = float((got - want).norm() / want.norm())
    # int8 per-tensor weights and per-call activations: ~0.4% relative error per matmul, a few % over the stack
    assert 0 < rel < 0.05, rel
    fast = for_inference(model, int8=True)
    assert len(greedy(fast, **KW)) == len(SRC)


def test_for_inference_rejects_other_modules():
    with pytest.raises(ValueError, match="expected an encoder–decoder or decoder-only"):
        for_inference(nn.Linear(2, 2))


def test_compiled_beam_search_keeps_its_graphs_across_batches():
    """Decoding batches of other sizes and lengths with a compiled step reuses the graphs of the first batch
    (dynamic sizes; the memory copied per beam, see ``InferenceModel.shares_memory_across_beams``)."""
    from torch._dynamo.utils import counters

    fast = for_inference(_model(), compile=True, compile_backend="aot_eager")
    assert fast.shares_memory_across_beams is False
    torch._dynamo.reset()
    counters.clear()
    for n, src in enumerate([SRC, SRC[:2], [[5, 6, 7, 8], [9, 9, 9], [3, 4], [6]], [[7] * 9] * 5]):
        beam_search(fast, **{**KW, "src": src}, beam_size=3)
        if n == 0:
            first = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == first


@pytest.mark.parametrize("kind", ["encoder-decoder", "decoder"])
def test_for_inference_lays_out_the_copy_for_decoding_with_the_same_outputs(kind):
    """Every self-attention fused (one q/k/v matmul), the tied output weight column-major (still the embedding's),
    the original untouched; greedy and beam outputs equal the original's, logits to float32 rounding."""
    model = _model(kind=kind)
    inner = for_inference(model).model
    layers = [*getattr(inner, "encoder", nn.Module()).modules(), *inner.decoder.modules()]
    attns = [m.self_attn for m in layers if hasattr(m, "self_attn")]
    assert attns and all(a.qkv_proj is not None for a in attns)
    assert all(m.self_attn.qkv_proj is None for m in model.modules() if hasattr(m, "self_attn"))
    w = inner.output.weight
    assert w.stride() == (1, w.shape[0]) and torch.equal(w, model.output.weight)
    embed = inner.tgt_embed if kind == "encoder-decoder" else inner.embed
    assert embed.token.weight is w  # still tied
    kw = KW if kind == "encoder-decoder" else dict(prompt=torch.tensor([[5, 6, 7]]), stop_tokens=[2], max_new_tokens=6)
    fast = for_inference(model)
    assert greedy(fast, **kw) == greedy(model, **kw)
    got, want = beam_search(fast, beam_size=3, num_return=2, **kw), beam_search(model, beam_size=3, num_return=2, **kw)
    assert [[h.tokens for h in hs] for hs in got] == [[h.tokens for h in hs] for hs in want]
    tokens = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        if kind == "encoder-decoder":
            src = torch.tensor(SRC[0])[None]  # (1, m)
            a, b = inner(src, tokens), model(src, tokens)
        else:
            a, b = inner(tokens), model(tokens)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # float32, the same products in other blocking orders
