"""Multi-head attention (the paper's §3.2.2) with grouped-query heads, RoPE, ALiBi and a KV cache.

Legend: b batch, n queries, m keys, h query heads, g kv heads, d head dim, c model dim (h * d).
Mask convention: boolean True = may attend; ``causal`` is bottom-right aligned (query i may
attend key j when j <= i + m - n), so cached decoding is an ordinary call with n=1.
Cross-attention with ``beams`` = r > 1: x holds r consecutive rows per context row (the hypotheses of one
input in beam search), b = r * bc; their queries are folded into one problem per context row, (bc, h, r*n, d),
so the context's keys and values are projected, cached and read once per input instead of r times — exact,
since every query attends independently.
A self-attention module prepared for inference (:meth:`MultiHeadAttention.fuse_qkv`) projects q, k and v with one
matmul, (b, n, (h + 2g) * d), and bounds all three for the backends' non-finite checks with one pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..attention import attention
from ..attention.guards import max_abs, remember_max_abs, tracing
from ..attention.linear import linear_attention
from ..attention.spec import broadcasts_to
from ..data.packing import segment_positions
from ..positional import RotaryEmbedding, alibi_slopes
from .kv_cache import KVCache

KERNELS = ("softmax", "linear")  # MultiHeadAttention(kernel=): how self-attention scores become weights


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with ``num_heads`` query heads and ``num_kv_heads`` key/value heads.

    Args:
        d_model: model width c.
        num_heads: query heads h; head dim d = c / h.
        num_kv_heads: key/value heads g (h % g == 0); None = h (multi-head), 1 = multi-query.
        bias: biases in the four projections.
        dropout: dropout on attention weights (training only).
        kv_dim: width of the cross-attention context when it differs from c.
        rope: rotate q and k by position (self-attention only).
        alibi: add ALiBi's per-head linear distance penalty (self-attention only).
        window: (left, right) sliding window in key positions, or None for full attention.
        backend: attention backend name for :func:`selfattn.attention` ("auto" picks).
        kernel: how self-attention scores become weights: "softmax" (exact, through ``backend``) or
            "linear" (Katharopoulos et al., 2020; O(N), approximate, see :mod:`selfattn.attention.linear`).
            Not to be confused with ``ModelConfig.attention_type`` ("full" | "sliding" | "linear"),
            which picks the window as well and maps onto ``kernel`` and ``window``.

    ``observer``: optional callable, called as ``observer(self, q, k, mask=, causal=, window=,
    alibi_slopes=)`` right before each :func:`selfattn.attention` call with exactly what it gets
    (q and k after RoPE and the cache). :mod:`selfattn.inspect.capture` uses it; None = no cost.
    """

    observer = None  # see the class docstring; set per instance by selfattn.inspect

    def __init__(
        self, d_model: int, num_heads: int, num_kv_heads: int | None = None, *, bias: bool = True,
        dropout: float = 0.0, kv_dim: int | None = None, rope: bool = False, alibi: bool = False,
        window: tuple[int | None, int | None] | None = None, backend: str = "auto",
        kernel: str = "softmax",
    ):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if not (isinstance(num_heads, int) and num_heads >= 1):
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = d_model // num_heads
        self.dropout, self.window, self.backend = dropout, window, backend
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.kernel = kernel
        if kernel == "linear" and (alibi or window is not None):
            raise ValueError("linear attention has no scores to add ALiBi to or to window; "
                             f"got alibi={alibi}, window={window}")
        kv_dim = d_model if kv_dim is None else kv_dim
        self.d_model, self.kv_dim = d_model, kv_dim
        self.qkv_proj: nn.Linear | None = None  # q_proj, k_proj, v_proj in one (fuse_qkv; inference copies only)
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(kv_dim, num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(kv_dim, num_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.rope = RotaryEmbedding(self.head_dim) if rope else None
        if alibi:
            self.register_buffer("alibi_slopes", alibi_slopes(num_heads), persistent=False)
        else:
            self.alibi_slopes = None

    def fuse_qkv(self) -> None:
        """Replace q_proj, k_proj and v_proj by one ``qkv_proj`` (self-attention; for a copy prepared for decoding,
        :func:`selfattn.generation.fast.for_inference`): a decoding step's few rows then cost one matmul instead of
        three, and one max-|x| pass bounds q, k and v. The same values, rows of one weight; the state dict changes
        (``qkv_proj.*``), so save the original model, not the fused copy."""
        if self.qkv_proj is not None:
            return
        if self.kv_dim != self.d_model:
            raise ValueError(f"fuse_qkv serves self-attention: keys and values projected from x (d_model="
                             f"{self.d_model}), got a cross-attention module with kv_dim={self.kv_dim}")
        parts = (self.q_proj, self.k_proj, self.v_proj)
        fused = nn.Linear(self.d_model, sum(p.out_features for p in parts), bias=self.q_proj.bias is not None,
                          device=self.q_proj.weight.device, dtype=self.q_proj.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([p.weight for p in parts]))  # ((h + 2g) * d, c)
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([p.bias for p in parts]))
        self.qkv_proj = fused
        del self.q_proj, self.k_proj, self.v_proj

    def _project_self(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (b, h, n, d), k, v (b, g, n, d) of x (b, n, c). Fused (:meth:`fuse_qkv`), one pass over the projection
        bounds all three, remembered for the KV cache and the backend's checks (which would measure each)."""
        if self.qkv_proj is None:
            return (self._split(self.q_proj(x), self.num_heads), self._split(self.k_proj(x), self.num_kv_heads),
                    self._split(self.v_proj(x), self.num_kv_heads))
        qkv = self.qkv_proj(x)  # (b, n, (h + 2g) * d)
        kv = self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([self.d_model, kv, kv], dim=-1)  # (b, n, h * d), (b, n, g * d) twice
        q, k, v = self._split(q, self.num_heads), self._split(k, self.num_kv_heads), self._split(v, self.num_kv_heads)
        if not tracing():
            bound = max_abs(qkv)  # NaN when any of them holds a NaN
            for t in (q, k, v) if self.rope is None else (v,):  # RoPE makes new q and k: the backend measures them
                remember_max_abs(t, bound)
        return q, k, v

    def _split(self, x: Tensor, heads: int) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, heads, self.head_dim).transpose(1, 2)  # (b, heads, n, d)

    def project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of ``context`` (b, m, kv_dim): k, v (b, g, m, d) each."""
        k = self._split(self.k_proj(context), self.num_kv_heads)  # (b, g, m, d)
        v = self._split(self.v_proj(context), self.num_kv_heads)  # (b, g, m, d)
        return k, v

    def _check_inputs(self, x: Tensor, context: Tensor | None, cache: KVCache | None,
                      segment_ids: tuple[Tensor, Tensor] | None, beams: int) -> None:
        """Shapes of forward's x, context and cache, as one-line ValueErrors."""
        c_in = self.d_model
        if x.dim() != 3 or x.shape[-1] != c_in:
            raise ValueError(f"x must be (batch, length, d_model={c_in}), got shape {tuple(x.shape)}")
        if not (isinstance(beams, int) and beams >= 1 and x.shape[0] % beams == 0) or (beams > 1 and (
                context is None or segment_ids is not None)):
            raise ValueError(f"beams must be a positive int dividing the batch ({x.shape[0]}), for cross-attention "
                             f"without segment_ids; got beams={beams!r}")
        b = x.shape[0] // beams if context is not None else x.shape[0]  # rows of the context and of the cache
        if context is not None and (context.dim() != 3 or context.shape[0] != b
                                    or context.shape[-1] != self.kv_dim):
            raise ValueError(f"context must be (batch={b}, length, {self.kv_dim}), "
                             f"got shape {tuple(context.shape)}")
        if cache is not None and cache.k is not None and cache.k.shape[0] != b:
            per = f" with beams={beams} (one cache row per {beams})" if beams > 1 else ""
            raise ValueError(f"the KV cache holds batch size {cache.k.shape[0]}, got input of batch size "
                             f"{x.shape[0]}{per} (use a new cache, or cache.reorder for beam search)")
        if context is not None and self.qkv_proj is not None:
            raise ValueError("this module's q, k, v projections are fused (fuse_qkv): it serves self-attention only, "
                             f"got a context of shape {tuple(context.shape)}")
        if segment_ids is not None and (cache is not None or self.kernel == "linear"):
            raise ValueError("segment_ids (packed rows) need softmax attention without a KV cache, got "
                             f"kernel={self.kernel!r}, cache={'set' if cache is not None else None}")

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, mask: Tensor | None = None,
        causal: bool = False, score_bias: Tensor | None = None, cache: KVCache | None = None,
        need_weights: bool = False, segment_ids: tuple[Tensor, Tensor] | None = None, beams: int = 1,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from x (b, n, c) to itself, or to ``context`` (b, m, kv_dim) for cross-attention.

        mask: boolean True = may attend, broadcastable to (b, h, n, m), e.g. a key-padding mask
        shaped (b, 1, 1, m). score_bias: additive float bias on the scores (T5 relative
        positions), broadcastable to (b, h, n, m) — not the projections' ``bias`` flag of ``__init__``.
        segment_ids: packed rows, (query ids (b, n), key ids (b, m)): query i may attend key j only when the
        ids are equal (AND-ed with mask and causal; the backends take them directly, no (n, m) mask); RoPE
        positions restart in every segment. beams: cross-attention only, r consecutive rows of x per context row
        (context, mask and cache hold b / r rows; see the module docstring).
        Returns (out (b, n, c), weights (b, h, n, m) or None).
        """
        is_self = context is None  # decided once: cross-attention (to `context`) has no causal, window or ALiBi
        self._check_inputs(x, context, cache, segment_ids, beams)
        b, n, c = x.shape
        if context is not None:
            # (not is_self, spelled so for the type checker) keys/values from the source, once
            q = self._split(self.q_proj(x), self.num_heads)  # (b, h, n, d)
            if cache is not None and cache.k is not None:
                if cache.v is None:  # k and v are always set together
                    raise ValueError("KVCache holds keys but no values")
                k, v = cache.k, cache.v
            else:
                k, v = self.project_kv(context)  # (b, g, m, d) each
                if cache is not None:
                    k, v = cache.fill(k, v)
        else:
            offset = cache.length if cache is not None else 0
            q, k, v = self._project_self(x)  # (b, h, n, d), (b, g, n, d) twice
            if self.rope is not None:
                pos = segment_positions(segment_ids[0]) if segment_ids is not None else None  # (b, n)
                q, k = self.rope(q, offset, pos), self.rope(k, offset, pos)
            if cache is not None:
                k, v = cache.append(k, v)  # (b, g, t, d)
        if score_bias is not None:
            if mask is not None:  # fold a boolean mask into the additive bias
                score_bias = score_bias.masked_fill(~mask, float("-inf"))
            mask = score_bias
        if beams > 1:  # cross-attention (checked): (b / r, h, r*n, d), the queries of one context row together
            q, mask = _fold_beams(q, mask, beams, k.shape[2])
        if self.observer is not None:  # selfattn.inspect: sees q, k and every mask attention() sees
            self.observer(self, q, k, mask=mask, causal=causal and is_self,
                          window=self.window if is_self else None,
                          alibi_slopes=self.alibi_slopes if is_self else None)
        if self.kernel == "linear" and is_self:
            if need_weights:
                raise ValueError("linear attention forms no weights; need_weights must be False")
            out = linear_attention(q, k, v, mask=mask, causal=causal)  # (b, h, n, d)
            out = out.transpose(1, 2).reshape(b, n, c)  # (b, n, c)
            return self.out_proj(out), None
        result = attention(
            q, k, v, mask=mask, causal=causal and is_self,
            dropout_p=self.dropout if self.training else 0.0,
            window=self.window if is_self else None,
            alibi_slopes=self.alibi_slopes if is_self else None,
            backend=self.backend, return_weights=need_weights, segment_ids=segment_ids,
        )
        out, weights = result if need_weights else (result, None)
        if beams > 1:
            out, weights = _unfold_beams(out, beams), (None if weights is None else _unfold_beams(weights, beams))
        out = out.transpose(1, 2).reshape(b, n, c)  # (b, n, c)
        return self.out_proj(out), weights


def _fold_beams(q: Tensor, mask: Tensor | None, r: int, m: int) -> tuple[Tensor, Tensor | None]:
    """q (bc*r, h, n, d) -> (bc, h, r*n, d), r rows' queries side by side; a mask (or additive bias) that must
    broadcast to (bc, h, n, m) — one row per context row — and has a query axis is repeated along it to match."""
    b, h, n, d = q.shape
    bc = b // r
    q = q.view(bc, r, h, n, d).transpose(1, 2).reshape(bc, h, r * n, d)  # (bc, h, r*n, d)
    if mask is not None and not broadcasts_to(mask, (bc, h, n, m)):
        raise ValueError(f"with beams={r} a mask or score bias must broadcast to (B / beams, Hq, Nq, Nk) = "
                         f"{(bc, h, n, m)}, one row per context row; got shape {tuple(mask.shape)}")
    if mask is not None and mask.dim() >= 2 and mask.shape[-2] > 1:
        mask = mask[(None,) * (4 - mask.dim())].repeat(1, 1, r, 1)  # (bc|1, h|1, r*n, m), rows in q's order
    return q, mask


def _unfold_beams(t: Tensor, r: int) -> Tensor:
    """(bc, h, r*n, e) -> (bc*r, h, n, e): the inverse of :func:`_fold_beams` for outputs and weights."""
    bc, h, rn, e = t.shape
    return t.view(bc, h, r, rn // r, e).transpose(1, 2).reshape(bc * r, h, rn // r, e)  # (b, h, n, e)
