"""The attention entry point and its registry of backends.

Every backend is a plain function with one signature::

    fn(q, k, v, *, mask, causal, scale, dropout_p, window, alibi_slopes, return_weights)
        -> (out (b, h, n, e), weights (b, h, n, m) or None)

paired with ``supports(call) -> None | reason`` that says why it cannot serve a call.
``"auto"`` walks the backends by descending priority and takes the first that can serve it;
:func:`explain_backend` reports that choice and why each other backend was passed over.

Mask convention: boolean True = may attend; floating = additive bias. ``causal`` is
bottom-right aligned: query i may attend key j when j <= i + (Nk - Nq).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from torch import Tensor

from .spec import AttentionCall, validate_call


class AttentionFn(Protocol):
    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None, causal: bool,
        scale: float | None, dropout_p: float, window, alibi_slopes: Tensor | None,
        return_weights: bool,
    ) -> tuple[Tensor, Tensor | None]: ...


@dataclass(frozen=True)
class Backend:
    name: str
    fn: AttentionFn
    supports: Callable[[AttentionCall], str | None]
    priority: int  # higher = preferred by "auto" when it can serve the call
    description: str = ""
    # Only for "auto": why not to pick this backend although it could serve the call (e.g. slower
    # there); a backend named explicitly ignores it. None = "auto" uses it whenever it can.
    auto_declines: Callable[[AttentionCall], str | None] | None = None


BACKENDS: dict[str, Backend] = {}


def register_backend(
    name: str,
    fn: AttentionFn,
    supports: Callable[[AttentionCall], str | None],
    *,
    priority: int,
    description: str = "",
    auto_declines: Callable[[AttentionCall], str | None] | None = None,
) -> None:
    """Add (or replace) a backend. Later issues plug flash, triton, ... in here."""
    BACKENDS[name] = Backend(name, fn, supports, priority, description, auto_declines)


@dataclass
class BackendChoice:
    """Which backend a call uses, and why each other backend was not used."""

    chosen: str
    reasons: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"backend: {self.chosen}"]
        lines += [f"  not {name}: {why}" for name, why in self.reasons.items()]
        return "\n".join(lines)


def _choose(call: AttentionCall, backend: str) -> BackendChoice:
    if backend != "auto" and backend not in BACKENDS:
        known = ", ".join(["auto", *sorted(BACKENDS)])
        raise ValueError(f"unknown attention backend {backend!r}; expected one of: {known}")
    if backend != "auto":
        why = BACKENDS[backend].supports(call)
        if why is not None:
            raise ValueError(f"attention backend {backend!r} cannot serve this call: {why}")
        return BackendChoice(backend, {n: "not requested (backend named explicitly)"
                                       for n in BACKENDS if n != backend})
    reasons: dict[str, str] = {}
    chosen = None
    for b in sorted(BACKENDS.values(), key=lambda b: -b.priority):
        if chosen is not None:
            reasons[b.name] = f"lower priority than {chosen!r}"
            continue
        why = b.supports(call)
        if why is None and b.auto_declines is not None:
            why = b.auto_declines(call)
        if why is None:
            chosen = b.name
        else:
            reasons[b.name] = why
    if chosen is None:  # cannot happen while "math" is registered; kept for honest errors
        raise ValueError(f"no attention backend can serve this call: {reasons}")
    return BackendChoice(chosen, reasons)


def explain_backend(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False,
    scale: float | None = None, dropout_p: float = 0.0, window=None,
    alibi_slopes: Tensor | None = None, backend: str = "auto", return_weights: bool = False,
) -> BackendChoice:
    """Tell which backend :func:`attention` would use for these arguments, and why not the others."""
    call = validate_call(q, k, v, mask=mask, causal=causal, scale=scale, dropout_p=dropout_p,
                         window=window, alibi_slopes=alibi_slopes, return_weights=return_weights)
    return _choose(call, backend)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    window: tuple[int | None, int | None] | None = None,
    alibi_slopes: Tensor | None = None,
    backend: str = "auto",
    return_weights: bool = False,
):
    """Scaled dot-product attention ``softmax(q kᵀ · scale + bias) v``.

    Args:
        q: (B, Hq, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys; Hq must be a multiple of Hkv (grouped-query / multi-query).
        v: (B, Hkv, Nk, Dv) values.
        mask: boolean, **True = may attend**, broadcastable to (B, Hq, Nq, Nk); or a floating
            additive bias of such a shape (-inf forbids). Combines with ``causal``.
        causal: **bottom-right aligned**: query i may attend key j when j <= i + (Nk - Nq), so a
            decoding step against a key/value cache needs no special case.
        scale: multiplier of the scores, default 1/sqrt(D).
        dropout_p: dropout on the attention weights, in [0, 1). Pass 0 in evaluation.
        window: (left, right) sliding window in key positions around each query (bottom-right
            aligned; None on a side = unlimited).
        alibi_slopes: (Hq,) ALiBi slopes; adds ``-slope * |pos_q - pos_k|`` to the scores.
        backend: "auto" or a registered backend name (see :data:`BACKENDS`).
        return_weights: also return the (B, Hq, Nq, Nk) weights (before dropout).

    A query row that may attend no key gets output 0 and weights 0, never NaN.

    Returns:
        (B, Hq, Nq, Dv) output, or ``(output, weights)`` when ``return_weights``.
    """
    call = validate_call(q, k, v, mask=mask, causal=causal, scale=scale, dropout_p=dropout_p,
                         window=window, alibi_slopes=alibi_slopes, return_weights=return_weights)
    chosen = _choose(call, backend).chosen
    out, weights = BACKENDS[chosen].fn(
        q, k, v, mask=mask, causal=causal, scale=scale, dropout_p=dropout_p, window=call.window,
        alibi_slopes=alibi_slopes, return_weights=return_weights,
    )
    return (out, weights) if return_weights else out
