"""Backend "torch_f32": the bfloat16/float16 path for CPUs *without* bf16 units — SDPA run in float32.

(CPUs with AVX-512 BF16 get backend "cpu_bf16", a fused bf16 C kernel; this one is for AVX2 CPUs and AVX-512
CPUs without avx512_bf16/amx_bf16 — on such an Intel Xeon (AVX-512F/VNNI, 2 cores) at N 128-256, causal, bf16
forward+backward: SDPA bf16 284-652 ms, this backend 78-267 ms, ``benchmarks/attention_training_shapes.py``.)

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
Mask convention: boolean True = may attend; ``causal`` is bottom-right aligned (query i may attend
key j when j <= i + m - n); rows with no allowed key give 0 (all handled by backend "torch").

Why: on a CPU without AVX-512 BF16 units (the AVX2 AMD EPYC this was measured on) bfloat16
matmuls run at ~0.5-1.5 GFLOP/s against 8-40 GFLOP/s in float32, and SDPA's bfloat16 backward
uses them: at B=1, H=8, N=4096, D=64, causal, SDPA bf16 took 8.4 s forward+backward, the same
SDPA on float32 copies 1.7 s (4.9x faster); forward alone it is 0.48 s vs 0.44 s, so "auto" uses
this backend only when a gradient is needed (``benchmarks/attention.py``).
So bf16/fp16 inputs are upcast (O(N) extra memory), attended in float32 (matmuls, softmax
statistics and accumulation all float32) and the output rounded back to the input dtype;
gradients flow through the casts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import cpu_kernel
from .spec import AttentionCall
from .torch_backend import torch_attention, torch_supports


def torch_f32_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False,
    scale: float | None = None, dropout_p: float = 0.0, window: tuple[int | None, int | None] | None = None,
    alibi_slopes: Tensor | None = None, return_weights: bool = False,
) -> tuple[Tensor, None]:
    f32 = torch.float32
    if mask is not None and mask.dtype.is_floating_point:
        mask = mask.to(f32)
    out, _ = torch_attention(q.to(f32), k.to(f32), v.to(f32), mask=mask, causal=causal, scale=scale,
                             dropout_p=dropout_p, window=window, alibi_slopes=alibi_slopes)
    return out.to(q.dtype), None  # (b, h, n, e)


def torch_f32_supports(call: AttentionCall) -> str | None:
    if call.dtype not in (torch.bfloat16, torch.float16):
        return f"only for bfloat16/float16 inputs (got {call.dtype}); 'torch' serves the others directly"
    if call.device_type != "cpu":
        return "only for CPU tensors (GPU SDPA kernels are fast in bf16/fp16)"
    return torch_supports(call)


def torch_f32_auto_declines(call: AttentionCall) -> str | None:
    why = torch_f32_supports(call)
    if why is not None:
        return why
    if cpu_kernel.cpu_has_bf16_units():
        return "this CPU has bf16 units (avx512_bf16/amx_bf16): SDPA's own bf16 kernels run at full speed"
    if not call.requires_grad:
        return ("forward only: SDPA's bf16 forward is as fast as float32 SDPA plus the casts "
                "(measured 0.74-0.92x); the float32 path pays off in the backward")
    return None


__all__ = ["torch_f32_attention", "torch_f32_auto_declines", "torch_f32_supports"]
