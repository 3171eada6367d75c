"""Value checks the backends share: empty calls and non-finite inputs.

:mod:`~selfattn.attention.spec` describes a call by its signature (the ``AttentionCall``: shapes, dtypes,
flags — never tensor values); these helpers look at the tensors. A backend returns :func:`empty_result` for
an empty call and hands calls with NaN/inf inputs (or logits that could overflow) to the reference ``"math"``,
where the non-finite rule lives; those checks read values on the host, so they run in eager calls only (see
:func:`tracing`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def is_empty(q: Tensor, k: Tensor) -> bool:
    """No query rows or no keys (B, Hq, Nq or Nk is 0): the result is all zeros (dead rows)."""
    return q.shape[0] * q.shape[1] * q.shape[2] == 0 or k.shape[2] == 0


def empty_result(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The (B, Hq, Nq, Dv) result of an empty call: zeros, with zero gradients flowing to q, k, v
    (sums of empty slices, so a NaN in q never reaches them)."""
    b, h, n, _ = q.shape
    out = v.new_zeros(b, h, n, v.shape[3])  # (b, h, n, e)
    return out + (q.reshape(-1)[:0].sum() + k.reshape(-1)[:0].sum() + v.reshape(-1)[:0].sum())


def tracing() -> bool:
    """True inside torch.compile / torch.export. The non-finite checks below read values on the host, which a
    graph cannot do without a break: traced graphs assume finite inputs and keep the backend's fast path
    (eager calls — the reference behaviour — check)."""
    return torch.compiler.is_compiling()


def all_finite(*tensors: Tensor | None) -> bool:
    """True when no tensor holds a NaN or an infinity. One sum per tensor (a NaN or inf makes it
    non-finite); only a sum that overflowed on finite values is checked again element by element.
    Always True while tracing (see :func:`tracing`)."""
    if tracing():
        return True
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        if not bool(torch.isfinite(t.detach().sum())) and not bool(torch.isfinite(t).all()):
            return False
    return True


def bias_is_finite(mask: Tensor | None) -> bool:
    """A floating mask may hold -inf (= may not attend) but no NaN and no +inf; a boolean one always is."""
    if mask is None or mask.dtype == torch.bool or mask.numel() == 0 or tracing():
        return True
    return bool(mask.detach().max() < float("inf"))  # max is NaN when any element is NaN


def logits_may_overflow(q: Tensor, k: Tensor) -> bool:
    """True when q·k could leave float32's range (D * max|q| * max|k| >= 2^127) or q, k hold a NaN/inf:
    one min/max pass per operand. SDPA maps an overflowed (+inf) row to 0 in bf16 instead of NaN."""
    if q.numel() == 0 or k.numel() == 0 or tracing():
        return False
    (q_lo, q_hi), (k_lo, k_hi) = torch.aminmax(q.detach()), torch.aminmax(k.detach())
    bound = torch.maximum(-q_lo, q_hi).float() * torch.maximum(-k_lo, k_hi).float() * q.shape[-1]
    return not bool(bound < 2.0**127)  # NaN (a NaN in q or k) is not < 2^127
