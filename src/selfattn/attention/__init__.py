"""Scaled dot-product attention and its backends.

``attention(q, k, v, ...)`` is the one entry point; backends register themselves in
:data:`BACKENDS` (a :class:`Registry`, which decides once per call signature). Mask convention everywhere:
boolean True = may attend; ``causal`` is bottom-right aligned (query i may attend key j when j <= i + Nk - Nq).
"""

from .batched import batched_attention, batched_auto_declines, batched_supports
from .cpu_fused import (
    cpu_bf16_attention,
    cpu_bf16_auto_declines,
    cpu_bf16_supports,
    cpu_f32_attention,
    cpu_f32_auto_declines,
    cpu_f32_supports,
)
from .flash import flash_attention, flash_auto_declines, flash_supports
from .math_backend import math_attention, math_supports
from .registry import (
    BACKENDS,
    Backend,
    BackendChoice,
    BackendUnavailable,
    Registry,
    attention,
    explain_backend,
    register_backend,
)
from .spec import AttentionCall
from .structure import alibi_bias, structural_mask
from .torch_backend import torch_attention, torch_supports
from .torch_f32 import torch_f32_attention, torch_f32_auto_declines, torch_f32_supports
from .triton_backend import triton_attention, triton_supports

register_backend("math", math_attention, math_supports, priority=0, native_segments=True,
                 description="readable reference: explicit scores, float32 softmax, can return weights")
register_backend("torch", torch_attention, torch_supports, priority=10,
                 description="PyTorch's fused scaled_dot_product_attention, fully-masked rows made safe")
register_backend("torch_f32", torch_f32_attention, torch_f32_supports, priority=12,
                 auto_declines=torch_f32_auto_declines,
                 description="bf16/fp16 on CPU: SDPA on float32 copies (bf16 matmuls are slow on AVX2 CPUs)")
register_backend("flash", flash_attention, flash_supports, priority=15, native_segments=True,
                 auto_declines=flash_auto_declines,
                 description="exact blockwise attention (online softmax), O(N) memory forward and backward; any mask, "
                             "segment ids natively, skipping ruled-out blocks")
register_backend("cpu_bf16", cpu_bf16_attention, cpu_bf16_supports, priority=18, native_segments=True,
                 auto_declines=cpu_bf16_auto_declines,
                 description="fused bf16 C kernel for CPUs with AVX-512 BF16, O(N) memory forward and backward, "
                             "segment ids natively")
register_backend("cpu_f32", cpu_f32_attention, cpu_f32_supports, priority=17, native_segments=True,
                 auto_declines=cpu_f32_auto_declines,
                 description="fused float32 C kernel for CPUs with AVX-512, O(N) memory forward and backward, "
                             "segment ids natively")
register_backend("batched", batched_attention, batched_supports, priority=19,
                 auto_declines=batched_auto_declines,
                 description="short sequences, many (batch x head) problems: batched matmuls, float32 softmax")
register_backend("triton", triton_attention, triton_supports, priority=20, native_segments=True,
                 description="fused FlashAttention-2 Triton kernel for CUDA (fp16/bf16), forward and backward")

__all__ = [
    "BACKENDS",
    "AttentionCall",
    "Backend",
    "BackendChoice",
    "BackendUnavailable",
    "Registry",
    "alibi_bias",
    "attention",
    "explain_backend",
    "flash_attention",
    "math_attention",
    "register_backend",
    "structural_mask",
    "torch_attention",
]
