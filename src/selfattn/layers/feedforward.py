"""Position-wise feed-forward network (the paper's §3.3), with ReLU, GELU or SwiGLU.

FFN(x) = W2 · dropout(act(W1 x + b1)) + b2. SwiGLU (Shazeer, 2020) uses a gate:
W2 · (silu(W1 x) * W3 x).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import Dropout

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swiglu")


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, *, activation: str = "relu", dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias)
        self.gate = nn.Linear(d_model, d_ff, bias=bias) if activation == "swiglu" else None
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = Dropout(dropout)  # a cheap mask, not bernoulli_ (layers/dropout.py)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear1(x)  # (b, n, d_ff)
        if self.activation == "relu":
            h = F.relu(h)
        elif self.activation == "gelu":
            h = F.gelu(h)
        elif self.activation == "gelu_tanh":
            h = F.gelu(h, approximate="tanh")
        else:
            if self.gate is None:  # built for swiglu in __init__
                raise ValueError("swiglu FeedForward has no gate")
            h = F.silu(h) * self.gate(x)
        out: Tensor = self.linear2(self.dropout(h))  # (b, n, d)
        return out
