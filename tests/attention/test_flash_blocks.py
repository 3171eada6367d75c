"""Backend "flash" with small blocks: native segment ids and general masks, checked against the float64
definition (attention_definition.py, no shared code), and the block pairs it skips counted.

Mask convention: True = may attend. Segment ids: query i of row b may attend key j only when
q_seg[b, i] == k_seg[b, j].
"""

from __future__ import annotations

import importlib

import torch
from attention_definition import definition
from hypothesis import given, settings
from hypothesis import strategies as st
from references import rounding_tolerance

from selfattn.attention.flash import FlashConfig, flash_attention
from selfattn.attention.flash_plan import make_plan

fl = importlib.import_module("selfattn.attention.flash")  # selfattn.attention is the function


def _ids(gen, b, length, packed, top=3):
    x = torch.randint(0, top, (b, length), generator=gen)
    return x.sort(dim=1).values if packed else x  # (b, length)


def _block_mask(gen, b, h, n, m, rank):
    """A random boolean mask with whole 4 x 4 regions False (so some block pairs hold nothing)."""
    full = (b, h, n, m)[4 - rank:]
    shape = tuple(s if torch.rand(1, generator=gen).item() < 0.5 else 1 for s in full)
    cells = torch.rand(*shape, generator=gen) > 0.3
    if shape[-1] > 1 and len(shape) > 1 and shape[-2] > 1:
        coarse = torch.rand(*shape[:-2], (shape[-2] + 3) // 4, (shape[-1] + 3) // 4, generator=gen) > 0.5
        cells &= coarse.repeat_interleave(4, -2)[..., :shape[-2], :].repeat_interleave(4, -1)[..., :shape[-1]]
    return cells


cases = st.fixed_dictionaries({
    "b": st.integers(1, 2), "g": st.integers(1, 2), "r": st.sampled_from([1, 2]),
    "n": st.integers(1, 23), "m": st.integers(1, 23), "seed": st.integers(0, 2**16),
    "packed": st.booleans(), "segments": st.booleans(), "self": st.booleans(),
    "mask_rank": st.sampled_from([0, 1, 2, 3, 4]), "causal": st.booleans(),
    "window": st.sampled_from([None, (3, 1), (None, 0)]), "alibi": st.booleans(),
    "bq": st.sampled_from([2, 4, 7]), "bk": st.sampled_from([3, 4, 16]),
})


@settings(max_examples=40, deadline=None)
@given(c=cases)
def test_segments_and_masks_blockwise_match_the_definition(c):
    gen = torch.Generator().manual_seed(c["seed"])
    b, g, n, m = c["b"], c["g"], c["n"], c["m"]
    h = g * c["r"]
    if c["self"]:
        m = n
    q = torch.randn(b, h, n, 8, generator=gen, requires_grad=True)
    k = torch.randn(b, g, m, 8, generator=gen, requires_grad=True)
    v = torch.randn(b, g, m, 5, generator=gen, requires_grad=True)
    segs = None
    if c["segments"]:
        q_seg = _ids(gen, b, n, c["packed"])
        segs = (q_seg, q_seg if c["self"] else _ids(gen, b, m, c["packed"]))
    mask = _block_mask(gen, b, h, n, m, c["mask_rank"]) if c["mask_rank"] else None
    slopes = torch.rand(h, generator=gen) * 0.5 if c["alibi"] else None
    kw = dict(mask=mask, causal=c["causal"], window=c["window"], alibi_slopes=slopes, segment_ids=segs)
    out, _ = flash_attention(q, k, v, config=FlashConfig(c["bq"], c["bk"]), **kw)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = definition(q64, k64, v64, **kw) + 0 * (q64.sum() + k64.sum() + v64.sum())  # graph even if all dead
    tol = rounding_tolerance(torch.float32, m, 8)
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    go = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(out, (q, k, v), go.float())
    refs = torch.autograd.grad(ref, (q64, k64, v64), go)
    gtol = tol * (1 + n / m) * 4  # gradients sum over up to n*m products
    for name, a, r in zip("qkv", grads, refs):
        torch.testing.assert_close(a.double(), r, atol=gtol, rtol=gtol, msg=f"grad {name}")


def _count_tiles(fn):
    """How many score tiles fn's forward and backward form (flash.py calls _scores once per tile)."""
    calls = []
    orig = fl._scores

    def counting(*a, **kw):
        calls.append(1)
        return orig(*a, **kw)

    fl._scores = counting
    try:
        fn()
    finally:
        fl._scores = orig
    return len(calls)


def test_packed_segments_skip_the_blocks_of_other_documents():
    """4 documents of 64 tokens in a row of 256, blocks of 32: 2 x 2 live pairs per document of 8 x 8."""
    seg = torch.arange(4).repeat_interleave(64).view(1, 256)  # (1, 256), sorted
    q = torch.randn(1, 2, 256, 8, requires_grad=True)

    def run(segs):
        out, _ = flash_attention(q, q, q, segment_ids=segs, config=FlashConfig(32, 32))
        out.sum().backward()

    assert _count_tiles(lambda: run(None)) == 2 * 64  # forward + backward, every pair
    assert _count_tiles(lambda: run((seg, seg))) == 2 * 4 * 4
    # shuffled ids are correct but every block spans every id: nothing is skipped
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    assert _count_tiles(lambda: run((seg[:, perm], seg[:, perm]))) == 2 * 64


def test_a_block_diagonal_mask_skips_its_empty_blocks():
    n = 128
    idx = torch.arange(n)
    mask = (idx[:, None] // 32) == (idx[None, :] // 32)  # (n, n) block diagonal, True = may attend
    q = torch.randn(1, 1, n, 4, requires_grad=True)

    def run():
        out, _ = flash_attention(q, q, q, mask=mask, config=FlashConfig(16, 16))
        out.sum().backward()

    assert _count_tiles(run) == 2 * 4 * 2 * 2
    out, _ = flash_attention(q.double(), q.double(), q.double(), mask=mask, config=FlashConfig(16, 16))
    torch.testing.assert_close(out, definition(q.double(), q.double(), q.double(), mask=mask))
    # documents of 25 keys on a grid of 16: blocks straddle documents, the last key block is short
    q, d25 = q[:, :, :100].double(), (idx[:100, None] // 25) == (idx[None, :100] // 25)  # (100, 100)
    out, _ = flash_attention(q, q, q, mask=d25, config=FlashConfig(16, 16))
    torch.testing.assert_close(out, definition(q, q, q, mask=d25))


def test_live_table_is_the_overlap_of_segment_ranges_in_some_row():
    q_seg = torch.tensor([[0, 0, 1, 1], [5, 5, 5, 5]])  # (2, 4)
    k_seg = torch.tensor([[1, 1, 2, 2], [0, 0, 5, 6]])  # (2, 4)
    plan = make_plan(n=4, m=4, g=1, r=1, scale=1.0, causal=False, window=None, block_q=2, block_k=2,
                     mask=None, segment_ids=(q_seg, k_seg), slopes=None, dtype=torch.float32, skip=True)
    # q block 0 ids {0} / {5}; q block 1 {1} / {5}; k block 0 {1} / {0}; k block 1 {2} / {5, 6}
    assert plan.live == [[False, True], [True, True]]


def test_a_float_mask_with_minus_inf_is_served_blockwise():
    q = torch.randn(1, 2, 9, 4, dtype=torch.float64)
    bias = torch.randn(2, 9, 9, dtype=torch.float64)
    bias[0, :, 4:] = float("-inf")
    out, _ = flash_attention(q, q, q, mask=bias, config=FlashConfig(4, 4))
    torch.testing.assert_close(out, definition(q, q, q, mask=bias))
