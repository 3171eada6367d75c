"""Backend "triton": a fused FlashAttention-2 kernel (Dao, 2023) in Triton, forward and backward.

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
Mask convention: boolean True = may attend. ``causal`` and ``window=(left, right)`` are bottom-right
aligned: query i sits at key position ``i + (m - n)``; causal allows keys ``j <= pos``, the window
``pos - left <= j <= pos + right``. Serves: causal, sliding window (Beltagy et al., 2020), a boolean
key-padding mask shaped (b|1, 1, 1, m), segment ids natively (``q_seg (b, n)``, ``k_seg (b, m)``: query i may
attend key j only when equal), any other boolean mask or additive float mask broadcastable to (b, h, n, m) read
in place at its own strides (block pairs the segments or the mask rule out are skipped), GQA / MQA (Ainslie
et al., 2023; Shazeer, 2019), ``scale``,
fp16 / bf16 on CUDA (and fp32 in Triton's interpreter). Rows that may attend no key give output 0
and zero gradients, never NaN. The backward recomputes the scores from the saved row log-sum-exp,
so memory stays O(n) in forward and backward.

Triton is optional (``pip install 'selfattn[gpu]'``) and imported lazily, only when the backend
runs. On CPU tensors the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` set
before the kernels are first imported): that is how the test suite checks them without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor

from .kernel_masks import GeneralMask, general_mask, int32_segments, is_key_padding
from .spec import AttentionCall, fused_kernel_declines
from .structure import window_sides

_KERNELS = "selfattn.attention.triton_kernels"
LOG2E = 1.4426950408889634  # scores are handled in log2 units, exp2 is the fast path
MAX_HEAD_DIM = 256  # larger tiles no longer fit in shared memory / registers
MAX_GRID_Y = 65535  # CUDA's limit on grid dimension 1, which enumerates (batch, head) pairs


@functools.cache
def triton_available() -> bool:
    """Triton is installed (it is an optional extra). Cached: find_spec costs ~17% of a decode step."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether the kernels run (or, once imported, will run) in Triton's interpreter."""
    mod = sys.modules.get(_KERNELS)
    if mod is not None:
        return cast(bool, mod.INTERPRET)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes and launch parameters of one kernel launch."""

    block_m: int = 128  # query rows per program: FA-2's choice for fp16/bf16 at d <= 128
    block_n: int = 64  # keys per inner step: keeps the (m x n) score tile in registers
    num_warps: int = 4  # 4 warps for d <= 64, 8 above (more registers for the accumulator)
    num_stages: int = 3  # software pipelining depth of the key loop on sm80+


def _pow2(x: int) -> int:
    return max(16, 1 << (max(x, 1) - 1).bit_length())  # tl.dot needs every dim >= 16


def tile_config(d: int, e: int, *, backward: bool, interpret: bool) -> TileConfig:
    """Fixed configs (no autotune: several configs need a GPU to choose, and are not testable here)."""
    if interpret:
        return TileConfig(16, 16, 1, 1)  # small tiles: several blocks even at n = 17 in the tests
    wide = max(_pow2(d), _pow2(e))
    if backward:  # d = 256 at 32 x 32 stays under ~99 KB of shared memory (sm86 / sm89)
        if wide > 128:
            return TileConfig(32, 32, 8, 1)
        return TileConfig(64 if wide <= 64 else 32, 64, 4 if wide <= 64 else 8, 2)
    if wide <= 64:
        return TileConfig(128, 64, 4, 3)
    if wide <= 128:
        return TileConfig(128, 64, 8, 3)
    return TileConfig(64, 32, 8, 2)


def _pad_rows(mask: Tensor | None, b: int, m: int, device: torch.device | str) -> tuple[Tensor, int]:
    """Key-padding mask (b|1, 1, 1, m) bool -> (b|1, m) int8 and its batch stride (0 = shared)."""
    if mask is None:
        return torch.ones(1, 1, dtype=torch.int8, device=device), 0  # unused dummy
    full = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (b|1, 1, 1, m|1)
    rows = full[:, 0, 0, :].expand(full.shape[0], m).to(torch.int8).contiguous()  # (b|1, m)
    return rows, (m if rows.shape[0] == b and b > 1 else 0)


def _last_unit(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class _Extra(NamedTuple):
    """Segment ids and a general mask as the kernels read them (dummies where absent)."""

    qseg: Tensor  # (b, n) int32
    kseg: Tensor  # (b, m) int32
    mask: Tensor  # general mask bytes at (smb, smh, smn), or a dummy
    bias: Tensor  # float32 bias at the same strides, or a dummy
    strides: tuple[int, int, int]  # smb, smh, smn
    flags: dict[str, bool]  # HAS_SEG, HAS_MASK, HAS_BIAS


def _extra(segment_ids: tuple[Tensor, Tensor] | None, gm: GeneralMask, device: torch.device) -> _Extra:
    dummy_i = torch.zeros(1, dtype=torch.int32, device=device)
    qseg, kseg = (dummy_i, dummy_i) if segment_ids is None else int32_segments(segment_ids)
    mask = gm.mask if gm.mask is not None else torch.zeros(1, dtype=torch.uint8, device=device)
    bias = gm.bias if gm.bias is not None else torch.zeros(1, dtype=torch.float32, device=device)
    flags = dict(HAS_SEG=segment_ids is not None, HAS_MASK=gm.mask is not None, HAS_BIAS=gm.bias is not None)
    return _Extra(qseg, kseg, mask, bias, (gm.msb, gm.msh, gm.msn), flags)


def _common(q: Tensor, k: Tensor, v: Tensor, left: int | None, right: int | None, scale: float,
            interp: bool) -> dict[str, Any]:
    _, h, n, d = q.shape
    g, m, e = k.shape[1], k.shape[2], v.shape[3]
    return dict(
        H=h, GROUPS=h // g, NQ=n, NK=m, D=d, E=e, qk_scale=scale * LOG2E,
        LEFT=0 if left is None else left, RIGHT=0 if right is None else right,
        HAS_LEFT=left is not None, HAS_RIGHT=right is not None, UPCAST=interp,
        BLOCK_D=_pow2(d), BLOCK_E=_pow2(e),
    )


def _launch_fwd(q: Tensor, k: Tensor, v: Tensor, pad: Tensor, spb: int, has_pad: bool, x: _Extra,
                left: int | None, right: int | None, scale: float) -> tuple[Tensor, Tensor]:
    from . import triton_kernels as tk

    b, h, n, d = q.shape
    e = v.shape[3]
    o = torch.empty(b, h, n, e, dtype=q.dtype, device=q.device)  # (b, h, n, e)
    lse = torch.empty(b, h, n, dtype=torch.float32, device=q.device)  # log2 units, +inf = dead row
    cfg = tile_config(d, e, backward=False, interpret=tk.INTERPRET)
    tk.attn_fwd[(-(-n // cfg.block_m), b * h)](
        q, k, v, o, lse, pad, x.qseg, x.kseg, x.mask, x.bias,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], spb, *x.strides,
        HAS_PAD=has_pad, **x.flags, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages, **_common(q, k, v, left, right, scale, tk.INTERPRET),
    )
    return o, lse


def _launch_bwd(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, pad: Tensor, do: Tensor, spb: int,
                has_pad: bool, x: _Extra, left: int | None, right: int | None,
                scale: float) -> tuple[Tensor, Tensor, Tensor]:
    from . import triton_kernels as tk

    delta = (do.float() * o.float()).sum(-1).contiguous()  # (b, h, n): rowsum(dO ∘ O)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    b, h, n, d = q.shape
    g, m, e = k.shape[1], k.shape[2], v.shape[3]
    cfg = tile_config(d, e, backward=True, interpret=tk.INTERPRET)
    launch = dict(HAS_PAD=has_pad, **x.flags, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages, sm_scale=scale,
                  **_common(q, k, v, left, right, scale, tk.INTERPRET))
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
    tk.attn_bwd_dkdv[(-(-m // cfg.block_n), b * g)](
        q, k, v, do, lse, delta, dk, dv, pad, x.qseg, x.kseg, x.mask, x.bias, *strides, *dk.stride()[:3],
        *dv.stride()[:3], spb, *x.strides, **launch,
    )
    tk.attn_bwd_dq[(-(-n // cfg.block_m), b * h)](
        q, k, v, do, lse, delta, dq, pad, x.qseg, x.kseg, x.mask, x.bias, *strides, *dq.stride()[:3], spb,
        *x.strides, **launch,
    )
    return dq, dk, dv


def _on_device(t: Tensor) -> AbstractContextManager[Any]:
    """Triton launches on the current CUDA device: make it the tensors' one (multi-GPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class _TritonAttention(torch.autograd.Function):
    """softmax(q kᵀ · scale, masked) v with a recomputing backward (FlashAttention-2)."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, pad: Tensor, spb: int, has_pad: bool, x: _Extra,
                left: int | None, right: int | None, scale: float) -> Tensor:
        with _on_device(q):
            o, lse = _launch_fwd(q, k, v, pad, spb, has_pad, x, left, right, scale)
        ctx.save_for_backward(q, k, v, o, lse, pad)
        ctx.args = (spb, has_pad, x, left, right, scale)
        return o

    @staticmethod
    def backward(ctx: Any, do: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, o, lse, pad = ctx.saved_tensors
        with _on_device(q):
            grads = _launch_bwd(q, k, v, o, lse, pad, _last_unit(do), *ctx.args)
        return (*grads, None, None, None, None, None, None, None)


def triton_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    window: tuple[int | None, int | None] | None = None,
    alibi_slopes: Tensor | None = None,
    return_weights: bool = False,
    segment_ids: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, None]:
    """Fused attention; call through :func:`selfattn.attention` (which checks :func:`triton_supports`)."""
    b, h, n, d = q.shape
    m, e = k.shape[2], v.shape[3]
    scale = d**-0.5 if scale is None else float(scale)
    if n == 0 or m == 0:  # no queries, or no keys: every row attends nothing -> 0
        return q.new_zeros(b, h, n, e) + 0 * (q.sum() + k.sum() + v.sum()), None
    left, right = window_sides(causal, window)
    padding = mask if is_key_padding(mask) else None
    pad, spb = _pad_rows(padding, b, m, q.device)
    x = _extra(segment_ids, general_mask(mask, m), q.device)
    q, k, v = _last_unit(q), _last_unit(k), _last_unit(v)
    out = cast(Tensor, _TritonAttention.apply(  # type: ignore[no-untyped-call]
        q, k, v, pad, spb, padding is not None, x, left, right, scale))
    return out, None  # (b, h, n, e)


def triton_supports(call: AttentionCall) -> str | None:
    """None when the kernel can serve ``call``, else the reason (``"auto"`` then falls back)."""
    if not triton_available():
        return "triton is not installed (pip install 'selfattn[gpu]')"
    interp = interpreting()
    if call.device_type == "cpu" and not interp:
        return ("tensors are on the CPU and Triton's interpreter is off (it runs on CUDA GPUs; "
                "TRITON_INTERPRET=1 before import runs it, slowly, on CPU for testing)")
    if call.device_type not in ("cpu", "cuda"):
        return f"tensors on device type {call.device_type!r}; the kernel runs on CUDA GPUs"
    if call.device_type == "cuda" and interp:
        return "Triton's interpreter is on; it would run CUDA tensors on the host"
    why = fused_kernel_declines(call, "triton")
    if why is not None:
        return why
    if call.alibi:
        return "ALiBi is not implemented in the kernel"
    ok = (torch.float16, torch.bfloat16) + ((torch.float32,) if call.device_type == "cpu" else ())
    if call.dtype not in ok:
        names = ", ".join(str(t).removeprefix("torch.") for t in ok)
        return f"dtype {call.dtype} is not supported on {call.device_type} (expected {names})"
    if call.batch * call.q_heads > MAX_GRID_Y:
        return f"batch x heads = {call.batch * call.q_heads} exceeds the CUDA grid limit {MAX_GRID_Y}"
    if not (1 <= call.head_dim <= MAX_HEAD_DIM and 1 <= call.v_dim <= MAX_HEAD_DIM):
        return f"head dims must be in 1..{MAX_HEAD_DIM}, got d={call.head_dim}, e={call.v_dim}"
    return None
