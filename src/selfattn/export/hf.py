"""Export selfattn models to Hugging Face ``transformers`` directories — the reverse of ``load_pretrained``.

Legend: c model dim, f FFN width, V vocabulary, L layers. Tensors are laid out for ``transformers``' own
classes, which then load the directory with no selfattn installed:

* encoder–decoder, post-norm (the paper) -> ``MarianMTModel``; pre-norm with a final norm after each stack
  -> ``PegasusForConditionalGeneration`` (Marian with pre-norm layers: same sinusoids, scaled embeddings,
  shared embeddings, ``final_logits_bias`` 0).
* decoder-only LM -> ``GPT2LMHeadModel`` (pre-norm, final LayerNorm, absolute positions in ``wpe``).
* encoder -> ``BertModel`` (post-norm, LayerNorm after the embeddings, absolute positions).

Marian/Pegasus sinusoids put sin(pos·ω_i) in channel i and cos in channel c/2 + i; ours interleave them
(channels 2i, 2i+1, paper §3.5). Rather than refusing, the export permutes the residual stream: Marian
channel j is our channel ``perm[j]`` with ``perm = [0, 2, 4, ..., 1, 3, 5, ...]``. Every matrix that reads
the residual stream has its input columns permuted, every one that writes it its output rows (and biases),
and LayerNorm scales/shifts are permuted too (LayerNorm is equivariant to a permutation of channels) — an
exact reparametrisation, so logits agree to float32 rounding. Attention heads are untouched.

GPT-2 and BERT have learned position tables, so a sinusoidal model stores its table there, and
``scale_embeddings`` (x √c, §3.4) is folded into the token embedding (an LM then gets an untied ``lm_head``).
Configs a target cannot express raise one ``ValueError`` naming the field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.subword import Subword
from ..models.config import ModelConfig
from ..positional import sinusoidal_table

HF_LAYERNORM_EPS = 1e-5  # Marian/Pegasus build nn.LayerNorm(c) with PyTorch's default eps
# selfattn activation -> the name transformers' ACT2FN gives the same function
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new"}


def _require(cfg: ModelConfig, target: str, **allowed: tuple) -> None:
    for name, values in allowed.items():
        value = getattr(cfg, name)
        if value not in values:
            raise ValueError(f"{target} cannot express {name}={value!r}; expected one of {values}")


def _require_common(cfg: ModelConfig, target: str) -> None:
    _require(cfg, target, norm=("layernorm",), bias=(True,), attention_type=("full",),
             activation=tuple(ACTIVATIONS), num_kv_heads=(None, cfg.num_heads))


def _positions(model: nn.Module, cfg: ModelConfig, embed: str) -> Tensor:
    """(max_len, c) absolute position table: the learned weight or the paper's sinusoids."""
    if cfg.positional == "learned":
        return model.state_dict()[f"{embed}.positions.weight"]
    return sinusoidal_table(cfg.max_len, cfg.d_model)


# -- encoder–decoder -> MarianMTModel / PegasusForConditionalGeneration -------------------------------------

def seq2seq_target(cfg: ModelConfig) -> str:
    """"marian" for post-norm models, "pegasus" for pre-norm ones (their final norms included)."""
    target = "Pegasus" if cfg.norm_first else "MarianMT"
    _require_common(cfg, target)
    _require(cfg, target, positional=("sinusoidal",), share_embeddings=(True,), embed_norm=(False,),
             type_vocab_size=(0,), norm_eps=(HF_LAYERNORM_EPS,), final_norm=(None, cfg.norm_first))
    if cfg.d_model % 2:
        raise ValueError(f"{target} sinusoids need an even d_model, got {cfg.d_model}")
    return "pegasus" if cfg.norm_first else "marian"


def _seq2seq_config(cfg: ModelConfig, target: str, ids: dict[str, int]):
    import transformers

    kw = dict(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, max_position_embeddings=cfg.max_len,
        encoder_layers=cfg.num_encoder_layers, decoder_layers=cfg.num_decoder_layers,
        encoder_attention_heads=cfg.num_heads, decoder_attention_heads=cfg.num_heads,
        encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff, activation_function=ACTIVATIONS[cfg.activation],
        dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, activation_dropout=0.0,
        scale_embedding=cfg.scale_embeddings, tie_word_embeddings=True, is_encoder_decoder=True,
        pad_token_id=ids["pad"], bos_token_id=ids["bos"], eos_token_id=ids["eos"],
        decoder_start_token_id=ids["bos"],  # selfattn's decoder starts from bos
        forced_eos_token_id=None,  # selfattn does not force eos at the length cap
    )
    if target == "marian":
        return transformers.MarianConfig(**kw, share_encoder_decoder_embeddings=True,
                                         architectures=["MarianMTModel"])
    return transformers.PegasusConfig(**kw, architectures=["PegasusForConditionalGeneration"])


def seq2seq_state_dict(model: nn.Module, cfg: ModelConfig, target: str) -> dict[str, Tensor]:
    """Our Transformer's tensors under Marian/Pegasus names, residual channels permuted (module docstring)."""
    c = cfg.d_model
    perm = torch.cat([torch.arange(0, c, 2), torch.arange(1, c, 2)])  # Marian channel j <- our channel perm[j]
    sd = {k: v.detach().float().clone() for k, v in model.state_dict().items()}  # never alias the model
    out: dict[str, Tensor] = {}

    def reads(dst: str, src: str) -> None:  # nn.Linear reading the residual stream: permute input columns
        out[f"{dst}.weight"] = sd[f"{src}.weight"][:, perm]  # (out, c)
        out[f"{dst}.bias"] = sd[f"{src}.bias"]

    def writes(dst: str, src: str) -> None:  # writing it (or a LayerNorm on it): permute output rows
        out[f"{dst}.weight"] = sd[f"{src}.weight"][perm]
        out[f"{dst}.bias"] = sd[f"{src}.bias"][perm]

    emb = sd["tgt_embed.token.weight"][:, perm]  # (V, c), shared by both stacks and the output
    table = sinusoidal_table(cfg.max_len, c)[:, perm]  # (max_len, c): Marian's sin-then-cos layout
    out["model.shared.weight"] = emb
    out["lm_head.weight"] = emb
    out["final_logits_bias"] = torch.zeros(1, cfg.vocab_size)
    for side in ("encoder", "decoder"):
        out[f"model.{side}.embed_tokens.weight"] = emb
        out[f"model.{side}.embed_positions.weight"] = table
        if target == "pegasus":
            writes(f"model.{side}.layer_norm", f"{side}.norm")
    def feed_forward(d: str, s: str) -> None:  # the same rows in encoder and decoder layers
        reads(f"{d}.fc1", f"{s}.ff.linear1")
        writes(f"{d}.fc2", f"{s}.ff.linear2")
        writes(f"{d}.final_layer_norm", f"{s}.sub_ff.norm")

    for i in range(cfg.num_encoder_layers):
        d, s = f"model.encoder.layers.{i}", f"encoder.layers.{i}"
        for p in ("q_proj", "k_proj", "v_proj"):
            reads(f"{d}.self_attn.{p}", f"{s}.self_attn.{p}")
        writes(f"{d}.self_attn.out_proj", f"{s}.self_attn.out_proj")
        writes(f"{d}.self_attn_layer_norm", f"{s}.sub_attn.norm")
        feed_forward(d, s)
    for i in range(cfg.num_decoder_layers):
        d, s = f"model.decoder.layers.{i}", f"decoder.layers.{i}"
        for ours, theirs in (("self_attn", "self_attn"), ("cross_attn", "encoder_attn")):
            for p in ("q_proj", "k_proj", "v_proj"):  # cross k/v read the encoder's (permuted) output
                reads(f"{d}.{theirs}.{p}", f"{s}.{ours}.{p}")
            writes(f"{d}.{theirs}.out_proj", f"{s}.{ours}.out_proj")
        writes(f"{d}.self_attn_layer_norm", f"{s}.sub_self.norm")
        writes(f"{d}.encoder_attn_layer_norm", f"{s}.sub_cross.norm")
        feed_forward(d, s)
    return out


# -- decoder-only LM -> GPT2LMHeadModel ----------------------------------------------------------------------

def _gpt2(model: nn.Module, cfg: ModelConfig, ids: dict[str, int]):
    import transformers

    _require_common(cfg, "GPT-2")
    _require(cfg, "GPT-2", norm_first=(True,), final_norm=(None, True), positional=("learned", "sinusoidal"),
             embed_norm=(False,), type_vocab_size=(0,))
    tied = cfg.share_embeddings and not cfg.scale_embeddings  # a folded scale would also scale the logits
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_len, n_embd=cfg.d_model, n_layer=cfg.num_decoder_layers,
        n_head=cfg.num_heads, n_inner=cfg.d_ff, activation_function=ACTIVATIONS[cfg.activation],
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.attention_dropout,
        layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=tied, architectures=["GPT2LMHeadModel"],
        bos_token_id=ids.get("bos"), eos_token_id=ids.get("eos"), pad_token_id=ids.get("pad"),
    )
    sd = {k: v.detach().float().clone() for k, v in model.state_dict().items()}  # never alias the model
    scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
    out = {"transformer.wte.weight": sd["embed.token.weight"] * scale,
           "transformer.wpe.weight": _positions(model, cfg, "embed").float(),
           "transformer.ln_f.weight": sd["decoder.norm.weight"], "transformer.ln_f.bias": sd["decoder.norm.bias"],
           "lm_head.weight": sd["output.weight"] if not tied else sd["embed.token.weight"]}
    for i in range(cfg.num_decoder_layers):
        d, s = f"transformer.h.{i}", f"decoder.layers.{i}"
        qkv = [sd[f"{s}.self_attn.{p}_proj.weight"] for p in "qkv"]
        out[f"{d}.attn.c_attn.weight"] = torch.cat(qkv, dim=0).t().contiguous()  # Conv1D (c, 3c)
        out[f"{d}.attn.c_attn.bias"] = torch.cat([sd[f"{s}.self_attn.{p}_proj.bias"] for p in "qkv"])
        for theirs, ours in (("attn.c_proj", "self_attn.out_proj"), ("mlp.c_fc", "ff.linear1"),
                             ("mlp.c_proj", "ff.linear2")):
            out[f"{d}.{theirs}.weight"] = sd[f"{s}.{ours}.weight"].t().contiguous()  # Linear -> Conv1D (in, out)
            out[f"{d}.{theirs}.bias"] = sd[f"{s}.{ours}.bias"]
        for theirs, ours in (("ln_1", "sub_self.norm"), ("ln_2", "sub_ff.norm")):
            out[f"{d}.{theirs}.weight"], out[f"{d}.{theirs}.bias"] = sd[f"{s}.{ours}.weight"], sd[f"{s}.{ours}.bias"]
    return transformers.GPT2LMHeadModel, hf_cfg, out


# -- encoder -> BertModel ------------------------------------------------------------------------------------

def _bert(model: nn.Module, cfg: ModelConfig, ids: dict[str, int]):
    import transformers

    _require_common(cfg, "BERT")
    _require(cfg, "BERT", norm_first=(False,), final_norm=(None, False), positional=("learned", "sinusoidal"),
             embed_norm=(True,))
    hf_cfg = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.num_encoder_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.d_ff, hidden_act=ACTIVATIONS[cfg.activation],
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=cfg.max_len, type_vocab_size=max(1, cfg.type_vocab_size),
        layer_norm_eps=cfg.norm_eps, pad_token_id=ids.get("pad", 0), architectures=["BertModel"],
    )
    sd = {k: v.detach().float().clone() for k, v in model.state_dict().items()}  # never alias the model
    scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
    types = sd["embed.token_type.weight"] if cfg.type_vocab_size else torch.zeros(1, cfg.d_model)
    c = cfg.d_model
    out = {"embeddings.word_embeddings.weight": sd["embed.token.weight"] * scale,
           "embeddings.position_embeddings.weight": _positions(model, cfg, "embed").float(),
           "embeddings.token_type_embeddings.weight": types,
           "embeddings.LayerNorm.weight": sd["embed.norm.weight"], "embeddings.LayerNorm.bias": sd["embed.norm.bias"],
           # selfattn has no pooler: a zero one (outputs 0) instead of random weights
           "pooler.dense.weight": torch.zeros(c, c), "pooler.dense.bias": torch.zeros(c)}
    pairs = {"attention.self.query": "self_attn.q_proj", "attention.self.key": "self_attn.k_proj",
             "attention.self.value": "self_attn.v_proj", "attention.output.dense": "self_attn.out_proj",
             "attention.output.LayerNorm": "sub_attn.norm", "intermediate.dense": "ff.linear1",
             "output.dense": "ff.linear2", "output.LayerNorm": "sub_ff.norm"}
    for i in range(cfg.num_encoder_layers):
        for theirs, ours in pairs.items():
            for wb in ("weight", "bias"):
                out[f"encoder.layer.{i}.{theirs}.{wb}"] = sd[f"encoder.layers.{i}.{ours}.{wb}"]
    return transformers.BertModel, hf_cfg, out


# -- building and writing ------------------------------------------------------------------------------------

SPECIAL_IDS = {"pad": Subword.pad_id, "bos": Subword.bos_id, "eos": Subword.eos_id, "unk": Subword.unk_id}


def to_hf_model(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """A ``transformers`` model (eval mode) holding ``model``'s weights; every tensor accounted for."""
    ids = SPECIAL_IDS if cfg.pad_id is not None else {}
    if cfg.kind == "encoder-decoder":
        import transformers

        target = seq2seq_target(cfg)
        hf_cfg = _seq2seq_config(cfg, target, SPECIAL_IDS)
        cls = transformers.MarianMTModel if target == "marian" else transformers.PegasusForConditionalGeneration
        tensors = seq2seq_state_dict(model, cfg, target)
    elif cfg.kind == "decoder":
        cls, hf_cfg, tensors = _gpt2(model, cfg, ids)
    else:
        cls, hf_cfg, tensors = _bert(model, cfg, ids)
    hf = cls(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(tensors, strict=False)
    if missing or unexpected:  # an exporter bug, but say it plainly rather than leave random weights
        raise ValueError(f"export to {cls.__name__} left tensors unset {sorted(missing)} "
                         f"or unused {sorted(unexpected)}")
    if cfg.kind == "encoder-decoder":  # generate() defaults as `selfattn translate`: beam 4, pad/bos never chosen
        hf.generation_config.num_beams = 4
        hf.generation_config.suppress_tokens = [SPECIAL_IDS["pad"], SPECIAL_IDS["bos"]]
    return hf


def hf_tokenizer(subword: Subword):
    """A ``PreTrainedTokenizerFast`` that segments like ``subword`` (same ids, no bos/eos added: selfattn's
    sources are bare pieces), built by transformers' own SentencePiece converter."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(subword.proto)
    pieces = [(p.piece, p.score) for p in proto.pieces]
    vocab: Any = pieces if subword.model_type == "unigram" else {p: i for i, (p, _) in enumerate(pieces)}
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    if tok is None:
        raise ValueError(f"cannot convert a SentencePiece {subword.model_type!r} model to a tokenizer.json")
    names = [subword.sp.id_to_piece(i) for i in range(4)]  # pad, bos, eos, unk
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=names[0], bos_token=names[1],
                                   eos_token=names[2], unk_token=names[3])


def save_hf(model: nn.Module, cfg: ModelConfig, out: str | Path, subword: Subword | None = None, *,
            force: bool = False) -> Path:
    """Write a ``transformers`` directory (config.json, model.safetensors, generation_config.json and, with
    ``subword``, tokenizer.json + the SentencePiece model as source.spm/target.spm) into ``out``, atomically."""
    from .files import atomic_dir

    hf = to_hf_model(model, cfg)
    with atomic_dir(out, force=force) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        if subword is not None:
            hf_tokenizer(subword).save_pretrained(tmp)
            for name in ("source.spm", "target.spm"):
                (tmp / name).write_bytes(subword.proto)
    return Path(out)


__all__ = ["hf_tokenizer", "save_hf", "seq2seq_state_dict", "seq2seq_target", "to_hf_model"]
