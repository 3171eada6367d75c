"""Models from configs: parameter counts, positional kinds, caching, padding, config errors."""

from __future__ import annotations

import math

import pytest
import torch

import selfattn
from selfattn.models import ModelConfig, preset


def expected_params(cfg: ModelConfig) -> int:
    """Count by hand from the paper's architecture (shared embedding, biases, LayerNorms)."""
    d, f = cfg.d_model, cfg.d_ff
    attn = 4 * d * d + 4 * d
    ffn = 2 * d * f + f + d
    norm = 2 * d
    enc = cfg.num_encoder_layers * (attn + ffn + 2 * norm)
    dec = cfg.num_decoder_layers * (2 * attn + ffn + 3 * norm)
    return cfg.vocab_size * d + enc + dec


@pytest.mark.parametrize("name,paper_millions", [("paper-base", 65), ("paper-big", 213)])
def test_paper_parameter_counts(name, paper_millions):
    cfg = preset(name)
    with torch.device("meta"):  # no memory needed to count
        model = selfattn.build_model(cfg)
    n = selfattn.count_parameters(model)
    print(f"{name}: {n:,} parameters (paper: {paper_millions}M)")
    assert n == expected_params(cfg)
    assert abs(n / 1e6 - paper_millions) / paper_millions < 0.05


def test_paper_base_shares_embeddings_and_scales():
    cfg = preset("paper-base", vocab_size=100, num_encoder_layers=1, num_decoder_layers=1)
    m = selfattn.build_model(cfg)
    assert m.src_embed.token is m.tgt_embed.token
    assert m.output.weight is m.tgt_embed.token.weight
    assert m.src_embed.scale == math.sqrt(512)
    tokens = torch.tensor([[3, 4, 5]])
    m.eval()
    want = m.tgt_embed.token.weight[tokens] * math.sqrt(512) + selfattn.positional.sinusoidal_table(3, 512)
    torch.testing.assert_close(m.tgt_embed(tokens), want)


POSITIONAL = ["sinusoidal", "learned", "rope", "alibi", "t5", "none"]


@pytest.mark.parametrize("positional", POSITIONAL)
def test_encoder_decoder_cached_decoding_equals_full_forward(positional):
    torch.manual_seed(0)
    cfg = preset("tiny", positional=positional, num_kv_heads=2)
    model = selfattn.build_model(cfg).eval()
    src = torch.randint(1, 32, (2, 7))
    src[1, -2:] = 0  # padding
    tgt = torch.randint(1, 32, (2, 6))
    with torch.no_grad():
        full = model(src, tgt)
        memory, mmask, _ = model.encode(src)
        cache = model.new_cache()
        steps = [model.decode(tgt[:, i : i + 1], memory, mmask, cache=cache)[0] for i in range(6)]
    tol = 16 * torch.finfo(torch.float32).eps * full.abs().max().item()
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=tol, atol=tol)


@pytest.mark.parametrize("positional", POSITIONAL)
def test_lm_cached_decoding_equals_full_forward(positional):
    torch.manual_seed(1)
    cfg = preset("char-lm", positional=positional, num_decoder_layers=2, d_model=32, num_heads=4)
    model = selfattn.build_model(cfg).eval()
    x = torch.randint(0, 65, (2, 10))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache()
        parts = [model(x[:, :4], cache=cache), model(x[:, 4:5], cache=cache), model(x[:, 5:], cache=cache)]
    tol = 16 * torch.finfo(torch.float32).eps * full.abs().max().item()
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=tol, atol=tol)


def test_source_padding_does_not_change_outputs():
    torch.manual_seed(2)
    model = selfattn.build_model(preset("tiny")).eval()
    src = torch.randint(1, 32, (1, 5))
    tgt = torch.randint(1, 32, (1, 4))
    padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], 1)
    with torch.no_grad():
        a, b = model(src, tgt), model(padded, tgt)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_encoder_model_and_sliding_window():
    torch.manual_seed(3)
    cfg = ModelConfig(kind="encoder", vocab_size=20, d_model=16, num_heads=2, d_ff=32, num_encoder_layers=2,
                      num_decoder_layers=0, attention_type="sliding", window=2, dropout=0.0)
    model = selfattn.build_model(cfg).eval()
    x = torch.randint(1, 20, (2, 9))
    out = model(x)
    assert out.shape == (2, 9, 16)
    # with a window of 2 per side and 2 layers, position 0 cannot see position 8
    y = x.clone()
    y[:, 8] = (y[:, 8] % 19) + 1
    assert torch.allclose(model(y)[:, 0], out[:, 0])
    assert not torch.allclose(model(y)[:, 8], out[:, 8])


def test_swiglu_rmsnorm_prenorm_model_trains_a_step():
    torch.manual_seed(4)
    cfg = preset("tiny", activation="swiglu", norm="rmsnorm", norm_first=True, positional="rope")
    model = selfattn.build_model(cfg)
    src, tgt = torch.randint(1, 32, (2, 5)), torch.randint(1, 32, (2, 6))
    loss = torch.nn.functional.cross_entropy(model(src, tgt[:, :-1]).transpose(1, 2), tgt[:, 1:])
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(kind="gpt"), "kind must be one of"),
        (dict(d_model=30, num_heads=4), "divisible by num_heads"),
        (dict(num_kv_heads=3), "multiple of num_kv_heads"),
        (dict(positional="xpos"), "positional must be one of"),
        (dict(dropout=1.5), "dropout"),
        (dict(activation="tanh"), "activation must be one of"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_preset_and_roundtrip():
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")
    cfg = preset("tiny", d_model=32)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config keys"):
        ModelConfig.from_dict({"d_modle": 3})


@pytest.mark.parametrize("attention_type,kernel,window", [
    ("full", "softmax", None), ("sliding", "softmax", (3, 3)), ("linear", "linear", None),
])
def test_config_json_attention_type_maps_onto_layer_kernel(tmp_path, attention_type, kernel, window):
    """An old config.json spells attention_type as ever ("full" | "sliding" | "linear"); the layers
    get a window and a kernel ("softmax" | "linear") instead, so no word means two things."""
    import json
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"kind": "encoder", "vocab_size": 20, "d_model": 16, "num_heads": 2, "d_ff": 32,
                                "num_encoder_layers": 1, "num_decoder_layers": 0,
                                "attention_type": attention_type, "window": 3}))
    cfg = ModelConfig.from_dict(json.loads(path.read_text()))
    assert cfg.attention_type == attention_type and cfg.to_dict()["attention_type"] == attention_type
    spec = cfg.layer_spec(decoder=False)
    assert (spec.kernel, spec.window) == (kernel, window)
    attn = selfattn.build_model(cfg).encoder.layers[0].self_attn
    assert (attn.kernel, attn.window) == (kernel, window)
    assert not hasattr(attn, "attention_type")


def test_token_and_mask_errors():
    model = selfattn.build_model(preset("tiny"))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 32\)"):
        model(torch.tensor([[1, 40]]), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="padding mask shape"):
        model(torch.tensor([[1, 2]]), torch.tensor([[1, 2]]), src_padding=torch.ones(1, 3, dtype=torch.bool))
