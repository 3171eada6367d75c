"""torch.compile(fullgraph=True) of training (forward + backward) and of a cached decoding step: no graph
breaks, results equal to eager.

Graph breaks are counted with ``torch._dynamo.explain``; equality runs the compiled graphs through AOT
autograd (backend "aot_eager": the traced forward and backward, without Inductor's code generation, to keep
the test fast). Same float32 ops as eager, so 1e-5 absolute (1e-6 seen) on losses, logits and gradients.
"""

import pytest
import torch
import torch._dynamo as dynamo
from export_helpers import padded_batch, tiny_model

ATOL = 1e-5
# attention paths by name that trace ("auto" today breaks at the fused C kernel's CPU-flag probe)


def _loss(model, kind, src, tgt):
    logits = model(src, tgt) if kind == "encoder-decoder" else model(src)  # (b, n, V)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten() if kind == "encoder-decoder"
                                             else src.flatten(), ignore_index=0)


@pytest.mark.parametrize("kind,backend", [("encoder-decoder", "torch"), ("decoder", "math")])
def test_training_step_compiles_to_one_graph_equal_to_eager(kind, backend):
    model = tiny_model(kind, attention_backend=backend).train()
    src, _ = padded_batch(3, 9, pad_rows=(0, 1))
    tgt, _ = padded_batch(3, 7, pad_rows=(2,), seed=2)
    dynamo.reset()
    explain = dynamo.explain(lambda: _loss(model, kind, src, tgt).backward())()
    assert explain.graph_break_count == 0, explain.break_reasons
    model.zero_grad()
    want = _loss(model, kind, src, tgt)
    want.backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = _loss(compiled, kind, src, tgt)
    got.backward()
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    for g, w in zip((p.grad for p in model.parameters()), want_grads):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)


def test_dropout_training_compiles_without_breaks():
    model = tiny_model("encoder-decoder", attention_backend="torch", dropout=0.1, attention_dropout=0.1).train()
    src, _ = padded_batch(2, 6)
    tgt, _ = padded_batch(2, 5, seed=2)
    dynamo.reset()
    explain = dynamo.explain(lambda: _loss(model, "encoder-decoder", src, tgt).backward())()
    assert explain.graph_break_count == 0, explain.break_reasons


def test_cached_decoding_step_compiles_equal_to_eager():
    model = tiny_model("encoder-decoder", attention_backend="torch")
    src, src_padding = padded_batch(3, 8, pad_rows=(0,))
    tgt, _ = padded_batch(3, 4, pad_rows=(), seed=2)
    with torch.no_grad():
        want = model(src, tgt, src_padding)  # (b, n, V) teacher-forced, uncached
        memory, mask, _ = model.encode(src, src_padding)

        def step(tokens, cache):
            return model.decode(tokens, memory, mask, cache=cache)[0]  # (b, 1, V)

        cache = model.new_cache()
        step(tgt[:, :1], cache)  # fills the cross-attention cache, one self-attention position
        dynamo.reset()
        probe = model.new_cache()
        step(tgt[:, :1], probe)
        explain = dynamo.explain(step)(tgt[:, 1:2], probe)
        assert explain.graph_break_count == 0, explain.break_reasons
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        for i in range(1, tgt.shape[1]):
            got = compiled(tgt[:, i:i + 1], cache)
            torch.testing.assert_close(got[:, 0], want[:, i], atol=ATOL, rtol=0)
