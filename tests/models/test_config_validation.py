"""ModelConfig validates types and ranges up front: one-line ValueError naming the field, expected and given."""

from __future__ import annotations

import re

import pytest

from selfattn.models import PRESETS, ModelConfig, preset


@pytest.mark.parametrize("field, value", [
    ("num_kv_heads", -2), ("num_kv_heads", 0), ("num_encoder_layers", -1), ("num_encoder_layers", 10**6),
    ("num_decoder_layers", 1025), ("norm_eps", "1e-12"), ("norm_eps", 0.0), ("norm_eps", float("nan")),
    ("vocab_size", True), ("vocab_size", 3.0), ("d_model", 2**20), ("dropout", -0.1), ("dropout", 1.0),
    ("attention_dropout", "0.1"), ("kind", "gpt"), ("activation", ["relu"]), ("norm_first", 1),
    ("final_norm", "yes"), ("pad_id", -1), ("src_vocab_size", 0), ("window", -3), ("type_vocab_size", None),
    ("attention_backend", 3), ("extra", []),
])
def test_bad_field_is_one_line_naming_field_and_value(field, value):
    with pytest.raises(ValueError) as e:
        ModelConfig(**{field: value})
    msg = str(e.value)
    assert msg.startswith(f"ModelConfig.{field} must be ") and "\n" not in msg
    if field != "extra":
        assert re.search(f"got {re.escape(repr(value))}$", msg), msg


@pytest.mark.parametrize("changes, words", [
    (dict(num_heads=8, num_kv_heads=3), "multiple of num_kv_heads"),
    (dict(d_model=60, num_heads=8), "divisible by num_heads"),
    (dict(kind="encoder-decoder", num_encoder_layers=0), "needs num_encoder_layers >= 1"),
    (dict(kind="decoder", num_decoder_layers=0, num_encoder_layers=0), "needs num_decoder_layers >= 1"),
    (dict(vocab_size=32, pad_id=32), "pad_id must be < vocab_size"),
])
def test_inconsistent_fields_are_refused(changes, words):
    with pytest.raises(ValueError, match=words):
        ModelConfig(**changes)


def test_presets_and_the_edges_of_the_ranges_are_accepted():
    for name in PRESETS:
        preset(name)
    ModelConfig(num_encoder_layers=1024, num_decoder_layers=1024, norm_eps=1, dropout=0, pad_id=None,
                num_kv_heads=None, final_norm=None, window=0)
    with pytest.raises(ValueError, match="num_decoder_layers"):  # replace() validates too
        preset("tiny").replace(num_decoder_layers=-1)
