"""The explain walkthrough: its numbers are the model's own numbers, recomputed in the open.

Independent references: the model's forward (its attention sublayer output, via a hook inside
explain but computed by the model's own backend), the math backend's returned weights, and the
paper's sinusoid formula written out here.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from rich.console import Console

from selfattn import ModelConfig, build_model
from selfattn.inspect.explain import ExplainOptions, explain, explain_steps

EPS32 = torch.finfo(torch.float32).eps


def _model(**over):
    base = dict(kind="encoder", vocab_size=12, d_model=8, num_heads=2, d_ff=16, num_encoder_layers=2,
                num_decoder_layers=0, dropout=0.0, pad_id=None, attention_backend="math")
    base.update(over)
    if base["kind"] == "decoder":
        base.update(num_encoder_layers=0, num_decoder_layers=2)
    torch.manual_seed(3)
    return build_model(ModelConfig(**base)).eval()


CASES = [
    dict(),
    dict(kind="decoder", positional="rope", num_heads=4, num_kv_heads=2),
    dict(positional="alibi", attention_type="sliding", window=1),
    dict(positional="t5", norm_first=True),
    dict(kind="encoder-decoder", num_decoder_layers=2),
]


@pytest.mark.parametrize("over", CASES, ids=["paper", "lm-rope-gqa", "alibi-window", "t5-prenorm", "seq2seq-dec"])
@pytest.mark.parametrize("layer,head", [(0, 1), (1, 0)])
def test_steps_reproduce_the_model(over, layer, head):
    model = _model(**over)
    ids = torch.tensor([[1, 2, 3, 4, 5, 3]])
    seq2seq = over.get("kind") == "encoder-decoder"
    kind = "decoder" if seq2seq else None
    inputs = (ids, ids[:, :4]) if seq2seq else ids
    n = 4 if seq2seq else 6
    labels = [str(i) for i in ids[0, :n].tolist()]
    steps, t = explain_steps(model, inputs, labels, ExplainOptions(layer=layer, head=head, kind=kind))
    c = model.cfg.d_model
    # The residual step equals the model's own sublayer output (float32 model, float64 replay).
    tol = 8 * EPS32 * (c + math.log2(n)) * max(1.0, t["model_residual"].abs().max().item())
    torch.testing.assert_close(t["residual"], t["model_residual"], atol=tol, rtol=0)
    # The softmax weights equal the math backend's returned weights.
    if seq2seq:
        memory, mmask, _ = model.encode(ids)
        _, dec = model.decode(ids[:, :4], memory, mmask, need_weights=True)
        want = dec[layer][0][0, head]
    elif model.cfg.kind == "decoder":
        want = model(ids, need_weights=True)[1][layer][0][0, head]
    else:
        want = model(ids, need_weights=True)[1][layer][0, head]
    torch.testing.assert_close(t["weights"], want.double(), atol=tol, rtol=0)
    rows = t["weights"].sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows), atol=n * EPS32, rtol=0)
    titles = " ".join(s.title for s in steps)
    for word in ("tokens", "Q = x·W_Q", "K = x·W_K", "V = x·W_V", "QKᵀ/√d_k", "softmax", "weights·V", "residual"):
        assert word in titles


def test_layer0_embeddings_plus_the_papers_sinusoids():
    model = _model()
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    _, t = explain_steps(model, ids, list("abcde"), ExplainOptions())
    pos = torch.arange(5, dtype=torch.float64)[:, None]
    i = torch.arange(8, dtype=torch.float64)[None, :]
    angle = pos / 10000 ** ((i - i % 2) / 8)  # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)
    pe = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))
    torch.testing.assert_close(t["pos_enc"], pe, atol=4 * EPS32, rtol=0)
    emb = model.embed.token.weight.double()[ids[0]] * math.sqrt(8)
    torch.testing.assert_close(t["token_emb"], emb, atol=8 * EPS32, rtol=0)
    torch.testing.assert_close(t["embedded"], emb + pe, atol=16 * EPS32 * 8, rtol=0)


def test_printed_tables_and_bad_choices():
    model = _model(kind="decoder")
    buf = io.StringIO()
    explain(model, torch.tensor([[1, 2, 3]]), ["x", "y", "z"], ExplainOptions(head=1),
            console=Console(file=buf, width=120))
    text = buf.getvalue()
    for line in ("positional encodings", "scores QKᵀ/√d_k", "softmax weights", "-inf", "residual", "check:"):
        assert line in text
    with pytest.raises(ValueError, match=r"head must be in \[0, 2\)"):
        explain_steps(model, torch.tensor([[1, 2]]), ["a", "b"], ExplainOptions(head=2))
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\)"):
        explain_steps(model, torch.tensor([[1, 2]]), ["a", "b"], ExplainOptions(layer=7))
    with pytest.raises(ValueError, match="kind must be one of"):
        explain_steps(model, torch.tensor([[1, 2]]), ["a", "b"], ExplainOptions(kind="encoder"))
