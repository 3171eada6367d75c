"""Positional encodings: how a permutation-invariant attention layer learns about order.

Legend: b batch, h heads, n positions (queries), m keys, d model or head dim.

* ``sinusoidal`` — Vaswani et al., 2017, §3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)),
  PE(pos, 2i+1) = cos(pos / 10000^(2i/d)); added to the embeddings.
* ``learned`` — a trained table of absolute positions (BERT, GPT-2); added to the embeddings.
* ``rope`` — rotary embeddings, Su et al., 2021 (RoFormer): rotate q and k by position-dependent
  angles so that q·k depends on the relative offset only.
* ``alibi`` — Press et al., 2022: a per-head linear penalty ``-slope_h * |i - j|`` on the scores.
* ``t5`` — Raffel et al., 2020: a learned scalar bias per head and bucketed relative distance.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

POSITIONAL_KINDS = ("sinusoidal", "learned", "rope", "alibi", "t5", "none")


def sinusoidal_table(num_positions: int, d: int) -> Tensor:
    """(num_positions, d) float32 table of the paper's sinusoids (d may be odd)."""
    pos = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)  # (n, 1)
    two_i = torch.arange(0, d, 2, dtype=torch.float64)  # (ceil(d/2),)
    angle = pos / torch.pow(10000.0, two_i / d)  # (n, ceil(d/2))
    pe = torch.zeros(num_positions, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d // 2])
    return pe.to(torch.float32)


class SinusoidalPositions(nn.Module):
    """Adds nothing trainable: returns PE rows for positions ``offset ... offset+n-1``."""

    def __init__(self, d_model: int, max_len: int = 4096):
        super().__init__()
        self.d_model = d_model
        self.table: Tensor
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)

    def forward(self, n: int, offset: int = 0) -> Tensor:
        if offset + n > self.table.shape[0]:  # grow on demand instead of failing on long inputs
            self.table = sinusoidal_table(2 * (offset + n), self.d_model).to(self.table.device)
        return self.table[offset : offset + n]  # (n, d)

    def at(self, positions: Tensor) -> Tensor:
        """PE rows for integer ``positions`` of any shape (packed rows: positions within each segment)."""
        top = int(positions.max()) + 1 if positions.numel() else 0
        if top > self.table.shape[0]:
            self.table = sinusoidal_table(2 * top, self.d_model).to(self.table.device)
        return self.table[positions]  # (*positions.shape, d)


class LearnedPositions(nn.Module):
    """A trained (max_len, d) table (BERT, GPT-2)."""

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(torch.randn(max_len, d_model) * 0.02)

    def forward(self, n: int, offset: int = 0) -> Tensor:
        if offset + n > self.max_len:
            raise ValueError(
                f"learned positions cover {self.max_len} positions, got a sequence reaching "
                f"position {offset + n}; raise max_len or use sinusoidal/rope/alibi"
            )
        return self.weight[offset : offset + n]  # (n, d)

    def at(self, positions: Tensor) -> Tensor:
        """Rows for integer ``positions`` of any shape (packed rows: positions within each segment)."""
        top = int(positions.max()) + 1 if positions.numel() else 0
        if top > self.max_len:
            raise ValueError(f"learned positions cover {self.max_len} positions, got position {top - 1}")
        return self.weight[positions]  # (*positions.shape, d)


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al., 2021), "rotate-half" layout as in GPT-NeoX / Llama.

    For a head vector x of dim d, pairs (x[i], x[i + d/2]) are rotated by angle
    ``pos * base^(-2i/d)``. Applied to q and k (after projection, before attention) in float32.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dim, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.inv_freq: Tensor
        self.register_buffer("inv_freq", inv_freq.to(torch.float32), persistent=False)

    def angles(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        freqs = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq  # (n, d/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (n, d)
        return emb.cos(), emb.sin()

    def forward(self, x: Tensor, offset: int = 0, positions: Tensor | None = None) -> Tensor:
        """Rotate x of shape (b, h, n, d) for positions offset ... offset+n-1, or for ``positions`` (b, n)."""
        n = x.shape[-2]
        if positions is None:
            cos, sin = self.angles(torch.arange(offset, offset + n, device=x.device))  # (n, d) each
        else:
            cos, sin = (a.unsqueeze(1) for a in self.angles(positions))  # (b, 1, n, d) each
        xf = x.float()
        x1, x2 = xf.chunk(2, dim=-1)  # (b, h, n, d/2) each
        rotated = torch.cat([-x2, x1], dim=-1)  # (b, h, n, d)
        return (xf * cos + rotated * sin).to(x.dtype)


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi head slopes (Press et al., 2022): geometric 2^(-8/n), interleaved for non-powers of 2."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        slopes = power_of_2(num_heads)
    else:
        closest = 2 ** math.floor(math.log2(num_heads))
        slopes = power_of_2(closest) + power_of_2(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def t5_bucket(relative_position: Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bucket of ``key_pos - query_pos``: exact for small distances, log-spaced up to max_distance."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class T5RelativeBias(nn.Module):
    """Learned per-head bias by bucketed relative distance; computed once per stack, shared by layers."""

    def __init__(self, num_heads: int, *, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, n: int, m: int, device=None) -> Tensor:
        """(1, h, n, m) additive bias; queries are bottom-right aligned against the m keys."""
        q_pos = torch.arange(n, device=device).unsqueeze(1) + (m - n)  # (n, 1)
        k_pos = torch.arange(m, device=device).unsqueeze(0)  # (1, m)
        bucket = t5_bucket(k_pos - q_pos, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(bucket).permute(2, 0, 1).unsqueeze(0)  # (1, h, n, m)
