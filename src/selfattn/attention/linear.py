"""Linear attention (Katharopoulos et al., 2020, "Transformers are RNNs"): O(N) time and memory.

Softmax similarity ``exp(q·k)`` is replaced by ``phi(q)·phi(k)`` with the feature map
``phi(x) = elu(x) + 1`` (positive), so ``out_i = phi(q_i) S / phi(q_i) z`` with
``S = sum_j phi(k_j) v_jᵀ`` (d x e) and ``z = sum_j phi(k_j)`` (d). The causal form keeps running
(prefix) sums of S and z, computed chunk by chunk: inside a chunk of ``chunk`` positions the
masked chunk x chunk products are formed explicitly, across chunks the state is carried, so
memory is O(N·d·e / chunk + chunk²) and never N x N.

This is NOT exact softmax attention (it is a different model, with a lower accuracy on tasks
that need sharp attention); it is not a registry backend and "auto" never picks it. Select it per
layer with ``MultiHeadAttention(kernel="linear")`` or ``ModelConfig(attention_type="linear")``.

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim,
c chunk length. Mask: boolean True = may attend; only key-padding masks (b|1, 1, 1, m) apply.
``causal`` is bottom-right aligned (query i may attend key j when j <= i + m - n). A query with no
visible key gets output 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .math_backend import repeat_kv


def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al., 2020, eq. 7)."""
    return F.elu(x) + 1.0


def _divide(num: Tensor, den: Tensor) -> Tensor:
    """num / den with rows whose denominator is 0 (no visible key) set to 0."""
    live = den > 0
    return torch.where(live, num / torch.where(live, den, torch.ones_like(den)), torch.zeros_like(num))


def linear_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False,
    chunk: int = 128,
) -> Tensor:
    """Linear attention of q (b, h, n, d) over k (b, g, m, d), v (b, g, m, e) -> (b, h, n, e).

    ``chunk``: positions per chunk of the causal prefix sums (a reason: 128 keeps the chunk x chunk
    products small while the per-chunk Python overhead stays negligible).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, N, D), got shape {tuple(t.shape)}")
    b, h, n, d = q.shape
    g, m = k.shape[1], k.shape[2]
    if h % g or k.shape[:3] != v.shape[:3] or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if causal and n > m:
        raise ValueError(f"causal linear attention needs Nq <= Nk (bottom-right aligned), got {n} > {m}")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk}")
    phi_q = elu_feature_map(q)  # (b, h, n, d)
    phi_k = elu_feature_map(repeat_kv(k, h // g))  # (b, h, m, d)
    v = repeat_kv(v, h // g)  # (b, h, m, e)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"linear attention takes a boolean key-padding mask, got dtype {mask.dtype}")
        full = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (b|1, 1, 1, m|1)
        if full.shape[1] != 1 or full.shape[2] != 1:
            raise ValueError("linear attention takes only key-padding masks shaped (B|1, 1, 1, Nk), "
                             f"got {tuple(mask.shape)}")
        keep = full[:, 0, 0, :].to(phi_k.dtype).view(full.shape[0], 1, -1, 1)  # (b|1, 1, m|1, 1)
        phi_k = phi_k * keep  # a padded key contributes nothing to S and z
    if not causal:
        state = phi_k.transpose(-2, -1) @ v  # (b, h, d, e)
        z = phi_k.sum(dim=2).unsqueeze(-1)  # (b, h, d, 1)
        return _divide(phi_q @ state, phi_q @ z)

    off = m - n  # keys before the first query's position are all visible to every query
    state = phi_k[:, :, :off].transpose(-2, -1) @ v[:, :, :off]  # (b, h, d, e)
    z = phi_k[:, :, :off].sum(dim=2).unsqueeze(-1)  # (b, h, d, 1)
    outs = []
    for t0 in range(0, n, chunk):
        t1 = min(t0 + chunk, n)
        qc = phi_q[:, :, t0:t1]  # (b, h, c, d)
        kc, vc = phi_k[:, :, off + t0:off + t1], v[:, :, off + t0:off + t1]  # (b, h, c, d|e)
        a = torch.tril(qc @ kc.transpose(-2, -1))  # (b, h, c, c): query i sees chunk keys <= i
        num = qc @ state + a @ vc  # (b, h, c, e)
        den = qc @ z + a.sum(dim=-1, keepdim=True)  # (b, h, c, 1)
        outs.append(_divide(num, den))
        state = state + kc.transpose(-2, -1) @ vc
        z = z + kc.sum(dim=2).unsqueeze(-1)
    return torch.cat(outs, dim=2)  # (b, h, n, e)


def linear_attention_reference(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False) -> Tensor:
    """The quadratic form ``(phi(q) phi(k)ᵀ ⊙ mask) v / rowsum`` (for tests and explanation)."""
    g = k.shape[1]
    phi_q, phi_k = elu_feature_map(q), elu_feature_map(repeat_kv(k, q.shape[1] // g))
    a = phi_q @ phi_k.transpose(-2, -1)  # (b, h, n, m)
    if causal:
        n, m = q.shape[2], k.shape[2]
        a = torch.tril(a, diagonal=m - n)
    return _divide(a @ repeat_kv(v, q.shape[1] // g), a.sum(dim=-1, keepdim=True))


__all__ = ["elu_feature_map", "linear_attention", "linear_attention_reference"]
