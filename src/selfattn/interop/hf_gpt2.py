"""Hugging Face GPT-2 (Radford et al., 2019) -> selfattn ``TransformerLM``.

Legend: c model dim (n_embd), f inner width (n_inner, default 4c), L layers, V vocabulary.

GPT-2 is a pre-norm decoder: x = x + Attn(LN(x)); x = x + MLP(LN(x)), a final LayerNorm, learned
absolute positions, tanh-approximated GELU ("gelu_new") and an output projection tied to the token
embedding. Its linear layers are ``Conv1D`` modules whose weight is stored (in, out) — the
transpose of nn.Linear — and one ``c_attn`` holds q, k and v side by side (c, 3c):

    wte / wpe                     -> embed.token / embed.positions
    h.i.ln_1 / ln_2               -> decoder.layers.i.sub_self.norm / sub_ff.norm
    h.i.attn.c_attn  (c, 3c)      -> self_attn.{q,k,v}_proj: columns [0:c], [c:2c], [2c:3c], transposed
    h.i.attn.c_proj  (c, c)       -> self_attn.out_proj (transposed)
    h.i.mlp.c_fc (c, f) / c_proj  -> ff.linear1 / ff.linear2 (transposed)
    ln_f                          -> decoder.norm
    lm_head (V, c)                -> output, only when the embeddings are not tied

Names may carry a "transformer." prefix (GPT2LMHeadModel). The old causal-mask buffers
``attn.bias`` / ``attn.masked_bias`` and a tied ``lm_head.weight`` are ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from ..models.config import ModelConfig

ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def model_config(hf: dict[str, Any], *, backend: str = "auto") -> ModelConfig:
    act = hf.get("activation_function", "gelu_new")
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ValueError(f"unsupported GPT-2 activation_function {act!r}; expected one of {sorted(ACTIVATIONS)}")
    # Variants whose attention differs from softmax(q k^T / sqrt(d)) v.
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
        raise ValueError("GPT-2 checkpoints with scale_attn_by_inverse_layer_idx=True or "
                         "scale_attn_weights=False are not supported; expected the standard 1/sqrt(d) scaling")
    if hf.get("add_cross_attention"):
        raise ValueError("GPT-2 with add_cross_attention=True is not supported; expected a decoder-only LM")
    try:
        c = hf["n_embd"]
        return ModelConfig(
            kind="decoder", vocab_size=hf["vocab_size"], d_model=c, num_heads=hf["n_head"],
            d_ff=hf.get("n_inner") or 4 * c, num_encoder_layers=0, num_decoder_layers=hf["n_layer"],
            dropout=hf.get("resid_pdrop", 0.1), attention_dropout=hf.get("attn_pdrop", 0.1),
            activation=ACTIVATIONS[act], norm="layernorm", norm_first=True, final_norm=True,
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), positional="learned", max_len=hf["n_positions"],
            scale_embeddings=False, share_embeddings=hf.get("tie_word_embeddings", True),
            attention_backend=backend, pad_id=None,  # GPT-2 has no pad token: never derive masks from ids
            extra={"source": "huggingface", "model_type": "gpt2",
                   "eos_token_id": hf.get("eos_token_id"), "bos_token_id": hf.get("bos_token_id")},
        )
    except KeyError as e:
        raise ValueError(f"GPT-2 config.json lacks {e.args[0]!r}") from None


def detect_prefix(hf: dict[str, Tensor]) -> str:
    return "transformer." if "transformer.wte.weight" in hf else ""


def ignorable(prefix: str) -> Callable[[str], bool]:
    def ignore(name: str) -> bool:
        return name.endswith(".attn.bias") or name.endswith(".attn.masked_bias") or name == "lm_head.weight"
    return ignore


def _t(t: Tensor) -> Tensor:
    return t.t().contiguous()  # Conv1D (in, out) -> Linear (out, in)


def _cols(j: int, c: int, transpose: bool) -> Callable[[Tensor], Tensor]:
    """Slice j of c_attn: weight (c, 3c) -> (c, c) transposed; bias (3c,) -> (c,)."""
    def fn(t: Tensor) -> Tensor:
        part = t[..., j * c : (j + 1) * c]
        return part.t().contiguous() if transpose else part.contiguous()
    return fn


def _same(t: Tensor) -> Tensor:
    return t


def weight_mapping(cfg: ModelConfig, hf_cfg: dict[str, Any], prefix: str) -> dict[str, tuple[str, Callable]]:
    p, c = prefix, cfg.d_model
    m: dict[str, tuple[str, Callable]] = {
        "embed.token.weight": (f"{p}wte.weight", _same),
        "embed.positions.weight": (f"{p}wpe.weight", _same),
        "decoder.norm.weight": (f"{p}ln_f.weight", _same),
        "decoder.norm.bias": (f"{p}ln_f.bias", _same),
        # tied: the same tensor as the token embedding (state_dict lists it under both names)
        "output.weight": (f"{p}wte.weight", _same) if cfg.share_embeddings else ("lm_head.weight", _same),
    }
    for i in range(cfg.num_decoder_layers):
        src, dst = f"{p}h.{i}.", f"decoder.layers.{i}."
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            m[f"{dst}self_attn.{name}.weight"] = (f"{src}attn.c_attn.weight", _cols(j, c, True))
            m[f"{dst}self_attn.{name}.bias"] = (f"{src}attn.c_attn.bias", _cols(j, c, False))
        linears = {"self_attn.out_proj": "attn.c_proj", "ff.linear1": "mlp.c_fc", "ff.linear2": "mlp.c_proj"}
        for ours, theirs in linears.items():
            m[f"{dst}{ours}.weight"] = (f"{src}{theirs}.weight", _t)
            m[f"{dst}{ours}.bias"] = (f"{src}{theirs}.bias", _same)
        for ours, theirs in (("sub_self.norm", "ln_1"), ("sub_ff.norm", "ln_2")):
            for wb in ("weight", "bias"):
                m[f"{dst}{ours}.{wb}"] = (f"{src}{theirs}.{wb}", _same)
    return m
