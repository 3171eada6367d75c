"""The models: encoder–decoder ``Transformer``, ``TransformerEncoderModel`` and ``TransformerLM``.

Legend: b batch, m source length, n target length, c model dim, V vocabulary.
Data flow (encoder–decoder): src tokens (b, m) -> Embeddings -> Encoder -> memory (b, m, c);
tgt tokens (b, n) -> Embeddings -> Decoder(memory) -> (b, n, c) -> output projection -> logits (b, n, V).
Padding masks given to the models are (b, length) booleans, **True = real token (may be attended)**;
they become key masks (b, 1, 1, length) for the attention layers. Packed rows add segment ids (b, length)
(:mod:`selfattn.data.packing`: 1, 2, ... per pair, 0 = padding): every attention stays inside its segment and
absolute positions restart at 0 in each one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data.packing import segment_positions
from ..layers.blocks import DecoderLayer, DecoderLayerCache, EncoderLayer
from ..layers.dropout import Dropout
from ..layers.kv_cache import KVCache
from ..layers.norm import make_norm
from ..positional import LearnedPositions, SinusoidalPositions, T5RelativeBias
from .config import ModelConfig


def key_mask(padding: Tensor | None) -> Tensor | None:
    """(b, m) True = real token -> (b, 1, 1, m) attention mask (True = may attend)."""
    if padding is None:
        return None
    if padding.dim() != 2 or padding.dtype != torch.bool:
        raise ValueError(
            f"padding mask must be boolean (B, N) with True = real token, got {padding.dtype} {tuple(padding.shape)}"
        )
    return padding[:, None, None, :]  # (b, 1, 1, m)


def check_token_ids(tokens: Tensor, vocab: int) -> None:
    """Raise ``ValueError`` unless every id lies in [0, vocab), without stalling an accelerator.

    On the CPU the ids are already on the host: one ``aminmax`` and an exact message. On another
    device a deferred device-side assert (``torch._assert_async``) checks the same without a host
    synchronisation; it reports when the device reaches it.
    """
    if tokens.numel() == 0:
        return
    if tokens.device.type != "cpu":
        torch._assert_async(((tokens >= 0) & (tokens < vocab)).all(), f"token ids must lie in [0, {vocab})")
        return
    lo, hi = (int(t) for t in torch.aminmax(tokens))
    if lo < 0 or hi >= vocab:
        raise ValueError(f"token ids must lie in [0, {vocab}), got range [{lo}, {hi}]")


class Embeddings(nn.Module):
    """Token embedding (x sqrt(c) as in §3.4) + absolute positions + token types, then dropout.

    ``check_ids``: validate the ids in eager mode (see :func:`check_token_ids`); graphs traced by
    torch.compile / torch.export skip it (nn.Embedding still refuses an out-of-range id on the CPU).
    """

    check_ids = True  # class default; set False on an instance to skip the check in eager mode too

    def __init__(self, cfg: ModelConfig, vocab_size: int, token: nn.Embedding | None = None):
        super().__init__()
        self.token = token if token is not None else nn.Embedding(vocab_size, cfg.d_model)
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        self.positions: SinusoidalPositions | LearnedPositions | None = None
        if cfg.positional == "sinusoidal":
            self.positions = SinusoidalPositions(cfg.d_model, cfg.max_len)
        elif cfg.positional == "learned":
            self.positions = LearnedPositions(cfg.d_model, cfg.max_len)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if cfg.embed_norm else None
        self.dropout = Dropout(cfg.dropout)  # a cheap mask, not bernoulli_ (layers/dropout.py)

    def forward(self, tokens: Tensor, offset: int = 0, token_types: Tensor | None = None,
                segment_ids: Tensor | None = None) -> Tensor:
        """tokens (b, n) -> (b, n, c); ``segment_ids`` (b, n): positions count from 0 in every segment."""
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be integer ids shaped (B, N), got {tokens.dtype} {tuple(tokens.shape)}")
        if self.check_ids and not torch.compiler.is_compiling():
            check_token_ids(tokens, self.token.num_embeddings)
        x = self.token(tokens) * self.scale  # (b, n, c)
        if self.positions is not None and segment_ids is not None:
            if offset:
                raise ValueError(f"segment_ids (packed rows) start at position 0, got offset {offset}")
            x = x + self.positions.at(segment_positions(segment_ids)).to(x.dtype)  # (b, n, c)
        elif self.positions is not None:
            x = x + self.positions(tokens.shape[1], offset).to(x.dtype)  # (n, c) broadcast over b
        if self.token_type is not None:
            types = torch.zeros_like(tokens) if token_types is None else token_types
            size = self.token_type.num_embeddings
            if types.shape != tokens.shape or types.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"token_types must be integer ids shaped like tokens {tuple(tokens.shape)}, "
                                 f"got {types.dtype} {tuple(types.shape)}")
            if types.numel() and (int(types.min()) < 0 or int(types.max()) >= size):
                raise ValueError(f"token type ids must lie in [0, {size}), got range "
                                 f"[{int(types.min())}, {int(types.max())}]")
            x = x + self.token_type(types)
        if self.norm is not None:
            x = self.norm(x)
        out: Tensor = self.dropout(x)
        return out


class Encoder(nn.Module):
    """A stack of encoder layers on embedded inputs (like ``nn.TransformerEncoder``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        spec = cfg.layer_spec(decoder=False)
        self.layers = nn.ModuleList(EncoderLayer(spec) for _ in range(cfg.num_encoder_layers))
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if cfg.uses_final_norm else None
        self.rel_bias = T5RelativeBias(cfg.num_heads, bidirectional=True) if cfg.positional == "t5" else None

    def forward(self, x: Tensor, mask: Tensor | None = None, *, need_weights: bool = False,
                causal: bool = False, segment_ids: Tensor | None = None) -> tuple[Tensor, list[Tensor | None]]:
        """x (b, m, c); mask True = may attend, e.g. :func:`key_mask` of the padding; segment_ids (b, m)."""
        score_bias = self.rel_bias(x.shape[1], x.shape[1], x.device) if self.rel_bias is not None else None
        weights = []
        for layer in self.layers:
            x, w = layer(x, mask=mask, score_bias=score_bias, causal=causal, need_weights=need_weights,
                         segment_ids=segment_ids)
            weights.append(w)
        return (self.norm(x) if self.norm is not None else x), weights


@dataclass
class DecoderCache:
    """Per-layer key/value caches plus how many target positions were already processed."""

    layers: list[DecoderLayerCache]
    offset: int = 0

    def reorder(self, index: Tensor, *, cross: bool | Tensor = True) -> None:
        """Keep batch rows ``index`` (beam search). ``cross``: which rows the cross-attention keys/values keep —
        True: ``index`` too; False: all, as they are (every row keeps a row of the same source); a tensor: those
        rows (decoding with ``beams``, where the cross cache holds one row per source)."""
        for c in self.layers:
            c.self_attn.reorder(index)
            if cross is not False:
                c.cross_attn.reorder(index if cross is True else cross)


class Decoder(nn.Module):
    """A stack of decoder layers (like ``nn.TransformerDecoder``); without cross-attention for LMs."""

    def __init__(self, cfg: ModelConfig, *, cross_attention: bool = True):
        super().__init__()
        spec = cfg.layer_spec(decoder=True)
        self.layers = nn.ModuleList(
            DecoderLayer(spec, cross_attention=cross_attention) for _ in range(cfg.num_decoder_layers)
        )
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if cfg.uses_final_norm else None
        self.rel_bias = T5RelativeBias(cfg.num_heads, bidirectional=False) if cfg.positional == "t5" else None

    def new_cache(self) -> DecoderCache:
        return DecoderCache([DecoderLayerCache(KVCache(), KVCache()) for _ in self.layers])

    def forward(
        self, x: Tensor, memory: Tensor | None = None, *, self_mask: Tensor | None = None,
        memory_mask: Tensor | None = None, cache: DecoderCache | None = None, need_weights: bool = False,
        segment_ids: tuple[Tensor, Tensor] | None = None, beams: int = 1,
    ) -> tuple[Tensor, list[tuple[Tensor | None, Tensor | None]]]:
        """x (b, n, c) embedded targets; memory (b, m, c). With ``cache``, x holds only new positions.
        beams: r consecutive target rows per memory row (beam search); memory and its mask hold b / r rows.

        segment_ids: packed rows, (target ids (b, n), memory ids (b, m)); for a decoder without
        cross-attention the second is ignored (pass the target ids twice)."""
        n = x.shape[1]
        past = cache.offset if cache is not None else 0
        score_bias = self.rel_bias(n, past + n, x.device) if self.rel_bias is not None else None
        weights = []
        for i, layer in enumerate(self.layers):
            x, w = layer(x, memory, self_mask=self_mask, memory_mask=memory_mask, score_bias=score_bias,
                         cache=cache.layers[i] if cache is not None else None, need_weights=need_weights,
                         segment_ids=segment_ids, beams=beams)
            weights.append(w)
        if cache is not None:
            cache.offset += n
        return (self.norm(x) if self.norm is not None else x), weights


def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """Xavier-uniform matrices (as nn.Transformer), zero biases, N(0, c^-1/2) embeddings.

    With embeddings scaled by sqrt(c) (§3.4) a c^-1/2 init gives unit-scale inputs and a
    well-scaled tied output projection.
    """
    std = cfg.d_model**-0.5 if cfg.scale_embeddings else 0.02
    for name, p in model.named_parameters():
        if name.endswith("token.weight"):
            nn.init.normal_(p, 0.0, std)
        elif name.endswith(".bias") and "norm" not in name:
            nn.init.zeros_(p)
        elif p.dim() == 2 and "positions" not in name and "rel_bias" not in name:
            nn.init.xavier_uniform_(p)


def count_parameters(model: nn.Module) -> int:
    """Distinct trainable parameters (tied matrices counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
