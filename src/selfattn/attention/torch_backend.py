"""Backend "torch": PyTorch's fused ``scaled_dot_product_attention`` (SDPA), made safe.

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
Mask: boolean True = may attend (SDPA's own boolean convention too; ``nn.MultiheadAttention``'s
is the opposite), or a floating additive bias. ``causal`` is bottom-right aligned (query i may
attend key j when j <= i + m - n); SDPA's ``is_causal`` is top-left aligned, so it is used only
when n == m and an explicit mask is built otherwise.

SDPA returns NaN for a query row that may attend no key. Here such rows are opened up before the
call (so the kernel sees a finite softmax and a finite backward) and their output is set to 0.
Additive biases (float masks, ALiBi) stay float32 for bfloat16/float16 inputs (SDPA accepts them).
Calls with a NaN/inf in q, k or v, or a NaN/+inf in a floating mask, are handed to backend "math",
which follows the non-finite rule of :mod:`selfattn.attention.math_backend` (SDPA would let a NaN in
a masked-out key reach every row), and so are calls whose logits may overflow float32 (D·max|q|·max|k|
>= 2^127; SDPA turns such +inf rows into 0 in bf16) or whose output is not finite; finite calls pay
one min/max pass over q and k and one sum over v and the output for those checks (v's and the output's are
skipped where a remembered bound, a KV cache's, proves them finite).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .guards import all_finite, bias_is_finite, empty_result, is_empty, known_max_abs, logits_may_overflow, tracing
from .math_backend import dead_rows, dead_rows_if_any, math_attention, score_bias_and_mask
from .spec import AttentionCall


def torch_attention(
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
    return_weights: bool = False,
) -> tuple[Tensor, None]:
    if is_empty(q, k):
        return empty_result(q, k, v), None
    kw: dict[str, Any] = dict(mask=mask, causal=causal, scale=scale, dropout_p=dropout_p, window=window,
                              alibi_slopes=alibi_slopes)
    if not logits_may_overflow(q, k) and all_finite(v) and bias_is_finite(mask):
        out, dead = _sdpa(q, k, v, **kw)
        if _surely_finite(v, mask, alibi_slopes) or all_finite(out):  # checked before dead rows are zeroed:
            # their opened-up softmax must be finite too
            return (out if dead is None else out.masked_fill(dead, 0.0)), None
        # finite inputs, non-finite output (a bias near float32's range): SDPA's backward would give 0
        # where the rule gives NaN, so the reference evaluates the call
    return math_attention(q, k, v, **kw)[0], None


def _surely_finite(v: Tensor, mask: Tensor | None, alibi_slopes: Tensor | None) -> bool:
    """Whether the output of a guarded call (finite q, k, v, logits below 2^127) is finite without looking:
    with no additive bias (float mask, ALiBi) the softmax is finite and every output is a convex combination
    of rows of v, so it stays finite when v's remembered bound (a KV cache's) is below half its dtype's max."""
    if tracing():  # a traced graph assumes finite inputs and checks nothing (guards.tracing)
        return True
    if alibi_slopes is not None or (mask is not None and mask.dtype != torch.bool):
        return False
    bound = known_max_abs(v)
    return bound is not None and bound < _half_max(v.dtype)


@functools.cache
def _half_max(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).max / 2  # torch.finfo costs ~2 µs a call


def _sdpa(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None, causal: bool, scale: float | None,
          dropout_p: float, window: tuple[int | None, int | None] | None,
          alibi_slopes: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """SDPA with our mask convention and bottom-right causal, on finite inputs. Returns the output
    (b, h, n, e) with dead rows opened up (attending every key) and those rows, (.., n, 1) or None."""
    n, m = q.shape[2], k.shape[2]
    scale = None if scale is None else float(scale)
    gqa = q.shape[1] != k.shape[1]
    if mask is None and window is None and alibi_slopes is None and (not causal or n == m):
        # Fast path: no explicit mask at all; every row attends at least one key.
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale, enable_gqa=gqa
        ), None

    bias, allowed = score_bias_and_mask(
        n, m, mask=mask, causal=causal, window=window, alibi_slopes=alibi_slopes, device=q.device,
        dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
    )
    if mask is None and alibi_slopes is None and allowed is not None and m >= n:
        # only causal/window: every query may attend its own key position i + m - n (inside [0, m),
        # and windows are >= 0 on both sides), so no row is dead: skip the n x m checks
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed.view(1, 1, n, m), dropout_p=dropout_p, scale=scale, enable_gqa=gqa
        ), None
    if bias is not None:
        attn_mask = bias  # float32 (float64 for float64 inputs), never rounded to q's dtype
        if allowed is not None:
            attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
    elif allowed is None:  # score_bias_and_mask returns a mask when it returns no bias here
        raise ValueError("attention needs a bias or a mask on this path")
    else:
        attn_mask = allowed
    # eager, every row attends some key: nothing to open up or zero (traced graphs always take the general path)
    dead = dead_rows(bias, allowed) if tracing() else dead_rows_if_any(bias, allowed)  # (.., n, 1) or None
    if dead is not None:  # dead rows attend every key (a finite softmax and backward); the caller zeroes their output
        attn_mask = attn_mask | dead if attn_mask.dtype == torch.bool else attn_mask.masked_fill(dead, 0.0)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=_as_4d(attn_mask), dropout_p=dropout_p, scale=scale, enable_gqa=gqa
    )  # (b, h, n, e)
    return out, None if dead is None else _as_4d(dead)


def _as_4d(t: Tensor) -> Tensor:
    """A mask broadcastable to (b, h, n, m) with its leading singleton axes spelled out, as SDPA wants."""
    return t[(None,) * (4 - t.dim())] if t.dim() < 4 else t


def torch_supports(call: AttentionCall) -> str | None:
    if call.return_weights:
        return "SDPA cannot return the attention weights"
    if call.mask_requires_grad:
        return "the additive mask needs a gradient, which fused SDPA kernels do not compute"
    return None
