"""Attention weights from any selfattn model, at any length, whatever backend the model runs.

Legend: b batch, L captured layers, h captured heads, n queries, r captured query rows, m keys,
d head dim, c key-block width.

A fused backend (PyTorch SDPA, FlashAttention, Triton) never materialises the (n, m) weight map,
so it cannot hand it back; asking the model for ``need_weights`` would switch every layer to the
O(n·m) math path. Instead :func:`capture_attention` runs the model unchanged and, through
:attr:`MultiHeadAttention.observer`, keeps only the requested heads' q rows and k (after RoPE)
plus their masks. It then recomputes those rows as FlashAttention does (Dao et al., 2022):

1. pass 1 over key blocks: the log-sum-exp of each row, ``lse_i = log Σ_j exp(s_ij)``;
2. pass 2 over key blocks: the normalised weights ``p_ij = exp(s_ij - lse_i)``,

with ``s = q kᵀ / √d + bias`` and forbidden keys at -inf, honouring the boolean mask (True = may
attend), float masks (T5 relative bias), ``causal`` (bottom-right aligned: query i sits at key
position i + m - n), sliding windows and ALiBi exactly as :func:`selfattn.attention`. Peak extra
memory is the captured map plus one (r_block, c) block, so one head at 16,384 tokens needs ~1 GiB
(float32) instead of the h·n·m·(several temporaries) of the math path. A row that may attend no
key gets weights 0 (never NaN), like the backends. Weights are those before dropout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..attention.structure import window_allows, window_sides
from ..layers.attention import MultiHeadAttention

KINDS = ("encoder", "decoder", "cross")


@dataclass
class AttentionCapture:
    """Captured weights ``(b, L, h, r, m)`` for ``layers`` × ``heads`` × query ``rows``."""

    weights: Tensor  # (b, L, h, r, m), float32 (float64 for float64 models)
    kind: str  # "encoder" | "decoder" | "cross"
    layers: list[int]
    heads: list[int]
    rows: list[int]  # query positions captured, in order
    num_queries: int  # n: all query positions of the call
    num_keys: int  # m

    def head(self, layer: int, head: int, batch: int = 0) -> Tensor:
        """The (r, m) map of one captured ``layer`` and ``head`` (model indices, not positions)."""
        if layer not in self.layers or head not in self.heads:
            raise ValueError(f"layer {layer} / head {head} not captured; have layers {self.layers}, heads {self.heads}")
        return self.weights[batch, self.layers.index(layer), self.heads.index(head)]


class _StopForward(Exception):
    """Raised by the observer once every requested layer is captured: the rest need not run."""


def attention_modules(model: nn.Module, kind: str) -> list[MultiHeadAttention]:
    """The attention modules of ``kind`` in layer order (encoder/decoder self-attention or cross)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    stack = getattr(model, "encoder" if kind == "encoder" else "decoder", None)
    if stack is None or not hasattr(stack, "layers"):
        have = [k for k in KINDS if _has_kind(model, k)]
        raise ValueError(f"{type(model).__name__} has no {kind} attention; it has {have or 'none'}")
    attr = "cross_attn" if kind == "cross" else "self_attn"
    mods = [m for layer in stack.layers if isinstance(m := getattr(layer, attr, None), MultiHeadAttention)]
    if not mods or len(mods) != len(stack.layers):
        have = [k for k in KINDS if k != kind and _has_kind(model, k)]
        raise ValueError(f"{type(model).__name__} has no {kind} attention; it has {have or 'none'}")
    return mods


def _has_kind(model: nn.Module, kind: str) -> bool:
    stack = getattr(model, "encoder" if kind == "encoder" else "decoder", None)
    attr = "cross_attn" if kind == "cross" else "self_attn"
    layers = getattr(stack, "layers", None)
    return bool(layers) and all(isinstance(getattr(x, attr, None), MultiHeadAttention) for x in layers or ())


def available_kinds(model: nn.Module) -> list[str]:
    """Which of "encoder", "decoder", "cross" this model has."""
    return [k for k in KINDS if _has_kind(model, k)]


def check_softmax(mods: list[MultiHeadAttention], layers: list[int], kind: str) -> None:
    """Linear attention (Katharopoulos et al., 2020) forms no weight map: refuse rather than invent one."""
    linear = [i for i in layers if kind != "cross" and mods[i].kernel == "linear"]
    if linear:
        raise ValueError(f"{kind} layers {linear} use linear attention, which forms no attention weights; "
                         "only softmax attention layers can be captured")


def _indices(name: str, given: int | Iterable[int] | None, size: int) -> list[int]:
    """Validate a selection of layers/heads/rows: None = all, an int, a range or ints in [0, size)."""
    if given is None:
        return list(range(size))
    items = [given] if isinstance(given, int) else list(given)
    if not items or any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < size for i in items):
        raise ValueError(f"{name} must be ints in [0, {size}) (there are {size}), got {given!r}")
    return items


def _slice_mask(mask: Tensor | None, heads: Tensor, rows: Tensor) -> Tensor | None:
    """Keep only the captured heads and rows of a mask broadcastable to (b, H, n, m)."""
    if mask is None:
        return None
    mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (b|1, H|1, n|1, m|1)
    if mask.shape[1] > 1:
        mask = mask.index_select(1, heads)  # (b|1, h, n|1, m|1)
    if mask.shape[2] > 1:
        mask = mask.index_select(2, rows)  # (b|1, h|1, r, m|1)
    return mask.detach()


def _block_scores(q: Tensor, k: Tensor, mask: Tensor | None, keys: slice, pos: Tensor, *,
                  causal: bool, window, slopes: Tensor | None, scale: float) -> Tensor:
    """Scores (b, h, r_blk, c) of rows ``q`` against key block ``keys``; forbidden keys are -inf.

    ``pos`` (r_blk,) is each query's key position (bottom-right aligned, as in
    :func:`selfattn.attention.structural_mask`); ALiBi is ``-slope * |pos - j|`` in float32
    (float64 for float64 rows) as in :func:`selfattn.attention.alibi_bias`.
    """
    stat = q.dtype
    s = (q @ k[:, :, keys].transpose(-2, -1)) * scale  # (b, h, r_blk, c)
    j = torch.arange(keys.start, keys.stop, device=q.device)  # (c,)
    delta = j.unsqueeze(0) - pos.unsqueeze(1)  # (r_blk, c) key position minus query position
    bias = None
    allowed = None
    if mask is not None:
        mb = mask[..., keys] if mask.shape[3] > 1 else mask  # (b|1, h|1, r_blk|1, c|1)
        if mb.dtype == torch.bool:
            allowed = mb
        else:
            bias = mb
    if slopes is not None:
        bdt = torch.float64 if stat == torch.float64 else torch.float32  # as alibi_bias for this dtype
        ab = -slopes.to(bdt).view(1, -1, 1, 1) * delta.abs().to(bdt)  # (1, h, r_blk, c)
        bias = ab if bias is None else bias + ab
    if bias is not None:
        s = s + bias.to(stat)
    structural = window_allows(delta, *window_sides(causal, window))  # (r_blk, c) or None
    if structural is not None:
        allowed = structural if allowed is None else allowed & structural
    return s if allowed is None else s.masked_fill(~allowed, float("-inf"))


def blockwise_weights(q: Tensor, k: Tensor, *, rows: Sequence[int], n: int, mask: Tensor | None = None,
                      causal: bool = False, window=None, slopes: Tensor | None = None,
                      scale: float | None = None, block: int = 1024, out: Tensor | None = None) -> Tensor:
    """Softmax weights (b, h, r, m) of query ``rows`` (of n) from q (b, h, r, d) and k (b, h, m, d).

    Two passes over key blocks of width ``block``: log-sum-exp per row, then ``exp(s - lse)``.
    ``mask`` is already sliced to these heads and rows (see :func:`_slice_mask`); ``slopes`` (h,).
    Writes into ``out`` when given (a (b, h, r, m) view), so nothing but the map is kept.
    """
    if block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    b, h, r, d = q.shape
    m = k.shape[2]
    stat = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = d**-0.5 if scale is None else scale
    q, k = q.to(stat), k.to(stat)
    pos = torch.as_tensor(rows, device=q.device) + (m - n)  # (r,) bottom-right aligned key position
    out = torch.empty(b, h, r, m, dtype=stat, device=q.device) if out is None else out
    for r0 in range(0, r, block):
        rs = slice(r0, min(r0 + block, r))
        q_blk, pos_blk = q[:, :, rs], pos[rs]  # (b, h, r_blk, d), (r_blk,)
        m_blk = mask[:, :, rs] if mask is not None and mask.shape[2] > 1 else mask
        kw = dict(causal=causal, window=window, slopes=slopes, scale=scale)
        lse = torch.full((b, h, q_blk.shape[2], 1), float("-inf"), dtype=stat, device=q.device)
        for c0 in range(0, m, block):  # pass 1: running log-sum-exp per row
            s = _block_scores(q_blk, k, m_blk, slice(c0, min(c0 + block, m)), pos_blk, **kw)
            lse = torch.logaddexp(lse, torch.logsumexp(s, dim=-1, keepdim=True))  # (b, h, r_blk, 1)
        lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # empty rows: exp(-inf) = 0
        for c0 in range(0, m, block):  # pass 2: normalised weights, written in place
            cs = slice(c0, min(c0 + block, m))
            out[:, :, rs, cs] = torch.exp(_block_scores(q_blk, k, m_blk, cs, pos_blk, **kw) - lse)
    return out


def _run(model: nn.Module, inputs: Any, kind: str) -> None:
    """Call the model on ``inputs``: a tensor, a tuple of positional args, or a dict of kwargs."""
    if isinstance(inputs, dict):
        model(**inputs)
    elif isinstance(inputs, (tuple, list)):
        model(*inputs)
    elif isinstance(inputs, Tensor):
        if hasattr(model, "encode") and hasattr(model, "decode"):  # encoder-decoder Transformer
            if kind != "encoder":
                raise ValueError(f"{kind} attention of an encoder-decoder model needs inputs (src, tgt), "
                                 "got one tensor")
            cast(Any, model).encode(inputs)
        else:
            model(inputs)
    else:
        raise ValueError(f"inputs must be a tensor, a tuple of model arguments or a dict, got {type(inputs).__name__}")


class _Recorder:
    """What :func:`capture_attention` keeps: one observer per wanted layer writes its heads' rows into ``out``."""

    def __init__(self, want: list[int], heads: int | Iterable[int] | None, rows: int | Iterable[int] | None,
                 block: int):
        self.want, self.want_heads, self.want_rows, self.block = want, heads, rows, block
        self.seen: set[int] = set()
        self.out: Tensor | None = None  # (b, L, h, r, m), allocated at the first observed layer
        self.heads: list[int] = []
        self.rows: list[int] = []
        self.n = self.m = 0

    def observer(self, li: int):
        def observe(mod, q, k, *, mask, causal, window, alibi_slopes):
            self.record(li, q, k, mask=mask, causal=causal, window=window, alibi_slopes=alibi_slopes)
        return observe

    def record(self, li: int, q: Tensor, k: Tensor, *, mask: Tensor | None, causal: bool, window,
               alibi_slopes: Tensor | None) -> None:
        """Layer ``li``'s attention: q (b, H, n, d), k (b, g, m, d) after RoPE, with its masks."""
        if li in self.seen:
            raise ValueError("capture_attention needs one full forward (no decoding cache); "
                             f"layer {li} attention ran twice")
        b, nh, n, _ = q.shape
        hs = _indices("heads", self.want_heads, nh)
        rs = _indices("rows", self.want_rows, n)
        h_t = torch.tensor(hs, device=q.device)
        r_t = torch.tensor(rs, device=q.device)
        if self.out is None:
            stat = torch.float64 if q.dtype == torch.float64 else torch.float32
            self.out = torch.zeros(b, len(self.want), len(hs), len(rs), k.shape[2], dtype=stat, device=q.device)
            self.heads, self.rows, self.n, self.m = hs, rs, n, k.shape[2]
        q_sel = q.detach().index_select(1, h_t).index_select(2, r_t)  # (b, h, r, d)
        k_sel = k.detach().index_select(1, h_t // (nh // k.shape[1]))  # (b, h, m, d): GQA kv head
        slopes = alibi_slopes.index_select(0, h_t) if alibi_slopes is not None else None
        blockwise_weights(q_sel, k_sel, rows=rs, n=n, mask=_slice_mask(mask, h_t, r_t), causal=causal,
                          window=window, slopes=slopes, block=self.block, out=self.out[:, self.want.index(li)])
        self.seen.add(li)
        if len(self.seen) == len(self.want):
            raise _StopForward


def capture_attention(model: nn.Module, inputs: Any, *, kind: str | None = None,
                      layers: int | Iterable[int] | None = None, heads: int | Iterable[int] | None = None,
                      rows: int | Iterable[int] | None = None, block: int = 1024) -> AttentionCapture:
    """Attention weights of ``layers`` × ``heads`` × query ``rows`` of ``kind`` for ``inputs``.

    Args:
        model: any selfattn model (Transformer, TransformerEncoderModel, TransformerLM) or module
            with ``encoder``/``decoder`` stacks of selfattn layers; it runs with its own backend.
        inputs: the model's arguments: a token tensor (b, n), a tuple such as ``(src, tgt)``, or a
            dict such as ``{"tokens": ids, "padding": pad}``. For an encoder-decoder model and
            ``kind="encoder"`` the source tensor alone is enough.
        kind: "encoder", "decoder" (causal self-attention) or "cross"; default: the model's first.
        layers, heads, rows: ints or iterables of ints; None = all. ``rows`` are query positions.
        block: rows and keys per block of the recomputation (memory ~ block² per step).

    The model is run in eval mode (restored after), without gradients, and stops as soon as the
    last requested layer has been seen. Returns an :class:`AttentionCapture`.
    """
    kinds = available_kinds(model)
    kind = (kinds[0] if kinds else "encoder") if kind is None else kind
    mods = attention_modules(model, kind)
    want = _indices("layers", layers, len(mods))
    check_softmax(mods, want, kind)
    rec = _Recorder(want, heads, rows, block)
    was_training = model.training
    model.eval()
    try:
        for li in want:
            mods[li].observer = rec.observer(li)
        with torch.no_grad():
            _run(model, inputs, kind)
    except _StopForward:
        pass
    finally:
        for mod in mods:
            mod.observer = None
        model.train(was_training)
    missing = [li for li in want if li not in rec.seen]
    if missing or rec.out is None:
        raise ValueError(f"{kind} layers {missing} computed no softmax attention for these inputs "
                         "(a linear-attention layer has no weight map, or the inputs skip that stack)")
    return AttentionCapture(rec.out, kind, want, rec.heads, rec.rows, rec.n, rec.m)
