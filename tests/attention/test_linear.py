"""Linear attention (Katharopoulos et al., 2020) against its quadratic definition written here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import selfattn
from selfattn.attention.linear import linear_attention
from selfattn.layers.attention import MultiHeadAttention


def quadratic(q, k, v, *, causal, pad=None):
    """out_i = sum_j phi(q_i)·phi(k_j) v_j / sum_j phi(q_i)·phi(k_j), loops over allowed j."""
    phi = lambda x: F.elu(x.double()) + 1
    b, h, n, _ = q.shape
    m, r = k.shape[2], h // k.shape[1]
    out = torch.zeros(b, h, n, v.shape[3], dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                num, den = 0.0, 0.0
                for j in range(m):
                    if causal and j > i + m - n:
                        continue
                    if pad is not None and not pad[min(bi, pad.shape[0] - 1), 0, 0, j]:
                        continue
                    w = phi(q[bi, hi, i]) @ phi(k[bi, hi // r, j])
                    num, den = num + w * v[bi, hi // r, j].double(), den + w
                if den > 0:
                    out[bi, hi, i] = num / den
    return out


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 9), extra=st.integers(0, 5), g=st.integers(1, 2), r=st.integers(1, 2),
       causal=st.booleans(), chunk=st.integers(1, 4), with_pad=st.booleans(), seed=st.integers(0, 999))
def test_linear_matches_quadratic_definition(n, extra, g, r, causal, chunk, with_pad, seed):
    gen = torch.Generator().manual_seed(seed)
    m = n + extra
    q = torch.randn(2, g * r, n, 4, generator=gen, dtype=torch.float64)
    k = torch.randn(2, g, m, 4, generator=gen, dtype=torch.float64)
    v = torch.randn(2, g, m, 3, generator=gen, dtype=torch.float64)
    pad = torch.rand(2, 1, 1, m, generator=gen) > 0.3 if with_pad else None
    out = linear_attention(q, k, v, causal=causal, chunk=chunk, mask=pad)
    torch.testing.assert_close(out, quadratic(q, k, v, causal=causal, pad=pad), atol=1e-12, rtol=1e-12)


def test_gradient_and_errors():
    q = torch.randn(1, 2, 5, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k: linear_attention(q, k, k, causal=True, chunk=2), (q, k))
    with pytest.raises(ValueError, match="Nq <= Nk"):
        linear_attention(q, k[:, :, :3], k[:, :, :3], causal=True)
    with pytest.raises(ValueError, match="key-padding"):
        linear_attention(q, k, k, mask=torch.ones(5, 5, dtype=torch.bool))


def test_layer_and_model_select_linear_attention():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, kernel="linear").double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    y, _ = mha(x, causal=True)
    q = mha.q_proj(x).view(2, 7, 4, 4).transpose(1, 2)  # (b, h, n, d)
    k = mha.k_proj(x).view(2, 7, 4, 4).transpose(1, 2)
    v = mha.v_proj(x).view(2, 7, 4, 4).transpose(1, 2)
    want = mha.out_proj(quadratic(q, k, v, causal=True).transpose(1, 2).reshape(2, 7, 16))
    torch.testing.assert_close(y, want, atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="kernel must be one of"):
        MultiHeadAttention(16, 4, kernel="bogus")
    cfg = selfattn.preset("tiny").replace(attention_type="linear")
    model = selfattn.build_model(cfg)
    kernels = {name: mod.kernel for name, mod in model.named_modules() if isinstance(mod, MultiHeadAttention)}
    assert {k for n, k in kernels.items() if "self_attn" in n} == {"linear"}
    assert {k for n, k in kernels.items() if "cross_attn" in n} == {"softmax"}  # cross-attention stays exact
    with pytest.raises(ValueError, match="attention_type"):
        selfattn.preset("tiny").replace(attention_type="nope")
