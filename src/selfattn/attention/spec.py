"""Validation of an attention call (the structural masks and the ALiBi bias are in :mod:`.structure`).

Dimension legend (used in every attention module):
    b  batch            h  query heads         g  kv heads (h % g == 0)
    n  queries (Nq)     m  keys (Nk)           d  head dim of q/k    e  head dim of v

Mask convention, everywhere in selfattn: a boolean mask is **True = may attend**.
A floating mask is an additive bias (use -inf to forbid).
``causal=True`` is **bottom-right aligned**: query i may attend key j when j <= i + (Nk - Nq),
so a decoder step with a key/value cache (Nq=1, Nk=t) needs no special case.

Segment ids (document masks for packed sequences): ``segment_ids = (q_seg (B, Nq), k_seg (B, Nk))``,
integer tensors; query i of row b may attend key j only when ``q_seg[b, i] == k_seg[b, j]``, AND-ed with
every other mask (boolean, -inf bias, causal, window; ALiBi still adds its bias). For self-attention both
are the same tensor; for cross-attention q_seg holds the target's segments and k_seg the source's. A row
whose segment matches no allowed key is dead (output 0). Backends registered with ``native_segments`` take
the ids themselves (and may skip key blocks whose segments no query shares); every other backend gets the
equivalent (B, 1, Nq, Nk) mask built once by :func:`merge_segments`.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AttentionCall:
    """What a backend needs to know to decide whether it can serve a call (no tensors inside)."""

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    k_len: int
    head_dim: int
    v_dim: int
    dtype: torch.dtype
    device_type: str
    mask_kind: str  # "none" | "bool" | "float"
    key_padding_only: bool  # mask is boolean and shaped (b|1, 1, 1, m): expressible without an n x m tensor
    mask_requires_grad: bool
    causal: bool
    window: tuple[int | None, int | None] | None
    alibi: bool
    alibi_requires_grad: bool  # the slopes want a gradient: only backends that give it may serve
    dropout_p: float
    return_weights: bool
    requires_grad: bool
    segments: bool = False  # segment ids given (packed rows: q_seg[b, i] == k_seg[b, j] may attend)


def without_segments(call: AttentionCall) -> AttentionCall:
    """The call as a backend without native segment ids sees it: the ids merged into a general
    (B, 1, Nq, Nk) mask (boolean, or the floating mask with -inf where segments differ)."""
    if not call.segments:
        return call
    kind = "bool" if call.mask_kind == "none" else call.mask_kind
    return dataclasses.replace(call, segments=False, mask_kind=kind, key_padding_only=False)


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Ranks, dtypes, devices and shapes of q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have rank 4 (B, H, N, D), got rank {t.dim()} with shape {_shape(t)}"
            )
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    b, h, _, d = q.shape
    if d == 0 or v.shape[3] == 0:
        raise ValueError(f"head dims must be >= 1 (scale 1/sqrt(D) needs D > 0), got q {_shape(q)}, v {_shape(v)}")
    if k.shape[0] != b or v.shape[0] != b:
        raise ValueError(
            f"batch sizes differ: q {_shape(q)}, k {_shape(k)}, v {_shape(v)} (expected the same B)"
        )
    if k.shape[3] != d:
        raise ValueError(f"head dim of k must equal q's ({d}), got k {_shape(k)}")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(
            f"k and v must agree on (heads, keys): k {_shape(k)} vs v {_shape(v)}"
        )
    g = k.shape[1]
    if g == 0 or h % g != 0:
        raise ValueError(
            f"query heads must be a multiple of key/value heads (grouped-query attention), "
            f"got Hq={h}, Hkv={g}"
        )


def broadcasts_to(mask: Tensor, target: tuple[int, int, int, int]) -> bool:
    """Whether a mask broadcasts to exactly the 4-d ``target``: at most 4 dims, each trailing dim 1 or equal
    (torch.broadcast_shapes costs ~2% of a decoding step, measured under cProfile, for this comparison; ``==``
    rather than ``in (1, t)``, which dynamo mis-evaluates on symbolic sizes)."""
    return mask.dim() <= 4 and all(s == 1 or s == t for s, t in zip(reversed(mask.shape), reversed(target)))


def _check_mask(mask: Tensor, q: Tensor, target: tuple[int, int, int, int]) -> tuple[str, bool, bool]:
    """(mask_kind, key_padding_only, mask_requires_grad) of a mask that must broadcast to ``target``."""
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.device != q.device:
        raise ValueError(f"mask must be on q's device {q.device}, got {mask.device}")
    if mask.dtype == torch.bool:
        kind, grad = "bool", False
    elif mask.dtype.is_floating_point:
        kind, grad = "float", mask.requires_grad
    else:
        raise ValueError(
            f"mask must be boolean (True = may attend) or a floating additive bias, got dtype {mask.dtype}"
        )
    if not broadcasts_to(mask, target):
        raise ValueError(
            f"mask of shape {_shape(mask)} does not broadcast to (B, Hq, Nq, Nk) = {target}"
        )
    return kind, is_key_padding(mask), grad


def is_key_padding(mask: Tensor | None) -> bool:
    """A boolean mask shaped (B|1, 1, 1, Nk|1): per-key padding (kernels take it as a row of bytes), not a general
    (n x m) mask."""
    if mask is None or mask.dtype != torch.bool:
        return False
    full = (1,) * (4 - mask.dim()) + tuple(mask.shape)
    return full[1] == 1 and full[2] == 1


def _check_window(window: object) -> tuple[int | None, int | None] | None:
    if window is None:
        return None
    if not (isinstance(window, (tuple, list)) and len(window) == 2):
        raise ValueError(f"window must be a pair (left, right) of ints or None, got {window!r}")
    for side in window:
        if side is not None and (isinstance(side, bool) or not (isinstance(side, numbers.Integral) and int(side) >= 0)):
            raise ValueError(f"window sizes must be non-negative ints or None, got {window!r}")
    left, right = window
    return (None if left is None else int(left)), (None if right is None else int(right))


def _is_real(x: object) -> bool:
    """A plain real number (Python or NumPy scalar), not a bool (``True`` is no scale)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)  # NumPy's bool_ is no numbers.Real


def _check_alibi(slopes: object, q: Tensor, h: int) -> None:
    """ALiBi slopes: a finite floating (Hq,) tensor on q's device."""
    if not isinstance(slopes, Tensor):
        raise ValueError(f"alibi_slopes must be a tensor of shape (Hq,) = ({h},), got {type(slopes).__name__}")
    if slopes.shape != (h,):
        raise ValueError(f"alibi_slopes must be a tensor of shape (Hq,) = ({h},), got {_shape(slopes)}")
    if not slopes.dtype.is_floating_point:
        raise ValueError(f"alibi_slopes must be a floating tensor, got dtype {slopes.dtype}")
    if slopes.device != q.device:
        raise ValueError(f"alibi_slopes must be on q's device {q.device}, got {slopes.device}")
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(slopes).all()):  # a value check: eager only
        raise ValueError(f"alibi_slopes must be finite, got {slopes.detach().tolist()}")


def _check_segments(segment_ids: object, q: Tensor, k: Tensor) -> None:
    """A pair (q_seg (B, Nq), k_seg (B, Nk)) of integer tensors on q's device."""
    if not (isinstance(segment_ids, (tuple, list)) and len(segment_ids) == 2):
        raise ValueError(f"segment_ids must be a pair (q_seg (B, Nq), k_seg (B, Nk)) or None, "
                         f"got {type(segment_ids).__name__}")
    b, n, m = q.shape[0], q.shape[2], k.shape[2]
    for name, t, want in (("q_seg", segment_ids[0], (b, n)), ("k_seg", segment_ids[1], (b, m))):
        if not isinstance(t, Tensor):
            raise ValueError(f"segment_ids {name} must be a tensor of shape {want}, got {type(t).__name__}")
        if tuple(t.shape) != want:
            raise ValueError(f"segment_ids {name} must have shape {want}, got {_shape(t)}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"segment_ids {name} must be an integer tensor, got dtype {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"segment_ids {name} must be on q's device {q.device}, got {t.device}")


def segment_mask(segment_ids: tuple[Tensor, Tensor]) -> Tensor:
    """(B, 1, Nq, Nk) boolean, True = may attend: ``q_seg[b, i] == k_seg[b, j]``."""
    q_seg, k_seg = segment_ids
    return q_seg[:, None, :, None] == k_seg[:, None, None, :]  # (b, 1, n, m)


def merge_segments(mask: Tensor | None, segment_ids: tuple[Tensor, Tensor] | None) -> Tensor | None:
    """``mask`` with the segment rule folded in, for backends that do not take segment ids: a boolean
    mask AND-ed with :func:`segment_mask`, a floating one set to -inf where segments differ."""
    if segment_ids is None:
        return mask
    same = segment_mask(segment_ids)  # (b, 1, n, m)
    if mask is None:
        return same
    if mask.dtype == torch.bool:
        return mask & same
    return mask.masked_fill(~same, float("-inf"))  # broadcasts to (b, h|1, n, m)


def validate_call(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None,
    causal: bool,
    scale: float | None,
    dropout_p: float,
    window: tuple[int | None, int | None] | None,
    alibi_slopes: Tensor | None,
    return_weights: bool,
    segment_ids: tuple[Tensor, Tensor] | None = None,
) -> AttentionCall:
    """Check the arguments of :func:`selfattn.attention`; raise ``ValueError`` naming expected vs given.

    A call whose :func:`_signature` was validated before returns that result at once: every layer and decoding
    step repeats a few signatures, and the checks cost more than the attention of a decoding step's one query."""
    key = _signature(q, k, v, mask, causal, scale, dropout_p, window, alibi_slopes, return_weights, segment_ids)
    call = _VALIDATED.get(key) if key is not None else None
    if call is None:
        call = _validate(q, k, v, mask=mask, causal=causal, scale=scale, dropout_p=dropout_p, window=window,
                         alibi_slopes=alibi_slopes, return_weights=return_weights, segment_ids=segment_ids)
        if key is not None:
            if len(_VALIDATED) >= _VALIDATED_MAX:
                _VALIDATED.clear()
            _VALIDATED[key] = call
    return call


_VALIDATED: dict[tuple[object, ...], AttentionCall] = {}  # signature -> the call it validated to
_VALIDATED_MAX = 4096  # signatures kept (decoding adds one per step length); then start afresh


def _signature(q: object, k: object, v: object, mask: object, causal: object, scale: object, dropout_p: object,
               window: object, alibi_slopes: object, return_weights: object, segment_ids: object,
               ) -> tuple[object, ...] | None:
    """Everything :func:`_validate` reads, as a key: the tensors' shapes, dtypes, devices and gradient flags, the
    grad mode, and the flags with their exact types (``True == 1``, but ``causal=1`` is an error). None — validate
    every time — for calls with ALiBi slopes (their values are checked) or segment ids, for flags of unusual types,
    and while tracing (no dict lookups on symbolic sizes)."""
    if alibi_slopes is not None or segment_ids is not None or torch.compiler.is_compiling():
        return None
    if type(causal) is not bool or type(dropout_p) not in (float, int) or type(scale) not in (float, int, type(None)):
        return None
    if window is not None and not (type(window) is tuple and all(s is None or type(s) is int for s in window)):
        return None
    tensors = [t for t in (q, k, v, mask) if isinstance(t, Tensor)]
    if len(tensors) != (3 if mask is None else 4):
        return None
    meta = tuple((t.shape, t.dtype, t.device, t.requires_grad) for t in tensors)
    return meta, causal, scale, dropout_p, window, bool(return_weights), torch.is_grad_enabled()


def _validate(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None, causal: bool, scale: float | None, dropout_p: float,
    window: tuple[int | None, int | None] | None, alibi_slopes: Tensor | None, return_weights: bool,
    segment_ids: tuple[Tensor, Tensor] | None,
) -> AttentionCall:
    """The checks of :func:`validate_call`, and the call they describe."""
    _check_qkv(q, k, v)
    b, h, n, d = q.shape
    g, m = k.shape[1], k.shape[2]
    if scale is not None and not (_is_real(scale) and 0 < scale < float("inf")):
        raise ValueError(f"scale must be a positive finite number or None, got {scale!r}")
    if not (_is_real(dropout_p) and 0.0 <= dropout_p < 1.0):
        raise ValueError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool, got {causal!r}")
    mask_kind, key_padding_only, mask_grad = "none", False, False
    if mask is not None:
        mask_kind, key_padding_only, mask_grad = _check_mask(mask, q, (b, h, n, m))
    window = _check_window(window)
    if alibi_slopes is not None:
        _check_alibi(alibi_slopes, q, h)
    if segment_ids is not None:
        _check_segments(segment_ids, q, k)

    return AttentionCall(
        batch=b, q_heads=h, kv_heads=g, q_len=n, k_len=m, head_dim=d, v_dim=v.shape[3],
        dtype=q.dtype, device_type=q.device.type, mask_kind=mask_kind,
        key_padding_only=key_padding_only, mask_requires_grad=mask_grad,
        # bottom-right aligned, one query may attend every key: a decoding step is not causal at all
        causal=bool(causal) and not (n == 1 and window is None),
        window=window, alibi=alibi_slopes is not None,
        alibi_requires_grad=alibi_slopes is not None and torch.is_grad_enabled() and alibi_slopes.requires_grad,
        dropout_p=float(dropout_p),
        return_weights=bool(return_weights),
        requires_grad=torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)),
        segments=segment_ids is not None,
    )


def fused_kernel_declines(call: AttentionCall, name: str) -> str | None:
    """Why a kernel that never forms the n x m weights (``name``: "flash", "cpu_bf16", "cpu_f32", "triton")
    cannot serve a call: returned weights, dropout, or a gradient for the ALiBi slopes or a floating mask."""
    if call.return_weights:
        return (f"{name} never forms the attention weights, so it cannot return them "
                "(use backend 'math' to get them)")
    if call.dropout_p > 0:
        return f"dropout on the attention weights is not implemented in the {name} kernel"
    if call.alibi_requires_grad:
        return f"the ALiBi slopes require a gradient, which the {name} kernel does not compute"
    if call.mask_requires_grad:
        return f"the additive mask requires a gradient, which the {name} kernel does not compute"
    return None


def key_padding_rows(name: str, mask: Tensor | None, m: int, dropout_p: float,
                     return_weights: bool) -> Tensor | None:
    """For kernels that take only key padding: check the call and turn ``mask`` (boolean, True = may
    attend, broadcastable as (B|1, 1, 1, Nk)) into (b|1, m) rows, True = may attend; None = no mask."""
    if dropout_p > 0 or return_weights or (mask is not None and mask.dtype != torch.bool):
        raise ValueError(f"{name} supports no dropout, no returned weights and only boolean key-padding "
                         f"masks; got dropout_p={dropout_p}, return_weights={return_weights}")
    if mask is None:
        return None
    full = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (b|1, 1, 1, m|1)
    if full.shape[1] != 1 or full.shape[2] != 1:
        raise ValueError(f"{name} takes only key-padding masks (B|1, 1, 1, Nk), got mask of shape "
                         f"{tuple(mask.shape)}")
    return full[:, 0, 0, :].expand(full.shape[0], m)  # (b|1, m)
