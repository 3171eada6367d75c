"""The attention entry point and its registry of backends.

Every backend is a plain function with one signature::

    fn(q, k, v, *, mask, causal, scale, dropout_p, window, alibi_slopes, return_weights)
        -> (out (b, h, n, e), weights (b, h, n, m) or None)

paired with ``supports(call) -> None | reason`` that says why it cannot serve a call. ``supports`` and
``auto_declines`` must be pure functions of the :class:`AttentionCall` (no compiler runs, no files
written): the registry decides **once per call signature** (the ``AttentionCall``: dtype, device, shapes,
mask kind, flags — never tensor values) and reuses that decision on every later call, in every layer
and decoding step. ``"auto"`` takes the backend of highest priority that supports the call and does not
decline it; :func:`explain_backend` re-runs that walk uncached and builds every reason string.

A backend whose function finds at run time that it cannot serve the call after all (the C kernel's
first build failed) raises :class:`BackendUnavailable`; an ``"auto"`` call then forgets its decisions
and decides again (the backend's ``supports`` now says why not).

Mask convention: boolean True = may attend; floating = additive bias. ``causal`` is
bottom-right aligned: query i may attend key j when j <= i + (Nk - Nq).

Segment ids ``(q_seg (B, Nq), k_seg (B, Nk))``: query i of row b may attend key j only when
``q_seg[b, i] == k_seg[b, j]``, AND-ed with every other mask. A backend registered with
``native_segments=True`` receives them as ``segment_ids=`` (an extra keyword) and its ``supports`` sees
``call.segments``; every other backend receives the equivalent (B, 1, Nq, Nk) mask folded into ``mask``
(:func:`~selfattn.attention.spec.merge_segments`) and judges the call as one with that general mask.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
from torch import Tensor

from .spec import AttentionCall, merge_segments, validate_call, without_segments


class AttentionFn(Protocol):
    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None, causal: bool,
        scale: float | None, dropout_p: float, window: tuple[int | None, int | None] | None,
        alibi_slopes: Tensor | None,
        return_weights: bool,
    ) -> tuple[Tensor, Tensor | None]: ...


class BackendUnavailable(RuntimeError):
    """Raised by a backend function, before computing anything, when it cannot run after all."""


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
    native_segments: bool = False  # fn takes segment_ids= itself; else it gets them merged into the mask

    def view(self, call: AttentionCall) -> AttentionCall:
        """The call as this backend receives it (segment ids merged into the mask unless native)."""
        return call if self.native_segments else without_segments(call)

    def accepts(self, call: AttentionCall) -> str | None:
        """Why this backend cannot serve ``call`` (its ``supports`` on :meth:`view`), or None."""
        return self.supports(self.view(call))

    def run(self, q: Tensor, k: Tensor, v: Tensor, segment_ids: tuple[Tensor, Tensor] | None,
            **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        """Call ``fn``, handing it the segment ids natively or merged into ``mask``."""
        if segment_ids is None:
            return self.fn(q, k, v, **kwargs)
        if self.native_segments:
            return cast(tuple[Tensor, Tensor | None], cast(Any, self.fn)(q, k, v, segment_ids=segment_ids, **kwargs))
        return self.fn(q, k, v, **{**kwargs, "mask": merge_segments(kwargs["mask"], segment_ids)})


@dataclass
class BackendChoice:
    """Which backend a call uses, and why each other backend was not used."""

    chosen: str
    reasons: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"backend: {self.chosen}"]
        lines += [f"  not {name}: {why}" for name, why in self.reasons.items()]
        return "\n".join(lines)


def _declines(b: Backend, call: AttentionCall) -> str | None:
    call = b.view(call)
    why = b.supports(call)
    if why is None and b.auto_declines is not None:
        why = b.auto_declines(call)
    return why


class Registry(Mapping[str, Backend]):
    """Backends by name (read like a dict) and the decisions made for each call signature."""

    MAX_DECISIONS = 4096  # distinct signatures kept; decoding adds one per step length, so bounded

    def __init__(self) -> None:
        self._backends: dict[str, Backend] = {}
        self._by_priority: tuple[Backend, ...] = ()
        self._decisions: dict[tuple[AttentionCall, str], str | BaseException] = {}
        self.hits = self.misses = 0

    def __getitem__(self, name: str) -> Backend:
        return self._backends[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._backends)

    def __len__(self) -> int:
        return len(self._backends)

    def register(self, backend: Backend) -> None:
        """Add (or replace) a backend; forgets every decision."""
        self._backends[backend.name] = backend
        self._changed()

    def unregister(self, name: str) -> Backend:
        backend = self._backends.pop(name)
        self._changed()
        return backend

    def _changed(self) -> None:
        self._by_priority = tuple(sorted(self._backends.values(), key=lambda b: -b.priority))
        self.forget_decisions()

    def forget_decisions(self) -> None:
        """Drop the cached decisions (after something a ``supports`` reads has changed)."""
        self._decisions.clear()

    @contextlib.contextmanager
    def temporarily(self, *, add: tuple[Backend, ...] = (), remove: tuple[str, ...] = ()) -> Iterator[Registry]:
        """Within the block, ``add`` these backends and ``remove`` these names; then restore."""
        saved = dict(self._backends)
        try:
            for name in remove:
                self._backends.pop(name)
            for backend in add:
                self._backends[backend.name] = backend
            self._changed()
            yield self
        finally:
            self._backends = saved
            self._changed()

    def decide(self, call: AttentionCall, backend: str) -> str:
        """The backend name serving ``call`` (cached per signature); ValueError if none can."""
        key = (call, backend)
        got = self._decisions.get(key)
        if got is None:
            self.misses += 1
            try:
                got = self._decide(call, backend)
            except ValueError as exc:
                got = exc
            if len(self._decisions) >= self.MAX_DECISIONS:
                del self._decisions[next(iter(self._decisions))]  # the oldest
            self._decisions[key] = got
        else:
            self.hits += 1
        if isinstance(got, BaseException):
            raise ValueError(str(got))
        return got

    def _decide(self, call: AttentionCall, backend: str) -> str:
        if backend != "auto":
            return self.explain(call, backend).chosen  # rare: the error needs its reason anyway
        for b in self._by_priority:
            if _declines(b, call) is None:
                return b.name
        return self.explain(call, backend).chosen  # raises with every reason

    def explain(self, call: AttentionCall, backend: str) -> BackendChoice:
        """The decision for ``call`` made afresh (uncached), with every other backend's reason."""
        if backend != "auto" and backend not in self._backends:
            known = ", ".join(["auto", *sorted(self._backends)])
            raise ValueError(f"unknown attention backend {backend!r}; expected one of: {known}")
        if backend != "auto":
            why = self._backends[backend].accepts(call)
            if why is not None:
                raise ValueError(f"attention backend {backend!r} cannot serve this call: {why}")
            return BackendChoice(backend, {n: "not requested (backend named explicitly)"
                                           for n in self._backends if n != backend})
        reasons: dict[str, str] = {}
        chosen = None
        for b in self._by_priority:
            if chosen is not None:
                reasons[b.name] = f"lower priority than {chosen!r}"
                continue
            why = _declines(b, call)
            if why is None:
                chosen = b.name
            else:
                reasons[b.name] = why
        if chosen is None:  # cannot happen while "math" is registered; kept for honest errors
            raise ValueError(f"no attention backend can serve this call: {reasons}")
        return BackendChoice(chosen, reasons)


BACKENDS = Registry()


def register_backend(
    name: str,
    fn: AttentionFn,
    supports: Callable[[AttentionCall], str | None],
    *,
    priority: int,
    description: str = "",
    auto_declines: Callable[[AttentionCall], str | None] | None = None,
    native_segments: bool = False,
) -> None:
    """Add (or replace) a backend in :data:`BACKENDS`."""
    BACKENDS.register(Backend(name, fn, supports, priority, description, auto_declines, native_segments))


def explain_backend(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False,
    scale: float | None = None, dropout_p: float = 0.0, window: tuple[int | None, int | None] | None = None,
    alibi_slopes: Tensor | None = None, backend: str = "auto", return_weights: bool = False,
    segment_ids: tuple[Tensor, Tensor] | None = None,
) -> BackendChoice:
    """Tell which backend :func:`attention` would use for these arguments, and why not the others."""
    call = validate_call(q, k, v, mask=mask, causal=causal, scale=scale, dropout_p=dropout_p,
                         window=window, alibi_slopes=alibi_slopes, return_weights=return_weights,
                         segment_ids=segment_ids)
    return BACKENDS.explain(call, backend)


_CALL_FIELDS = tuple(f.name for f in dataclasses.fields(AttentionCall))


@torch.compiler.assume_constant_result  # type: ignore[untyped-decorator]
def _decided_constant(backend: str, *fields: Any) -> str:
    return BACKENDS.decide(AttentionCall(*fields), backend)


def _decide_while_tracing(call: AttentionCall, backend: str) -> str:
    """Under torch.compile/export: a named backend is used as named (eager calls have checked it), and
    "auto" is decided once at trace time and enters the graph as a constant (Dynamo neither traces the
    backends' ``supports`` nor breaks the graph for it). With dynamic (symbolic) sizes the size-dependent
    policy cannot run, so "auto" takes SDPA (``torch``), or ``math`` when the weights are asked for."""
    if backend != "auto":
        return backend
    fields = [getattr(call, f) for f in _CALL_FIELDS]
    if any(isinstance(x, torch.SymInt) for x in fields):
        return "math" if call.return_weights else "torch"
    return cast(str, _decided_constant(backend, *fields))


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
    segment_ids: tuple[Tensor, Tensor] | None = None,
) -> Any:  # Tensor, or (Tensor, Tensor | None) when return_weights
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
        segment_ids: ``(q_seg (B, Nq), k_seg (B, Nk))`` integer tensors (packed sequences): query i of
            row b may attend key j only when ``q_seg[b, i] == k_seg[b, j]``, AND-ed with ``mask``,
            ``causal`` and ``window``. Self-attention passes one tensor twice; cross-attention the
            target's and the source's segments.

    A query row that may attend no key gets output 0 and weights 0, never NaN.

    Returns:
        (B, Hq, Nq, Dv) output, or ``(output, weights)`` when ``return_weights``.
    """
    # the backends pick their own precision (float32 scores and statistics): autocast must not recast their matmuls
    device_type = q.device.type if isinstance(q, Tensor) else "cpu"  # a non-tensor q fails validation below
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return attention(q, k, v, mask=mask, causal=causal, scale=scale, dropout_p=dropout_p, window=window,
                             alibi_slopes=alibi_slopes, backend=backend, return_weights=return_weights,
                             segment_ids=segment_ids)
    call = validate_call(q, k, v, mask=mask, causal=causal, scale=scale, dropout_p=dropout_p,
                         window=window, alibi_slopes=alibi_slopes, return_weights=return_weights,
                         segment_ids=segment_ids)
    kwargs: dict[str, Any] = dict(mask=mask, causal=call.causal, scale=scale, dropout_p=dropout_p, window=call.window,
                  alibi_slopes=alibi_slopes, return_weights=return_weights)
    out, weights = _dispatch(call, backend, q, k, v, segment_ids, kwargs)
    return (out, weights) if return_weights else out


def _dispatch(call: AttentionCall, backend: str, q: Tensor, k: Tensor, v: Tensor,
              segment_ids: tuple[Tensor, Tensor] | None, kwargs: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
    """Run the backend that serves ``call``: the cached decision, or under torch.compile the trace-time one.
    An ``"auto"`` call whose backend raises :class:`BackendUnavailable` forgets its decisions and decides again."""
    if torch.compiler.is_compiling():  # decided at trace time, outside the graph, as a constant
        return BACKENDS[_decide_while_tracing(call, backend)].run(q, k, v, segment_ids, **kwargs)
    try:
        return BACKENDS[BACKENDS.decide(call, backend)].run(q, k, v, segment_ids, **kwargs)
    except BackendUnavailable:
        if backend != "auto":
            raise
        BACKENDS.forget_decisions()  # the backend's supports() now says why not
        return BACKENDS[BACKENDS.decide(call, backend)].run(q, k, v, segment_ids, **kwargs)
