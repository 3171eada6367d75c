"""What "auto" picks once "flash" is registered, and that the reasons it gives are the real ones.

These tests pin the policy among SDPA ("torch"), "flash" and "torch_f32" that a CPU without AVX-512
gets: the C-kernel backends (cpu_bf16, cpu_f32; their policy is tested in test_cpu_fused.py) and the
short-sequence "batched" backend (tested in test_batched.py) are taken out of the registry for them,
whatever this machine's CPU is.
"""

from __future__ import annotations

import pytest
import torch

import selfattn
from selfattn.attention import BACKENDS
from selfattn.attention.flash import AUTO_MIN_SCORES, AUTO_SDPA_PAIR_RATE, DEFAULT_CONFIG


@pytest.fixture(autouse=True)
def without_c_kernels():
    with BACKENDS.temporarily(remove=("cpu_bf16", "cpu_f32", "batched")):
        yield


def _qkv(n, m=None):
    m = n if m is None else m
    return torch.randn(1, 2, n, 8), torch.randn(1, 2, m, 8), torch.randn(1, 2, m, 8)


def test_auto_prefers_sdpa_when_it_needs_no_mask():
    q, k, v = _qkv(2048)
    choice = selfattn.explain_backend(q, k, v, causal=True)
    assert choice.chosen == "torch"
    assert "SDPA serves this call without a materialised mask" in choice.reasons["flash"]


def test_auto_picks_flash_where_it_saves_work_or_a_large_mask():
    n = int(AUTO_MIN_SCORES**0.5)
    q, k, v = _qkv(n)
    # with gradients flash must leave SDPA's n*n pairs more than AUTO_SDPA_PAIR_RATE["backward"] times over
    qg = q.clone().requires_grad_()
    window = (400, 0)
    call_pairs = n * min(n, 400 + 1 + DEFAULT_CONFIG.block_q)
    assert AUTO_SDPA_PAIR_RATE["backward"] * call_pairs <= n * n < AUTO_SDPA_PAIR_RATE["forward"] * call_pairs
    choice = selfattn.explain_backend(qg, k, v, window=window, causal=True)
    assert choice.chosen == "flash"
    assert choice.reasons["torch"] == "lower priority than 'flash'"
    # forward only, SDPA's faster pairs win here (its measured rate margin is larger forward): auto says so
    with torch.no_grad():
        fwd = selfattn.explain_backend(q, k, v, window=window, causal=True)
    assert fwd.chosen == "torch" and f"leaves {call_pairs} of {n * n}" in fwd.reasons["flash"]
    # ... and a window that hides enough of a long sequence goes to flash forward too
    q16 = torch.empty(1, 1, 16384, 8)
    assert selfattn.explain_backend(q16, q16, q16, window=(512, 0), causal=True).chosen == "flash"
    # ALiBi over 8 heads at n = 8192: SDPA would need a 2 GiB float32 bias
    big = 8192
    q8 = torch.empty(1, 8, big, 8)  # never computed on: explain_backend only inspects shapes
    choice = selfattn.explain_backend(q8, q8, q8, alibi_slopes=torch.ones(8))
    assert choice.chosen == "flash"
    # padding + causal at n = 2048: a 4 MiB boolean mask, SDPA is faster: auto says so
    pad = torch.ones(1, 1, 1, n, dtype=torch.bool)
    choice = selfattn.explain_backend(q, k, v, mask=pad, causal=True)
    assert choice.chosen == "torch" and "explicit mask (4 MiB) is affordable" in choice.reasons["flash"]
    big_pad = torch.ones(1, 1, 1, 2**15, dtype=torch.bool)
    q15 = torch.empty(1, 1, 2**15, 8)
    assert selfattn.explain_backend(q15, q15, q15, mask=big_pad, causal=True).chosen == "flash"


def test_auto_falls_back_with_honest_reasons():
    q, k, v = _qkv(16)
    choice = selfattn.explain_backend(q, k, v, window=(2, 0))
    assert choice.chosen == "torch" and "short sequences" in choice.reasons["flash"]
    n = int(AUTO_MIN_SCORES**0.5)
    q, k, v = _qkv(n)
    general = torch.ones(n, n, dtype=torch.bool)
    choice = selfattn.explain_backend(q, k, v, mask=general)
    assert choice.chosen == "torch" and "explicit mask (4 MiB) is affordable" in choice.reasons["flash"]
    choice = selfattn.explain_backend(q[:, :, :4], k[:, :, :4], v[:, :, :4], return_weights=True)
    assert choice.chosen == "math" and "weights" in choice.reasons["flash"]


def test_auto_result_equals_math_on_a_flash_case():
    n = int(AUTO_MIN_SCORES**0.5)
    q, k, v = (t.double() for t in _qkv(n))
    window = (n // 16, 0)
    qg = q.clone().requires_grad_()  # with gradients: flash's backward saves SDPA's slow masked one
    assert selfattn.explain_backend(qg, k, v, window=window).chosen == "flash"
    # compare on the last rows only: the math reference is n x n
    out = selfattn.attention(qg, k, v, window=window).detach()
    ref = selfattn.attention(q[:, :, -64:], k, v, window=window, backend="math")
    torch.testing.assert_close(out[:, :, -64:], ref, atol=1e-12, rtol=1e-12)


def test_bfloat16_on_cpu_runs_sdpa_in_float32(monkeypatch):
    """Without bf16 units (AVX2, or AVX-512 without avx512_bf16/amx_bf16) "auto" trains bf16 attention through
    float32 SDPA; with them it declines (the flags are faked both ways, so both branches run on every CPU)."""
    from selfattn.attention import cpu_kernel

    q, k, v = (t.bfloat16().requires_grad_() for t in _qkv(64))
    if not cpu_kernel.cpu_has_bf16_units():  # a real CPU of that kind: nothing above it serves the call
        assert selfattn.explain_backend(q, k, v, causal=True).chosen == "torch_f32"
    monkeypatch.setattr(cpu_kernel, "cpu_has_bf16_units", lambda: False)
    why = selfattn.explain_backend(q, k, v, causal=True).reasons.get("torch_f32")
    assert why is None or why.startswith("lower priority")  # a bf16 CPU's own kernel may outrank it
    with torch.no_grad():  # forward only: bf16 SDPA is as fast
        fwd = selfattn.explain_backend(q, k, v, causal=True)
    assert "forward only" in fwd.reasons["torch_f32"]
    monkeypatch.setattr(cpu_kernel, "cpu_has_bf16_units", lambda: True)
    assert "has bf16 units" in selfattn.explain_backend(q, k, v, causal=True).reasons["torch_f32"]
    monkeypatch.undo()
    out = selfattn.attention(q, k, v, causal=True, backend="torch_f32")
    ref = selfattn.attention(*(t.detach().double() for t in (q, k, v)), causal=True, backend="math")
    eps = torch.finfo(torch.bfloat16).eps  # float32 compute: only the output rounding is bf16
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, atol=eps * ref.abs().max().item(), rtol=eps)
    out.float().sum().backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad).all()
    f32 = selfattn.explain_backend(*(t.float() for t in (q, k, v)))
    assert "only for bfloat16/float16" in f32.reasons["torch_f32"]


def test_each_backend_lives_in_a_module_named_after_it():
    # a maintainer looking for backend "torch_f32" opens attention/torch_f32.py (it once lived in flash_bf16.py)
    family = {"math": "math_backend", "torch": "torch_backend", "triton": "triton_backend",
              "cpu_bf16": "cpu_fused", "cpu_f32": "cpu_fused"}
    for name, backend in selfattn.BACKENDS.items():
        assert backend.fn.__module__ == f"selfattn.attention.{family.get(name, name)}", name
