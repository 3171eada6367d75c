"""The three model kinds built from :class:`ModelConfig`.

Legend: b batch, m source length, n target length, c model dim, V vocabulary.
Padding masks passed to models are (b, length) booleans with **True = real token**; when none
is given and ``cfg.pad_id`` is set, they are derived from the token ids — always, whether or not
a row holds padding: the choice depends on the config, never on the data, so a forward has no host
synchronisation and traces (torch.compile / torch.export) to one graph for every batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .transformer import (
    Decoder,
    DecoderCache,
    Embeddings,
    Encoder,
    count_parameters,
    init_weights,
    key_mask,
)


def _padding(tokens: Tensor, given: Tensor | None, pad_id: int | None) -> Tensor | None:
    if given is not None:
        if given.shape != tokens.shape:
            raise ValueError(f"padding mask shape {tuple(given.shape)} must equal tokens shape {tuple(tokens.shape)}")
        return given
    if pad_id is None:
        return None
    return tokens != pad_id  # (b, n) True = real token


def _segments(ids: Tensor | None, tokens: Tensor, name: str) -> Tensor | None:
    if ids is not None and (ids.shape != tokens.shape or ids.dtype not in (torch.int64, torch.int32)):
        raise ValueError(f"{name} segment ids must be integers shaped like the tokens {tuple(tokens.shape)}, "
                         f"got {ids.dtype} {tuple(ids.shape)}")
    return ids


class _Base(nn.Module):
    cfg: ModelConfig

    def num_parameters(self) -> int:
        return count_parameters(self)


class Transformer(_Base):
    """Encoder–decoder Transformer (Vaswani et al., 2017), shared embeddings per §3.4."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.kind != "encoder-decoder":
            raise ValueError(f"Transformer needs kind='encoder-decoder', got {cfg.kind!r}")
        self.cfg = cfg
        src_vocab = cfg.src_vocab_size or cfg.vocab_size
        if cfg.share_embeddings and src_vocab != cfg.vocab_size:
            raise ValueError(f"shared embeddings need one vocabulary, got src {src_vocab} vs tgt {cfg.vocab_size}")
        self.tgt_embed = Embeddings(cfg, cfg.vocab_size)
        shared = self.tgt_embed.token if cfg.share_embeddings else None
        self.src_embed = Embeddings(cfg, src_vocab, token=shared)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg, cross_attention=True)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_weights(self, cfg)
        if cfg.share_embeddings:
            self.output.weight = self.tgt_embed.token.weight  # tied (§3.4)

    def encode(self, src: Tensor, src_padding: Tensor | None = None, *, need_weights: bool = False,
               segment_ids: Tensor | None = None) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
        """src (b, m) -> memory (b, m, c), memory mask (b, 1, 1, m) or None, per-layer weights.

        segment_ids: (b, m) source segment ids of packed rows (see the module docstring)."""
        seg = _segments(segment_ids, src, "source")
        mask = key_mask(_padding(src, src_padding, self.cfg.pad_id))
        memory, weights = self.encoder(self.src_embed(src, segment_ids=seg), mask, need_weights=need_weights,
                                       segment_ids=seg)
        return memory, mask, weights

    def decode(self, tgt: Tensor, memory: Tensor, memory_mask: Tensor | None = None, *,
               tgt_padding: Tensor | None = None, cache: DecoderCache | None = None,
               need_weights: bool = False, segment_ids: tuple[Tensor, Tensor] | None = None, beams: int = 1,
               ) -> tuple[Tensor, list[tuple[Tensor | None, Tensor | None]]]:
        """tgt (b, n) -> logits (b, n, V) and per-layer (self, cross) weights.

        With ``cache`` pass only the new target positions; keys/values of earlier ones are reused.
        segment_ids: packed rows, (target ids (b, n), source ids (b, m)) — no cache then.
        beams: r consecutive target rows per source (beam search's hypotheses): memory and memory_mask hold
        b / r rows, and the cross-attention keys/values are computed and cached once per source.
        """
        offset = cache.offset if cache is not None else 0
        if segment_ids is not None:
            _segments(segment_ids[0], tgt, "target")
            _segments(segment_ids[1], memory[..., 0], "source")
        self_mask = key_mask(_padding(tgt, tgt_padding, self.cfg.pad_id)) if cache is None else None
        x = self.tgt_embed(tgt, offset=offset, segment_ids=segment_ids[0] if segment_ids is not None else None)
        x, weights = self.decoder(x, memory, self_mask=self_mask, memory_mask=memory_mask,
                                  cache=cache, need_weights=need_weights, segment_ids=segment_ids, beams=beams)
        logits: Tensor = self.output(x)  # (b, n, V)
        return logits, weights

    def forward(self, src: Tensor, tgt: Tensor, src_padding: Tensor | None = None,
                tgt_padding: Tensor | None = None, *, segment_ids: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Teacher-forced logits (b, n, V) for targets ``tgt`` given sources ``src``.

        segment_ids: packed rows (several pairs a row), (source ids (b, m), target ids (b, n)): each pair gets
        the logits it gets alone (attention stays inside its pair, positions restart per pair).
        """
        src_seg, tgt_seg = segment_ids if segment_ids is not None else (None, None)
        memory, mask, _ = self.encode(src, src_padding, segment_ids=src_seg)
        logits, _ = self.decode(tgt, memory, mask, tgt_padding=tgt_padding,
                                segment_ids=(tgt_seg, src_seg) if tgt_seg is not None and src_seg is not None
                                else None)
        return logits

    def new_cache(self) -> DecoderCache:
        return self.decoder.new_cache()


class TransformerEncoderModel(_Base):
    """Encoder-only model (BERT-style): token ids -> contextual vectors (b, n, c)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.kind != "encoder":
            raise ValueError(f"TransformerEncoderModel needs kind='encoder', got {cfg.kind!r}")
        self.cfg = cfg
        self.embed = Embeddings(cfg, cfg.vocab_size)
        self.encoder = Encoder(cfg)
        init_weights(self, cfg)

    def forward(self, tokens: Tensor, padding: Tensor | None = None, token_types: Tensor | None = None,
                *, need_weights: bool = False) -> Tensor | tuple[Tensor, list[Tensor | None]]:
        """Returns hidden states (b, n, c); with ``need_weights`` also the per-layer weights."""
        mask = key_mask(_padding(tokens, padding, self.cfg.pad_id))
        x, weights = self.encoder(self.embed(tokens, token_types=token_types), mask, need_weights=need_weights)
        return (x, weights) if need_weights else x


class TransformerLM(_Base):
    """Decoder-only causal language model (GPT-style) with tied input/output embeddings."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.kind != "decoder":
            raise ValueError(f"TransformerLM needs kind='decoder', got {cfg.kind!r}")
        self.cfg = cfg
        self.embed = Embeddings(cfg, cfg.vocab_size)
        self.decoder = Decoder(cfg, cross_attention=False)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_weights(self, cfg)
        if cfg.share_embeddings:
            self.output.weight = self.embed.token.weight

    def forward(self, tokens: Tensor, padding: Tensor | None = None, *, cache: DecoderCache | None = None,
                need_weights: bool = False
                ) -> Tensor | tuple[Tensor, list[tuple[Tensor | None, Tensor | None]]]:
        """tokens (b, n) -> logits (b, n, V). With ``cache`` pass only the new tokens."""
        offset = cache.offset if cache is not None else 0
        mask = key_mask(_padding(tokens, padding, self.cfg.pad_id)) if cache is None else None
        x, weights = self.decoder(self.embed(tokens, offset=offset), self_mask=mask, cache=cache,
                                  need_weights=need_weights)
        logits: Tensor = self.output(x)  # (b, n, V)
        return (logits, weights) if need_weights else logits

    def new_cache(self) -> DecoderCache:
        return self.decoder.new_cache()


def build_model(cfg: ModelConfig) -> Transformer | TransformerEncoderModel | TransformerLM:
    """The model class that matches ``cfg.kind``."""
    classes: dict[str, type[Transformer | TransformerEncoderModel | TransformerLM]] = {
        "encoder-decoder": Transformer, "encoder": TransformerEncoderModel, "decoder": TransformerLM}
    return classes[cfg.kind](cfg)


__all__ = ["Transformer", "TransformerEncoderModel", "TransformerLM", "build_model"]
