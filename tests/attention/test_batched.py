"""Backend "batched" (short sequences, batched matmuls): its "auto" policy and its CPU-without-bf16 path.

Its numerics against the float64 reference run in test_attention.py (it is one of CPU_BACKENDS there).
"""

from __future__ import annotations

import pytest
import torch

import selfattn
from selfattn.attention import batched
from selfattn.attention.batched import AUTO_F32_MIN_PROBLEMS, AUTO_MAX_LEN


def _qkv(b, n, dtype, grad=True, h=8, d=32):
    return [torch.randn(b, h, n, d, dtype=dtype).requires_grad_(grad) for _ in range(3)]


@pytest.fixture
def bf16_units(monkeypatch):
    monkeypatch.setattr(batched, "cpu_has_bf16_units", lambda: True)


def test_auto_takes_training_shapes_in_bf16(bf16_units):
    q, k, v = _qkv(128, 32, torch.bfloat16)  # the `small` preset's step: b*h = 1024, 32 tokens
    pad = torch.ones(128, 1, 1, 32, dtype=torch.bool)
    for kwargs in ({}, {"causal": True}, {"mask": pad}):
        assert selfattn.explain_backend(q, k, v, **kwargs).chosen == "batched"
    n = AUTO_MAX_LEN["bf16_backward"]
    q, k, v = _qkv(2, 2 * n, torch.bfloat16)
    choice = selfattn.explain_backend(q, k, v, causal=True)
    assert choice.chosen != "batched" and "beyond 64 (bf16_backward)" in choice.reasons["batched"]
    with torch.no_grad():  # forward only: the threshold is lower
        q, k, v = _qkv(2, n, torch.bfloat16, grad=False)
        assert "beyond 32 (bf16_forward)" in selfattn.explain_backend(q, k, v).reasons["batched"]


def test_auto_float32_needs_many_problems(bf16_units):
    small = _qkv(1, 32, torch.float32)  # 8 problems
    choice = selfattn.explain_backend(*small)
    assert choice.chosen != "batched" and f"below {AUTO_F32_MIN_PROBLEMS}" in choice.reasons["batched"]
    many = _qkv(AUTO_F32_MIN_PROBLEMS // 8, 32, torch.float32)
    assert selfattn.explain_backend(*many).chosen == "batched"


def test_declines_weights_dropout_and_mask_gradients(bf16_units):
    q, k, v = _qkv(4, 16, torch.bfloat16)
    assert "weights requested" in selfattn.explain_backend(q, k, v, return_weights=True).reasons["batched"]
    assert "dropout" in selfattn.explain_backend(q, k, v, dropout_p=0.1).reasons["batched"]
    bias = torch.zeros(1, 1, 16, 16, requires_grad=True)
    assert "gradient" in selfattn.explain_backend(q, k, v, mask=bias).reasons["batched"]
    with pytest.raises(ValueError, match="cannot serve this call: no dropout"):
        selfattn.attention(q, k, v, dropout_p=0.1, backend="batched")


def test_without_bf16_units_multiplies_in_float32(monkeypatch):
    """An AVX2-only CPU: bf16 inputs are attended in float32 (only the output is rounded) and "auto" uses
    the float32 policy, so bf16 there is never slower than float32 through this backend."""
    monkeypatch.setattr(batched, "cpu_has_bf16_units", lambda: False)
    q, k, v = _qkv(2, 16, torch.bfloat16, h=2, d=8)
    out = selfattn.attention(q, k, v, causal=True, backend="batched")
    ref = selfattn.attention(*(t.detach().double() for t in (q, k, v)), causal=True, backend="math")
    eps = torch.finfo(torch.bfloat16).eps  # float32 compute: the only bf16 rounding is the output's
    torch.testing.assert_close(out.double(), ref, atol=eps * ref.abs().max().item(), rtol=eps)
    out.float().sum().backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad).all()
    few = _qkv(8, 32, torch.bfloat16)  # 64 problems: the float32 rule applies
    assert f"below {AUTO_F32_MIN_PROBLEMS}" in selfattn.explain_backend(*few).reasons["batched"]
