"""Hugging Face BERT (Devlin et al., 2019) -> selfattn ``TransformerEncoderModel``.

Legend: c model dim (hidden_size), f inner width (intermediate_size), L layers.

BERT is the paper's encoder with learned absolute positions, token-type (segment) embeddings,
a LayerNorm after the embedding sum, exact (erf) GELU and post-norm layers:
x = LN(x + Attn(x)); x = LN(x + W2 gelu(W1 x)). HF stores each nn.Linear as (out, in), the same
layout as ours, so weights are copied as they are:

    embeddings.word_embeddings / position_embeddings / token_type_embeddings / LayerNorm
        -> embed.token / positions / token_type / norm
    encoder.layer.i.attention.self.{query,key,value}  -> encoder.layers.i.self_attn.{q,k,v}_proj
    encoder.layer.i.attention.output.dense / LayerNorm -> ...self_attn.out_proj / sub_attn.norm
    encoder.layer.i.intermediate.dense / output.dense  -> ...ff.linear1 / ff.linear2
    encoder.layer.i.output.LayerNorm                   -> ...sub_ff.norm

Names may carry a "bert." prefix (task models). The pooler and pre-training / MLM heads ("cls.")
are not part of the encoder and are ignored, as is the old ``embeddings.position_ids`` buffer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from ..models.config import ModelConfig

# HF activation names -> selfattn's: "gelu" in HF BERT is the exact erf GELU.
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def _same(t: Tensor) -> Tensor:
    return t


def model_config(hf: dict[str, Any], *, backend: str = "auto") -> ModelConfig:
    act = hf.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ValueError(f"unsupported BERT hidden_act {act!r}; expected one of {sorted(ACTIVATIONS)}")
    pos = hf.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise ValueError(f"unsupported BERT position_embedding_type {pos!r}; expected 'absolute'")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ValueError("BERT checkpoints configured as decoders are not supported; expected an encoder")
    try:
        return ModelConfig(
            kind="encoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
            num_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
            num_encoder_layers=hf["num_hidden_layers"], num_decoder_layers=0,
            dropout=hf.get("hidden_dropout_prob", 0.1), attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            activation=ACTIVATIONS[act], norm="layernorm", norm_first=False, final_norm=False,
            norm_eps=hf.get("layer_norm_eps", 1e-12), positional="learned",
            max_len=hf.get("max_position_embeddings", 512), scale_embeddings=False, embed_norm=True,
            type_vocab_size=hf.get("type_vocab_size", 2), attention_backend=backend,
            pad_id=hf.get("pad_token_id", 0), share_embeddings=False,
            extra={"source": "huggingface", "model_type": "bert"},
        )
    except KeyError as e:
        raise ValueError(f"BERT config.json lacks {e.args[0]!r}") from None


def detect_prefix(hf: dict[str, Tensor]) -> str:
    return "bert." if "bert.embeddings.word_embeddings.weight" in hf else ""


def ignorable(prefix: str) -> Callable[[str], bool]:
    def ignore(name: str) -> bool:
        return (name.startswith(f"{prefix}pooler.") or name.startswith("cls.")
                or name == f"{prefix}embeddings.position_ids")
    return ignore


def weight_mapping(cfg: ModelConfig, hf_cfg: dict[str, Any], prefix: str) -> dict[str, tuple[str, Callable]]:
    p = prefix
    m: dict[str, tuple[str, Callable]] = {}
    emb = {"token": "word_embeddings", "positions": "position_embeddings", "token_type": "token_type_embeddings"}
    for ours, theirs in emb.items():
        m[f"embed.{ours}.weight"] = (f"{p}embeddings.{theirs}.weight", _same)
    for wb in ("weight", "bias"):
        m[f"embed.norm.{wb}"] = (f"{p}embeddings.LayerNorm.{wb}", _same)
    for i in range(cfg.num_encoder_layers):
        src, dst = f"{p}encoder.layer.{i}.", f"encoder.layers.{i}."
        pairs = {
            "self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
            "self_attn.v_proj": "attention.self.value", "self_attn.out_proj": "attention.output.dense",
            "sub_attn.norm": "attention.output.LayerNorm", "ff.linear1": "intermediate.dense",
            "ff.linear2": "output.dense", "sub_ff.norm": "output.LayerNorm",
        }
        for ours, theirs in pairs.items():
            for wb in ("weight", "bias"):
                m[f"{dst}{ours}.{wb}"] = (f"{src}{theirs}.{wb}", _same)
    return m
