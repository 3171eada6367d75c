"""Differential test: hypothesis draws attention calls, every backend is compared with the definition.

Each drawn call (shapes with Nq in {0, 1, odd, > one 64-row kernel block}, Nk = 0, D from 1 to 256,
MHA/GQA/MQA, every legal broadcast shape of a boolean or floating mask, causal with Nq > Nk and
Nq < Nk, windows, ALiBi with and without a slope gradient, segment ids (packed non-decreasing or
arbitrary, self- or cross-attention, int32/int64), float32/bfloat16/float16/float64, and
planted NaN/inf values or overflowing logits) runs through every backend that serves it; output and
gradients are compared with a float64 evaluation of the definition (``attention_definition.py``)
under per-dtype bounds (``attention_cases.py``).

Profiles (registered in tests/conftest.py): the default one is bounded for ``make test``;
``pytest tests/attention/test_differential.py --hypothesis-profile=long`` is for before a release.
"""

from __future__ import annotations

import torch
from attention_cases import Case, check_case, representable
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
LENGTHS = [0, 1, 2, 3, 5, 8, 13, 64, 67]
HEAD_DIMS = [1, 2, 3, 8, 16, 33, 64, 128, 256]
MAX_ROWS = 96  # b * h * n: the definition loops over rows (bounded so one call checks in < 1 s)


@st.composite
def mask_shapes(draw, b, h, n, m):
    """Every legal broadcast shape of (b, h, n, m): rank 1..4, each kept dim either full or 1."""
    rank = draw(st.integers(1, 4))
    full = (b, h, n, m)[4 - rank:]
    return tuple(s if draw(st.booleans()) else 1 for s in full)


@st.composite
def segment_ids(draw, b, n, m, gen):
    """(q_seg (b, n), k_seg (b, m)): packed rows (non-decreasing ids) or arbitrary ones, shared by queries
    and keys (self-attention, n == m) or drawn apart (cross-attention); ids in 0..2 so some rows match no key."""
    dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    packed = draw(st.booleans())

    def ids(length):
        x = torch.randint(0, 3, (b, length), generator=gen)
        return (x.sort(dim=1).values if packed else x).to(dtype)

    q_seg = ids(n)
    same = n == m and draw(st.booleans())
    return q_seg, (q_seg if same else ids(m))


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    n, m = draw(st.sampled_from(LENGTHS)), draw(st.sampled_from(LENGTHS))
    g = draw(st.sampled_from([1, 2]))
    h = g * draw(st.sampled_from([1, 2, 3]))  # MHA (h = g), GQA, MQA (g = 1)
    b = draw(st.integers(0 if n * m else 1, 2))
    while b * h * n > MAX_ROWS and h > g:
        h -= g
    if b * h * n > MAX_ROWS:
        b = 1
    d = draw(st.sampled_from(HEAD_DIMS))
    e = d if draw(st.booleans()) else draw(st.sampled_from(HEAD_DIMS))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    spread = draw(st.sampled_from([0.5, 1.0, 3.0]))  # 3: peaked softmax rows
    q = representable(spread * torch.randn(b, h, n, d, generator=gen), dtype)
    k = representable(torch.randn(b, g, m, d, generator=gen), dtype)
    v = representable(torch.randn(b, g, m, e, generator=gen), dtype)
    case = Case(q, k, v, dtype=dtype, causal=draw(st.booleans()))
    if draw(st.booleans()):
        side = st.one_of(st.none(), st.integers(0, 4))
        case.window = (draw(side), draw(side))
    kind = draw(st.sampled_from(["none", "bool", "float", "key_padding"]))
    if kind == "key_padding":  # the one mask shape the kernels serve: (b|1, 1, 1, m)
        case.mask = torch.rand(draw(st.sampled_from([1, b])), 1, 1, m, generator=gen) < 0.8
    elif kind != "none":
        shape = draw(mask_shapes(b, h, n, m))
        keep = torch.rand(shape, generator=gen) < 0.75
        if kind == "bool":
            case.mask = keep
        else:
            bias = representable(torch.randn(shape, generator=gen), torch.float32)
            case.mask = bias.masked_fill(~keep, float("-inf"))
    if draw(st.booleans()):
        case.segment_ids = draw(segment_ids(b, n, m, gen))
    if draw(st.booleans()):
        case.alibi_slopes = representable(torch.rand(h, generator=gen) * 0.5, torch.float32)
        case.slopes_grad = draw(st.booleans())
    _plant(draw, case, dtype)
    return case


def _plant(draw, case: Case, dtype) -> None:
    """Up to two NaN/inf values in q, k, v or a float mask, or a pair of overflowing logits."""
    for _ in range(draw(st.integers(0, 2))):
        target = draw(st.sampled_from(["q", "k", "v", "mask", "overflow"]))
        value = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        if target == "mask":
            if case.mask is None or case.mask.dtype == torch.bool or case.mask.numel() == 0:
                continue
            flat = case.mask.view(-1)
            flat[draw(st.integers(0, flat.numel() - 1))] = value
        elif target == "overflow":  # q_i, k_j ~ 3e19: q·k leaves float32's range (+inf or -inf)
            if dtype not in (torch.float32, torch.bfloat16) or case.q.numel() == 0 or case.k.numel() == 0:
                continue
            qi = draw(st.integers(0, case.q.shape[2] - 1))
            kj = draw(st.integers(0, case.k.shape[2] - 1))
            case.q[:, :, qi] = 3e19
            case.k[:, :, kj] = draw(st.sampled_from([3e19, -3e19]))
        else:
            t = getattr(case, target)
            if t.numel() == 0:
                continue
            flat = t.view(-1)
            flat[draw(st.integers(0, flat.numel() - 1))] = value


@given(case=cases())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # one_thread: same for every example
def test_every_backend_matches_the_definition(case, one_thread):
    note(case.describe())
    check_case(case)
