"""The C kernel as PyTorch custom operators: torch.library's own checks (schema, fake/meta, autograd
registration, AOT dispatch), and torch.compile(fullgraph=True) / torch.export keeping the operator,
compared with eager. Skipped where the CPU lacks the kernel's instructions.
"""

from __future__ import annotations

import pytest
import torch

import selfattn
from selfattn.attention import cpu_kernel
from selfattn.attention.cpu_fused import cpu_fused_fwd_op

needs = {v: pytest.mark.skipif(cpu_kernel.cpu_reason(v) is not None, reason=str(cpu_kernel.cpu_reason(v)))
         for v in ("bf16", "f32")}


def _inputs(dtype, n=70, m=90, grad=True):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, n, 40, generator=gen).to(dtype)  # GQA 4 query heads over 2, head dims not x32
    k, v = torch.randn(2, 2, m, 40, generator=gen).to(dtype), torch.randn(2, 2, m, 24, generator=gen).to(dtype)
    return [t.requires_grad_(grad) for t in (q, k, v)]


@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, marks=needs["bf16"]),
                                   pytest.param(torch.float32, marks=needs["f32"])])
def test_opcheck(dtype):
    q, k, v = _inputs(dtype)
    pad = torch.rand(2, 90, generator=torch.Generator().manual_seed(1)) > 0.3  # (b, m), True = may attend
    q_seg = torch.arange(70).div(30, rounding_mode="floor").expand(2, 70)  # (b, n) ids 0, 1, 2
    k_seg = torch.arange(90).div(40, rounding_mode="floor").expand(2, 90).contiguous()  # (b, m)
    general = torch.rand(2, 1, 70, 90, generator=torch.Generator().manual_seed(2)) > 0.4  # (b, 1, n, m)
    bias = torch.randn(1, 4, 70, 90, generator=torch.Generator().manual_seed(3))  # (1, h, n, m) additive
    cases = [(q, k, v, pad, torch.full((4,), 0.1), None, None, None, 0.2, 5, 0),
             (q, k, v, pad, None, q_seg.contiguous(), k_seg, None, 0.25, -1, -1),
             (q, k, v, None, None, None, None, general, 0.25, -1, 0),
             (q, k, v, None, None, None, None, bias, 0.25, -1, -1),
             (q, k, v, None, None, None, None, None, 0.3, -1, -1)]
    for args in cases if dtype == torch.bfloat16 else cases[:4]:
        torch.library.opcheck(cpu_fused_fwd_op, args)


def _attend(q, k, v):
    pad = torch.ones(1, 1, 1, k.shape[2], dtype=torch.bool)
    return selfattn.attention(q, k, v, mask=pad, causal=True, alibi_slopes=torch.full((q.shape[1],), 0.25))


@needs["bf16"]
def test_compile_fullgraph_forward_and_backward_equal_eager():
    """AOTAutograd traces forward and backward through the fake implementations and the registered
    autograd; the "aot_eager" backend keeps the suite fast (Inductor, the default, passes the same
    test in ~80 s on 2 shared cores: it only adds code generation around the operator)."""
    torch.set_num_threads(1)  # the backward's dq sums in thread order: one thread makes eager and compiled equal
    q, k, v = _inputs(torch.bfloat16, n=128, m=128)
    assert selfattn.explain_backend(q, k, v, causal=True).chosen == "cpu_bf16"
    explained = torch._dynamo.explain(_attend)(q, k, v)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert "selfattn.cpu_fused_fwd" in str(explained.graphs[0].graph)
    eager = _attend(q, k, v)
    grads = torch.autograd.grad(eager.float().sum(), (q, k, v))
    torch._dynamo.reset()
    compiled = torch.compile(_attend, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    assert torch.equal(out, eager)
    for a, b in zip(torch.autograd.grad(out.float().sum(), (q, k, v)), grads):
        assert torch.equal(a, b)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


class _Layer(torch.nn.Module):
    def forward(self, q, k, v):
        return _attend(q, k, v)


@needs["f32"]
def test_export_keeps_the_operator():
    q, k, v = _inputs(torch.float32, n=128, m=128, grad=False)
    assert selfattn.explain_backend(q, k, v, causal=True).chosen == "cpu_f32"
    exported = torch.export.export(_Layer(), (q, k, v))
    assert "selfattn.cpu_fused_fwd" in str(exported.graph)
    assert torch.equal(exported.module()(q, k, v), _Layer()(q, k, v))
