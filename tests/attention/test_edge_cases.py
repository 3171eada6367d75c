"""One table of named edge cases (OpInfo style), each run over every backend x dtype that serves it.

Every case is compared with the float64 definition (``attention_definition.py``) on output and
gradients, under the per-dtype bounds of ``attention_cases.py``. The NaN/inf cases state the rule
(math_backend's docstring): NaN/inf reach exactly the outputs and gradients the bad value reaches; a
masked-out key's NaN reaches nothing; a row is dead (0) only when nothing may be attended.

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
"""

from __future__ import annotations

import pytest
import torch
from attention_cases import Case, backends_for, check_case, representable
from attention_definition import definition

import selfattn

NAN, INF = float("nan"), float("inf")
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _case(dtype, b=1, h=2, g=1, n=9, m=9, d=8, e=None, spread=1.0, seed=0, **options) -> Case:
    gen = torch.Generator().manual_seed(seed)
    q = representable(spread * torch.randn(b, h, n, d, generator=gen), dtype)
    k = representable(torch.randn(b, g, m, d, generator=gen), dtype)
    v = representable(torch.randn(b, g, m, d if e is None else e, generator=gen), dtype)
    return Case(q, k, v, dtype=dtype, **options)


def _set(t, index, value):
    t[index] = value
    return t


def _padding(m, padded):  # (1, 1, 1, m) key padding, True = may attend
    mask = torch.ones(1, 1, 1, m, dtype=torch.bool)
    mask[..., padded] = False
    return mask


def nan_key(dt):  # the k[0, 0, 5, 3] = nan: flash zeroed the whole head
    c = _case(dt, causal=True)
    _set(c.k, (0, 0, 5, 3), NAN)
    return c


def nan_query_row(dt):  # cpu_f32 gave 0 output and 0 gradient
    c = _case(dt)
    _set(c.q, (0, 1, 2), NAN)
    return c


def nan_value_entry(dt):  # only column 1 of the rows attending key 3
    c = _case(dt, causal=True)
    _set(c.v, (0, 0, 3, 1), NAN)
    return c


def inf_key(dt):  # +inf and -inf logits in one key: NaN rows and absent keys
    c = _case(dt, h=4, g=2)
    _set(c.k, (0, 1, 4, 0), INF)
    return c


def neg_inf_value(dt):
    c = _case(dt, window=(2, 0))
    _set(c.v, (0, 0, 6, 2), -INF)
    return c


def nan_in_padded_key(dt):  # torch made every output NaN
    c = _case(dt, mask=_padding(9, [6]))
    _set(c.k, (0, 0, 6), NAN)
    _set(c.v, (0, 0, 6), NAN)
    return c


def nan_in_hidden_key(dt):  # causal hides the last key from every row but the last
    c = _case(dt, n=70, m=70, d=16, causal=True)
    _set(c.v, (0, 0, 69), NAN)
    _set(c.k, (0, 0, 69, 0), INF)
    return c


def nan_outside_window(dt):
    c = _case(dt, n=70, m=70, d=16, window=(3, 3))
    _set(c.k, (0, 0, 40), NAN)
    return c


def overflowing_logits(dt):  # q, k ~ 1e19: +inf logits, NaN rows (flash/cpu_f32 gave error ~4)
    c = _case(dt, n=70, m=70, d=16)  # same-sign products: +inf in any summation order
    c.q.copy_(representable(c.q.abs() * 1e19, dt))
    c.k.copy_(representable(c.k.abs() * 1e19, dt))
    return c


def overflow_to_minus_inf(dt):  # a -inf logit by overflow: the key is absent from that row
    c = _case(dt, n=5, m=7, causal=True)
    c.q[0, :, 4] = 3e19
    c.k[0, 0, 2] = -3e19
    return c


def overflow_one_pair(dt):  # found by the differential test: bf16 SDPA turned this +inf row into 0
    c = _case(dt, h=1, n=1, m=64, d=1)
    c.q[:] = 3e19
    c.k[0, 0, 0] = 3e19
    return c


def nan_and_inf_bias(dt):
    gen = torch.Generator().manual_seed(3)
    bias = representable(torch.randn(1, 2, 9, 9, generator=gen), torch.float32)
    bias[0, 0, 3, 4], bias[0, 1, 5, 1], bias[0, 1, 6, :] = NAN, INF, -INF
    return _case(dt, mask=bias)


def nan_query_in_dead_row(dt):  # the mask allows row 2 nothing: dead (0) although q is NaN
    mask = torch.ones(1, 1, 9, 9, dtype=torch.bool)
    mask[..., 2, :] = False
    c = _case(dt, mask=mask)
    _set(c.q, (0, 0, 2), NAN)
    return c


def peaked_float_bias(dt):  # torch rounded biases to bf16 (2.2e-2 vs 2.2e-3)
    gen = torch.Generator().manual_seed(4)
    return _case(dt, spread=3.0, mask=representable(6 * torch.randn(1, 1, 9, 9, generator=gen), torch.float32))


def peaked_scores(dt):  # math rounded q·kᵀ to bf16 before its float32 softmax (1.4e-2)
    return _case(dt, spread=4.0, d=64, n=17, m=17, causal=True)


def alibi_long(dt):  # >= 64 queries: "auto" picked a kernel that dropped the slope gradient
    gen = torch.Generator().manual_seed(5)
    slopes = representable(torch.rand(2, generator=gen), torch.float32)
    return _case(dt, n=70, m=70, d=16, causal=True, alibi_slopes=slopes, slopes_grad=True)


def empty_queries(dt):
    return _case(dt, n=0)


def empty_batch(dt):
    return _case(dt, b=0)


def no_keys(dt):  # every row dead
    return _case(dt, m=0)


def head_dims(dt):
    return _case(dt, d=1, e=256, causal=True, n=5, m=3)


def decode_step(dt):  # one query against a cache, causal (every key allowed), key padding and ALiBi
    slopes = torch.tensor([0.5, 0.25], dtype=torch.float64)
    return _case(dt, n=1, m=9, causal=True, mask=_padding(9, [7, 8]), alibi_slopes=slopes)


def decode_step_window(dt):  # one query, causal with a window: the window still rules keys out
    return _case(dt, n=1, m=9, causal=True, window=(3, 0))


def _ids(*rows):  # (b, len) int64 segment ids
    return torch.tensor(rows, dtype=torch.int64)


def packed_segments(dt):  # three documents in a row of 70, causal: each attends only its own prefix
    seg = _ids([0] * 20 + [1] * 33 + [2] * 17, [0] * 70)
    return _case(dt, b=2, n=70, m=70, d=16, causal=True, segment_ids=(seg, seg))


def segments_and_padding(dt):  # segments AND key padding AND a window; the last segment is padding only
    seg = _ids([0, 0, 0, 1, 1, 1, 1, 2, 2])
    return _case(dt, mask=_padding(9, [7, 8]), window=(2, 1), segment_ids=(seg, seg))


def segments_cross(dt):  # cross-attention: 5 target tokens of 2 pairs vs 7 source tokens; segment 3 has no source
    q_seg, k_seg = _ids([0, 0, 1, 1, 3]), _ids([0, 0, 0, 1, 1, 1, 1])
    return _case(dt, n=5, m=7, segment_ids=(q_seg, k_seg))


def segments_unsorted(dt):  # ids need not be sorted: a block's id range overlaps without a shared id
    seg = _ids([0, 2, 0, 2, 1, 1, 0, 2, 0] * 8)
    return _case(dt, n=72, m=72, d=8, segment_ids=(seg, seg))


def segments_with_float_bias(dt):  # an additive bias is kept where segments agree, -inf elsewhere
    gen = torch.Generator().manual_seed(6)
    seg = _ids([0, 0, 0, 0, 1, 1, 1, 1, 1])
    bias = representable(torch.randn(1, 2, 9, 9, generator=gen), torch.float32)
    return _case(dt, mask=bias, segment_ids=(seg, seg))


def segments_nan_in_other_document(dt):  # a NaN key of document 1 reaches nothing of document 0
    seg = _ids([0] * 4 + [1] * 5)
    c = _case(dt, segment_ids=(seg, seg))
    _set(c.k, (0, 0, 6), NAN)
    return c


def _blocky_mask(b, h, n, m, gen):  # random, with whole 64 x 64 key blocks ruled out and dead rows
    mask = torch.rand(b, h, n, m, generator=gen) > 0.5
    mask[:, :, :64, 64:128] = False  # a block pair no query may attend: skipped by the kernel
    mask[:, :, 64:128, :] = False  # a query block that sees nothing: dead rows
    mask[:, :, 128:, :64] = True  # a block pair that sees everything: no per-element masking
    return mask


def general_mask_blocks(dt):  # a general boolean mask over several 64-blocks, per batch row, GQA, causal
    gen = torch.Generator().manual_seed(6)
    return _case(dt, b=2, h=2, g=1, n=150, m=150, d=16, causal=True, mask=_blocky_mask(2, 1, 150, 150, gen))


def float_bias_blocks(dt):  # a per-head additive bias with -inf blocks, broadcast over the batch
    gen = torch.Generator().manual_seed(7)
    allowed = _blocky_mask(1, 2, 140, 150, gen)
    bias = representable(torch.randn(1, 2, 140, 150, generator=gen), torch.float32).masked_fill(~allowed, -INF)
    return _case(dt, b=2, h=2, n=140, m=150, d=16, mask=bias)


CASES = [nan_key, nan_query_row, nan_value_entry, inf_key, neg_inf_value, nan_in_padded_key,
         nan_in_hidden_key, nan_outside_window, overflowing_logits, overflow_to_minus_inf, overflow_one_pair,
         nan_and_inf_bias, nan_query_in_dead_row, peaked_float_bias, peaked_scores, alibi_long, empty_queries, empty_batch,
         no_keys, head_dims, decode_step, decode_step_window, packed_segments, segments_and_padding, segments_cross, segments_unsorted,
         segments_with_float_bias, segments_nan_in_other_document, general_mask_blocks, float_bias_blocks]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("make", CASES, ids=lambda f: f.__name__)
def test_edge_case_on_every_backend(make, dtype, one_thread):
    if dtype not in (torch.float32, torch.bfloat16) and make in (overflowing_logits, overflow_to_minus_inf,
                                                                   overflow_one_pair):
        pytest.skip("3e19 overflows float16 itself; float64 logits do not overflow")
    case = make(dtype)
    case.name = make.__name__
    assert check_case(case), "no backend served the case"


def test_auto_gives_the_alibi_slope_gradient(one_thread):
    """With >= 64 queries "auto" prefers the kernels, which give slopes no gradient: it must pick one
    that does (the kernels decline slopes that require a gradient)."""
    case = alibi_long(torch.float32)
    slopes = case.alibi_slopes.float().requires_grad_()
    q, k, v = (t.float().requires_grad_() for t in (case.q, case.k, case.v))
    selfattn.attention(q, k, v, causal=True, alibi_slopes=slopes).sum().backward()
    ref = case.alibi_slopes.clone().requires_grad_()
    definition(case.q, case.k, case.v, causal=True, alibi_slopes=ref).sum().backward()
    assert slopes.grad is not None and torch.allclose(slopes.grad.double(), ref.grad, rtol=1e-4, atol=1e-6)
    choice = selfattn.explain_backend(q, k, v, causal=True, alibi_slopes=slopes)
    for kernel in ("flash", "cpu_f32"):
        assert "ALiBi slopes require a gradient" in choice.reasons[kernel]


def test_a_packed_row_gives_each_document_its_own_attention(one_thread):
    """Packing: each document of a packed row gets exactly the output and gradients it gets alone
    (float64, causal), by every backend that serves segment ids."""
    lengths = [5, 11, 3, 9]
    gen = torch.Generator().manual_seed(7)
    n = sum(lengths)
    q, k, v = (torch.randn(1, 2, n, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).view(1, n)  # (1, n)
    dout = torch.randn(1, 2, n, 8, generator=gen, dtype=torch.float64)
    served = backends_for(Case(q, k, v, dtype=torch.float64, causal=True, segment_ids=(seg, seg)))
    assert "math" in served and "torch" in served
    for backend in served:
        qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
        out = selfattn.attention(qs, ks, vs, causal=True, segment_ids=(seg, seg), backend=backend)
        out.backward(dout)
        start = 0
        for length in lengths:
            part = slice(start, start + length)
            qa, ka, va = (t[:, :, part].clone().requires_grad_() for t in (q, k, v))
            alone = definition(qa, ka, va, causal=True, score_dtype=torch.float64)
            alone.backward(dout[:, :, part])
            for got, want in ((out, alone), (qs.grad, qa.grad), (ks.grad, ka.grad), (vs.grad, va.grad)):
                torch.testing.assert_close(got[:, :, part], want, rtol=1e-12, atol=1e-12)
            start += length
