"""Encoder and decoder layers (the paper's §3.1), post-norm (the paper) or pre-norm.

Legend: b batch, n target positions, m source positions, c model dim.
Post-norm: x = Norm(x + Dropout(Sublayer(x))).   Pre-norm: x = x + Dropout(Sublayer(Norm(x))).
Masks are boolean, True = may attend; decoder self-attention is causal (bottom-right aligned).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from .attention import MultiHeadAttention
from .dropout import residual_dropout
from .feedforward import FeedForward
from .kv_cache import KVCache
from .norm import make_norm


@dataclass(frozen=True)
class LayerSpec:
    """Everything one encoder or decoder layer needs; built from a model config."""

    d_model: int
    num_heads: int
    num_kv_heads: int | None
    d_ff: int
    dropout: float
    attention_dropout: float
    activation: str
    norm: str
    norm_first: bool
    norm_eps: float
    bias: bool  # biases in the linear projections (the additive score bias is forward's `score_bias`)
    rope: bool
    alibi: bool
    window: tuple[int | None, int | None] | None
    backend: str
    kernel: str = "softmax"  # self-attention: "softmax" (exact) or "linear" (O(N)); see MultiHeadAttention


def _self_attention(s: LayerSpec) -> MultiHeadAttention:
    return MultiHeadAttention(
        s.d_model, s.num_heads, s.num_kv_heads, bias=s.bias, dropout=s.attention_dropout,
        rope=s.rope, alibi=s.alibi, window=s.window, backend=s.backend,
        kernel=s.kernel,
    )


class _Residual(nn.Module):
    """One sublayer with its norm, dropout and residual connection, in either order."""

    def __init__(self, s: LayerSpec):
        super().__init__()
        self.norm = make_norm(s.norm, s.d_model, s.norm_eps)
        self.p_drop = s.dropout  # residual dropout, fused into the add (layers/dropout.py)
        self.norm_first = s.norm_first

    def forward(self, x: Tensor, fn: Callable[[Tensor], Tensor | tuple[Tensor, Tensor | None]]
                ) -> tuple[Tensor, Tensor | None]:
        out = fn(self.norm(x) if self.norm_first else x)
        y, weights = out if isinstance(out, tuple) else (out, None)
        x = residual_dropout(x, y, self.p_drop, self.training)
        return (x if self.norm_first else self.norm(x)), weights


class EncoderLayer(nn.Module):
    def __init__(self, s: LayerSpec):
        super().__init__()
        self.self_attn = _self_attention(s)
        self.ff = FeedForward(s.d_model, s.d_ff, activation=s.activation, dropout=s.dropout, bias=s.bias)
        self.sub_attn = _Residual(s)
        self.sub_ff = _Residual(s)

    def forward(self, x: Tensor, *, mask: Tensor | None = None, score_bias: Tensor | None = None,
                causal: bool = False, need_weights: bool = False,
                segment_ids: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x (b, n, c); mask True = may attend (e.g. key padding (b, 1, 1, n)); score_bias additive (T5);
        segment_ids (b, n) of packed rows: attention stays inside each segment."""
        seg = (segment_ids, segment_ids) if segment_ids is not None else None
        x, weights = self.sub_attn(
            x, lambda h: self.self_attn(h, mask=mask, score_bias=score_bias, causal=causal,
                                       need_weights=need_weights, segment_ids=seg)
        )
        x, _ = self.sub_ff(x, self.ff)
        return x, weights


@dataclass
class DecoderLayerCache:
    self_attn: KVCache
    cross_attn: KVCache


class DecoderLayer(nn.Module):
    def __init__(self, s: LayerSpec, *, cross_attention: bool = True):
        super().__init__()
        self.self_attn = _self_attention(s)
        self.cross_attn = (
            MultiHeadAttention(s.d_model, s.num_heads, s.num_kv_heads, bias=s.bias,
                               dropout=s.attention_dropout, backend=s.backend)
            if cross_attention else None
        )
        self.ff = FeedForward(s.d_model, s.d_ff, activation=s.activation, dropout=s.dropout, bias=s.bias)
        self.sub_self = _Residual(s)
        self.sub_cross = _Residual(s) if cross_attention else None
        self.sub_ff = _Residual(s)

    def forward(
        self, x: Tensor, memory: Tensor | None = None, *, self_mask: Tensor | None = None,
        memory_mask: Tensor | None = None, score_bias: Tensor | None = None,
        cache: DecoderLayerCache | None = None, need_weights: bool = False,
        segment_ids: tuple[Tensor, Tensor] | None = None, beams: int = 1,
    ) -> tuple[Tensor, tuple[Tensor | None, Tensor | None]]:
        """x (b, n, c) targets; memory (b, m, c) encoder output. Self-attention is causal.
        beams: r consecutive target rows per memory row (memory, its mask and the cross cache hold b / r rows).

        segment_ids: packed rows, (target ids (b, n), memory ids (b, m)); self-attention stays inside a target
        segment, cross-attention goes to the source segment with the same id.
        Returns x and (self-attention weights, cross-attention weights) when ``need_weights``.
        """
        x, w_self = self.sub_self(x, lambda h: self.self_attn(
            h, mask=self_mask, score_bias=score_bias, causal=True, need_weights=need_weights,
            cache=cache.self_attn if cache is not None else None,
            segment_ids=(segment_ids[0], segment_ids[0]) if segment_ids is not None else None,
        ))
        w_cross = None
        if self.cross_attn is not None:
            if memory is None and (cache is None or cache.cross_attn.k is None):
                raise ValueError("a decoder layer with cross-attention needs the encoder memory")
            cross_attn = self.cross_attn
            if self.sub_cross is None:  # built together with cross_attn in __init__
                raise ValueError("a decoder layer with cross-attention needs its residual sublayer")
            x, w_cross = self.sub_cross(x, lambda h: cross_attn(
                h, memory if memory is not None else h, mask=memory_mask, need_weights=need_weights,
                cache=cache.cross_attn if cache is not None else None, segment_ids=segment_ids, beams=beams,
            ))
        x, _ = self.sub_ff(x, self.ff)
        return x, (w_self, w_cross)
