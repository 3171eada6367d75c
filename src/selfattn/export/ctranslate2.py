"""Export selfattn translation models to CTranslate2 (Klein et al.'s fast inference engine for Transformers).

Legend: c model dim, V vocabulary, L layers.

The model is described with CTranslate2's own ``TransformerSpec`` and written by its converter API
(``ctranslate2.converters.Converter.convert``, which also quantizes: ``--quantization int8`` stores int8
weights with per-row scales). The spec expresses selfattn's encoder–decoder directly — post-norm (the paper)
or pre-norm with a final norm per stack, our sinusoid table as the position encodings (so no channel
permutation is needed, unlike Marian), √c-scaled shared embeddings, fused q/k/v (self) and k/v (cross)
projections — so pre-norm models, which Marian cannot express, convert too. The vocabulary is the run's
SentencePiece pieces (ids unchanged); ``source.spm`` is copied beside the model for tokenization.

Decoding starts from ``<s>`` (selfattn's bos); sources are bare pieces (no eos), as selfattn trains them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.subword import Subword
from ..models.config import ModelConfig
from ..positional import sinusoidal_table
from . import QUANTIZATIONS


def check_config(cfg: ModelConfig) -> None:
    """ValueError naming the first field CTranslate2's TransformerSpec cannot express."""
    allowed = dict(kind=("encoder-decoder",), norm=("layernorm",), bias=(True,), attention_type=("full",),
                   activation=("relu", "gelu", "gelu_tanh"), positional=("sinusoidal", "learned"),
                   share_embeddings=(True,), embed_norm=(False,), type_vocab_size=(0,),
                   final_norm=(None, cfg.norm_first), num_kv_heads=(None, cfg.num_heads))
    for name, values in allowed.items():
        value = getattr(cfg, name)
        if value not in values:
            raise ValueError(f"CTranslate2 export cannot express {name}={value!r}; expected one of {values}")


def _np(t: torch.Tensor) -> np.ndarray:
    """A float32 copy: the converter quantizes its arrays in place, which must not reach the model."""
    return t.detach().float().cpu().numpy().copy()


def _linear(spec, sd: dict, *names: str) -> None:
    """Fill a LinearSpec from one or more of our nn.Linear layers, fused along the output rows."""
    spec.weight = _np(torch.cat([sd[f"{n}.weight"] for n in names], dim=0))  # (sum of outs, in)
    spec.bias = _np(torch.cat([sd[f"{n}.bias"] for n in names], dim=0))


def _norm(spec, sd: dict, name: str) -> None:
    spec.gamma, spec.beta = _np(sd[f"{name}.weight"]), _np(sd[f"{name}.bias"])


def _positions(model: nn.Module, cfg: ModelConfig, embed: str) -> np.ndarray:
    if cfg.positional == "learned":
        return _np(model.state_dict()[f"{embed}.positions.weight"])
    return _np(sinusoidal_table(cfg.max_len, cfg.d_model))  # (max_len, c) selfattn's interleaved layout


def build_spec(model: nn.Module, cfg: ModelConfig, subword: Subword):
    """A filled ``ctranslate2.specs.TransformerSpec`` with ``model``'s weights and ``subword``'s vocabulary."""
    from ctranslate2.specs import TransformerSpec, common_spec

    check_config(cfg)
    activation = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU,
                  "gelu_tanh": common_spec.Activation.GELUTanh}[cfg.activation]
    spec = TransformerSpec.from_config((cfg.num_encoder_layers, cfg.num_decoder_layers), cfg.num_heads,
                                       pre_norm=cfg.norm_first, activation=activation)
    sd = model.state_dict()
    scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else False
    enc, dec = spec.encoder, spec.decoder
    enc.embeddings[0].weight = _np(sd["src_embed.token.weight"])
    dec.embeddings.weight = _np(sd["tgt_embed.token.weight"])
    enc.scale_embeddings = dec.scale_embeddings = scale
    enc.position_encodings.encodings = _positions(model, cfg, "src_embed")
    dec.position_encodings.encodings = _positions(model, cfg, "tgt_embed")
    dec.projection.weight = _np(sd["output.weight"])
    if cfg.norm_first:
        _norm(enc.layer_norm, sd, "encoder.norm")
        _norm(dec.layer_norm, sd, "decoder.norm")
    for i, layer in enumerate(enc.layer):
        p = f"encoder.layers.{i}"
        _linear(layer.self_attention.linear[0], sd, *(f"{p}.self_attn.{x}_proj" for x in "qkv"))
        _linear(layer.self_attention.linear[1], sd, f"{p}.self_attn.out_proj")
        _norm(layer.self_attention.layer_norm, sd, f"{p}.sub_attn.norm")
        _linear(layer.ffn.linear_0, sd, f"{p}.ff.linear1")
        _linear(layer.ffn.linear_1, sd, f"{p}.ff.linear2")
        _norm(layer.ffn.layer_norm, sd, f"{p}.sub_ff.norm")
    for i, layer in enumerate(dec.layer):
        p = f"decoder.layers.{i}"
        _linear(layer.self_attention.linear[0], sd, *(f"{p}.self_attn.{x}_proj" for x in "qkv"))
        _linear(layer.self_attention.linear[1], sd, f"{p}.self_attn.out_proj")
        _norm(layer.self_attention.layer_norm, sd, f"{p}.sub_self.norm")
        _linear(layer.attention.linear[0], sd, f"{p}.cross_attn.q_proj")
        _linear(layer.attention.linear[1], sd, f"{p}.cross_attn.k_proj", f"{p}.cross_attn.v_proj")
        _linear(layer.attention.linear[2], sd, f"{p}.cross_attn.out_proj")
        _norm(layer.attention.layer_norm, sd, f"{p}.sub_cross.norm")
        _linear(layer.ffn.linear_0, sd, f"{p}.ff.linear1")
        _linear(layer.ffn.linear_1, sd, f"{p}.ff.linear2")
        _norm(layer.ffn.layer_norm, sd, f"{p}.sub_ff.norm")
    pieces = [subword.sp.id_to_piece(i) for i in range(len(subword))]
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    spec.config.layer_norm_epsilon = cfg.norm_eps
    spec.config.bos_token, spec.config.eos_token = pieces[subword.bos_id], pieces[subword.eos_id]
    spec.config.unk_token = pieces[subword.unk_id]
    spec.config.decoder_start_token = pieces[subword.bos_id]  # selfattn's decoder starts from bos
    return spec


def _converter(model: nn.Module, cfg: ModelConfig, subword: Subword):
    from ctranslate2.converters.converter import Converter

    class SelfattnConverter(Converter):
        """CTranslate2's converter interface over an in-memory selfattn model."""

        def _load(self):
            return build_spec(model, cfg, subword)

    return SelfattnConverter()


def save_ctranslate2(model: nn.Module, cfg: ModelConfig, subword: Subword, out: str | Path, *,
                     quantization: str | None = None, force: bool = False) -> Path:
    """Write a CTranslate2 model directory (model.bin, vocabularies, config.json, source.spm) atomically."""
    from .files import atomic_dir

    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    check_config(cfg)
    with atomic_dir(out, force=force) as tmp:
        _converter(model, cfg, subword).convert(str(tmp), quantization=quantization, force=True)
        (tmp / "source.spm").write_bytes(subword.proto)
    return Path(out)


def ct2_translate_ids(model_dir: str | Path, sources: Sequence[Sequence[int]], subword: Subword, *,
                      beam: int = 4, alpha: float = 0.0, max_len_a: float = 1.5, max_len_b: int = 10,
                      compute_type: str = "default", threads: int = 2, batch_size: int = 32,
                      translator=None, suppress: Sequence[int] | None = None) -> list[list[int]]:
    """Best output ids (no eos) per source with a CTranslate2 model; the ids in ``suppress`` (default pad and
    bos) are never generated, the length cap is selfattn's ``max_len_a * m + max_len_b`` tokens (eos included).

    CTranslate2 disables suppressed ids *before* its log-softmax (the rest renormalise); selfattn, Hugging Face and
    fairseq set them to -inf after it. Scores then differ by the banned ids' mass, which a trained model makes
    negligible but an undertrained one need not; ``suppress=()`` compares the plain model distributions."""
    import ctranslate2

    tr = translator or ctranslate2.Translator(str(model_dir), device="cpu", compute_type=compute_type,
                                              inter_threads=1, intra_threads=threads)
    pieces = [[subword.sp.id_to_piece(int(i)) for i in s] for s in sources]
    banned = (subword.pad_id, subword.bos_id) if suppress is None else suppress
    out: list[list[int]] = []
    for start in range(0, len(pieces), batch_size):
        chunk = pieces[start : start + batch_size]
        longest = max(len(s) for s in sources[start : start + batch_size])
        res = tr.translate_batch(
            chunk, beam_size=beam, length_penalty=alpha, max_batch_size=batch_size,
            max_decoding_length=int(max_len_a * longest) + max_len_b,
            suppress_sequences=[[subword.sp.id_to_piece(int(t))] for t in banned] or None,
        )
        out += [[subword.sp.piece_to_id(t) for t in r.hypotheses[0]] for r in res]
    return out


__all__ = ["build_spec", "check_config", "ct2_translate_ids", "save_ctranslate2"]
