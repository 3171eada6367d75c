"""The key/value cache of one attention layer, kept across decoding steps.

Legend: b batch, g kv heads, t cached positions, n new positions, d head dim, T buffer capacity.

Self-attention appends each step's keys/values (already rotated when RoPE is used); cross-attention fills
the cache once from the encoder output and reuses it. In eager decoding without gradients the keys and values
live in preallocated buffers (b, g, T, d) that grow by doubling: a step writes its n rows in place instead of
concatenating (a copy of all t rows), and beam search's row selection writes into a second pair of buffers
(ping-pong) instead of allocating. ``k`` and ``v`` are views of the first t positions — valid until the next
``append`` or ``reorder``; clone them to keep them. With gradients, or while torch.compile / torch.export
trace, the cache concatenates (a functional graph, and no in-place write under a saved tensor).

The cache also records max |x| of what it holds (:func:`~selfattn.attention.guards.remember_max_abs`): the
backends' NaN/inf and overflow checks then read the cached keys and values without a pass over them every
step; only new rows are measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..attention.guards import max_abs, max_of_bounds, remember_max_abs, tracing

MIN_CAPACITY = 16  # positions a self-attention buffer starts with: a sentence's first doublings cost nothing


@dataclass
class KVCache:
    """Keys and values of one attention layer: ``k``, ``v`` (b, g, t, d), or None before the first step."""

    k: Tensor | None = None  # (b, g, t, d)
    v: Tensor | None = None  # (b, g, t, d)
    _bufs: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False)  # (b, g, T, d) each
    _spare: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False)  # reorder's target
    _bound: tuple[float, float] | None = field(default=None, init=False, repr=False)  # max |k|, max |v|

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add n positions k, v (b, g, n, d); returns the cache's keys and values (b, g, t+n, d)."""
        if self.k is None or self.v is None:
            return self.fill(k, v, capacity=max(MIN_CAPACITY, 2 * k.shape[2]))
        if (k.shape[0], k.shape[1], k.shape[3]) != (self.k.shape[0], self.k.shape[1], self.k.shape[3]):
            raise ValueError(f"KVCache holds keys of shape (b, g, t, d) = {tuple(self.k.shape)}; new keys "
                             f"{tuple(k.shape)} differ in batch, heads or head dim (use a new cache)")
        bound = _combined(self._bound or self._measure(self.k, self.v), self._measure(k, v))
        t, n = self.k.shape[2], k.shape[2]
        if not self._in_place():
            self._bufs = self._spare = None
            self._set(torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2), bound)  # (b, g, t+n, d)
            return self.k, self.v
        if self._bufs is None or self._bufs[0].shape[2] < t + n:
            self._into_new_buffers(self.k, self.v, max(2 * (t + n), MIN_CAPACITY))
        kb, vb = self._bufs  # type: ignore[misc]  # set just above or before
        kb[:, :, t : t + n].copy_(k)
        vb[:, :, t : t + n].copy_(v)
        self._set(kb[:, :, : t + n], vb[:, :, : t + n], bound)  # views (b, g, t+n, d)
        return self.k, self.v

    def fill(self, k: Tensor, v: Tensor, *, capacity: int | None = None) -> tuple[Tensor, Tensor]:
        """Hold k, v (b, g, t, d): contiguous (a step's matmuls read them without a copy), measured once.
        ``capacity`` > t: positions reserved for appends (eager decoding without gradients only). Returns the
        held keys and values."""
        bound = self._measure(k, v)
        self._bufs = self._spare = None
        if capacity is None or capacity <= k.shape[2] or not self._in_place():
            k, v = k.contiguous(), v.contiguous()
        else:
            k, v = self._into_new_buffers(k, v, capacity)  # views (b, g, t, d)
        self._set(k, v, bound)
        return k, v

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search): keeps rows ``index`` in that order."""
        if self.k is None:
            return
        if self.v is None:  # k and v are always set together
            raise ValueError("KVCache holds keys but no values")
        bound = self._bound  # rows of k and v: their bounds hold
        if self._bufs is None or not self._in_place():
            self._bufs = self._spare = None
            self._set(self.k.index_select(0, index), self.v.index_select(0, index), bound)
            return
        b, t, cap = index.shape[0], self.k.shape[2], self._bufs[0].shape[2]
        if self._spare is None or self._spare[0].shape[0] < b:
            self._spare = self._alloc(b, cap, self.k, self.v)
        sk, sv = self._spare[0][:b], self._spare[1][:b]  # (b', g, T, d): a prefix of rows stays contiguous
        torch.index_select(self.k, 0, index, out=sk[:, :, :t])
        torch.index_select(self.v, 0, index, out=sv[:, :, :t])
        self._spare, self._bufs = self._bufs, (sk, sv)
        self._set(sk[:, :, :t], sv[:, :, :t], bound)

    def _in_place(self) -> bool:
        """Buffers written in place serve eager calls without gradients (see the module docstring), in the
        inference mode their buffers were made in."""
        if torch.is_grad_enabled() or tracing():
            return False
        return self._bufs is None or self._bufs[0].is_inference() == torch.is_inference_mode_enabled()

    @staticmethod
    def _alloc(b: int, capacity: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """A new pair of buffers (b, g, T, d) with k's and v's heads, head dims, dtype and device."""
        return (k.new_empty(b, k.shape[1], capacity, k.shape[3]), v.new_empty(b, v.shape[1], capacity, v.shape[3]))

    def _into_new_buffers(self, k: Tensor, v: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
        """New buffers of ``capacity`` positions holding k, v (b, g, t, d) first; returns their views of them."""
        t = k.shape[2]
        self._bufs, self._spare = self._alloc(k.shape[0], capacity, k, v), None
        self._bufs[0][:, :, :t].copy_(k)
        self._bufs[1][:, :, :t].copy_(v)
        return self._bufs[0][:, :, :t], self._bufs[1][:, :, :t]

    @staticmethod
    def _measure(k: Tensor, v: Tensor) -> tuple[float, float] | None:
        """max |k|, max |v|; None while tracing (nothing is read on the host then)."""
        return None if tracing() else (max_abs(k), max_abs(v))

    def _set(self, k: Tensor, v: Tensor, bound: tuple[float, float] | None) -> None:
        self.k, self.v, self._bound = k, v, bound
        if bound is not None:
            remember_max_abs(k, bound[0])  # kept only where guards.can_remember(t)
            remember_max_abs(v, bound[1])


def _combined(a: tuple[float, float] | None, b: tuple[float, float] | None) -> tuple[float, float] | None:
    """The bounds of a concatenation: per tensor the larger (NaN wins); None while tracing."""
    return None if a is None or b is None else (max_of_bounds(a[0], b[0]), max_of_bounds(a[1], b[1]))
