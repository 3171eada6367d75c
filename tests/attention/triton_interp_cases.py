"""Backend "triton" run through Triton's interpreter on CPU, against the math backend in float64.

Not collected by the ordinary run (no ``test_`` prefix): ``test_triton.py`` runs this module in a
fresh subprocess, because ``TRITON_INTERPRET=1`` must be set before Triton decorates the kernels
and must not leak into the other tests of the main pytest process.

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
Mask convention: True = may attend; causal and windows bottom-right aligned.
Comparison and derived tolerances: ``triton_checks.py``.
"""

from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton's jit

import pytest
import torch

if "selfattn.attention.triton_kernels" in sys.modules:  # pragma: no cover - misuse guard
    pytest.skip("kernels already imported without the interpreter", allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed (pip install 'selfattn[gpu]')")

from triton_checks import bound, check, make, pad_mask, run

import selfattn
from selfattn.attention import explain_backend
from selfattn.attention import triton_kernels as tk
from selfattn.attention.math_backend import math_attention


def test_kernels_are_interpreted():
    from triton.runtime.interpreter import InterpretedFunction

    assert tk.INTERPRET and isinstance(tk.attn_fwd, InterpretedFunction)


def _seg(lengths, order=None):
    """(2, sum(lengths)) segment ids: documents of these lengths, ids in ``order`` (default 0, 1, ...)."""
    ids = torch.cat([torch.full((n,), (order or range(len(lengths)))[i % len(order or lengths)])
                     for i, n in enumerate(lengths)])
    return ids.expand(2, -1).contiguous()


def _blocky(b, h, n, m):
    """Random boolean mask with a 16 x 16 block no query may attend and a query block that sees nothing."""
    mask = torch.rand(b, h, n, m, generator=torch.Generator().manual_seed(11)) > 0.4
    mask[..., :16, 16:32] = False
    mask[..., 32:48, :] = False
    return mask


def _bias(b, h, n, m):
    """Float bias with -inf on the blocky mask's holes."""
    bias = torch.randn(b, h, n, m, generator=torch.Generator().manual_seed(12))
    return bias.masked_fill(~_blocky(b, h, n, m), float("-inf"))


# (b, h, g, n, m, d, e, kwargs): tiles are 16 x 16 under the interpreter, so n, m in {17, 64}
# span several blocks with a ragged last one, and causal / window skip whole blocks.
CASES = {
    "plain n=m=17": (2, 2, 2, 17, 17, 16, 16, {}),
    "causal gqa 64": (1, 4, 2, 64, 64, 32, 32, dict(causal=True)),
    "causal+padding n<m": (2, 2, 1, 17, 64, 16, 16, dict(causal=True, mask=pad_mask(2, 64, 0))),
    "causal n>m dead rows": (1, 2, 1, 64, 17, 16, 16, dict(causal=True)),
    "window both sides": (1, 2, 2, 64, 64, 16, 16, dict(window=(5, 3))),
    "window left+causal mqa": (1, 3, 1, 64, 64, 16, 16, dict(window=(40, None), causal=True)),
    "decode n=1 padding": (2, 2, 1, 1, 64, 32, 32, dict(causal=True, mask=pad_mask(1, 64, 3))),
    "d=24 e=40 scale": (1, 2, 1, 17, 17, 24, 40, dict(scale=0.3, window=(None, 2))),
    "n=m=1": (1, 1, 1, 1, 1, 16, 16, {}),
    # packed rows: 3 documents, causal; cross-attention ids (segment 3 has no keys: dead rows); unsorted ids
    "segments causal": (2, 2, 1, 64, 64, 16, 16, dict(causal=True, segment_ids=(_seg([20, 30, 14]),) * 2)),
    "segments cross": (2, 2, 2, 40, 64, 16, 16, dict(segment_ids=(_seg([10, 20, 10]), _seg([24, 40])))),
    "segments unsorted+padding": (2, 2, 1, 64, 64, 16, 16, dict(segment_ids=(_seg([16] * 4, [1, 0]),) * 2,
                                                                  mask=pad_mask(2, 64, 7))),
    # general masks over several 16-blocks: whole-block holes and dead rows, per head, broadcast over batch
    "general bool mask": (2, 2, 1, 64, 64, 16, 16, dict(mask=_blocky(1, 2, 64, 64), causal=True)),
    "float bias -inf blocks": (2, 2, 2, 40, 64, 16, 16, dict(mask=_bias(2, 1, 40, 64))),
    "bias + segments": (1, 2, 1, 64, 64, 16, 16, dict(mask=_bias(1, 2, 64, 64),
                                                       segment_ids=(_seg([30, 34])[:1],) * 2)),
}


@pytest.mark.parametrize("case", CASES)
def test_float32_matches_math_float64(case):
    b, h, g, n, m, d, e, kwargs = CASES[case]
    check(torch.float32, b, h, g, n, m, d, e, kwargs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_derived_bound(dtype):
    check(dtype, 2, 4, 2, 64, 64, 32, 32, dict(causal=True, mask=pad_mask(2, 64, 5)), seed=5)


def test_fully_masked_rows_zero_output_and_zero_grads():
    q, k, v, do = (t.float() for t in make(2, 2, 1, 17, 17, 16, 16, seed=7))
    mask = torch.ones(2, 1, 1, 1, dtype=torch.bool)  # broadcast over the keys too
    mask[1] = False  # batch 1 may attend no key at all
    out, (dq, dk, dv) = run("triton", q, k, v, do, dict(mask=mask))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    for grad in (dq, dk, dv):
        assert torch.isfinite(grad).all() and torch.equal(grad[1], torch.zeros_like(grad[1]))
    ref, _ = math_attention(q.double(), k.double(), v.double(), mask=mask)
    torch.testing.assert_close(out[0].double(), ref[0], rtol=0, atol=1e-5)


def test_no_keys_gives_zeros():
    q = torch.randn(1, 2, 3, 16)
    kv = torch.randn(1, 2, 0, 16)
    out = selfattn.attention(q, kv, kv, backend="triton")
    assert out.shape == (1, 2, 3, 16) and torch.equal(out, torch.zeros_like(out))


def test_non_contiguous_inputs():
    """(b, n, h, d) tensors viewed as (b, h, n, d), as MultiHeadAttention produces them."""
    gen = torch.Generator().manual_seed(11)
    x = [torch.randn(1, 17, 2, 16, generator=gen).transpose(1, 2) for _ in range(3)]  # (b, h, n, d)
    out = selfattn.attention(*x, causal=True, backend="triton")
    ref, _ = math_attention(*(t.double() for t in x), causal=True)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=bound(ref, ref, torch.float32, 33))


def test_auto_picks_triton_under_interpreter_and_falls_back_with_reasons():
    q = torch.randn(1, 2, 4, 16)
    assert explain_backend(q, q, q, causal=True).chosen == "triton"
    choice = explain_backend(q, q, q, return_weights=True)
    assert choice.chosen != "triton" and "weights" in choice.reasons["triton"]
