"""MultiHeadAttention.fuse_qkv: one projection for q, k and v (an inference copy's layout) gives the unfused module's
outputs — float64, full and cached, grouped-query heads, RoPE, no biases — serves self-attention only, and its one
guard pass over the fused projection routes non-finite and overflowing inputs to the reference as the three passes
of the unfused module do.

Tolerance: the fused matmul sums the same products (K = 16 per output) in another blocking order, so float64 results
differ by at most ~K * eps * max|x| * max|w| ~ 1e-14 here; 1e-12 leaves room and still fails on any wrong row.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from selfattn.layers.attention import MultiHeadAttention
from selfattn.layers.kv_cache import KVCache

TOL = dict(rtol=1e-12, atol=1e-12)
CASES = [dict(num_heads=4), dict(num_heads=4, num_kv_heads=2), dict(num_heads=4, num_kv_heads=1, rope=True),
         dict(num_heads=2, bias=False)]


def _pair(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, **kw).to(dtype).eval()
    fused = copy.deepcopy(mha)
    fused.fuse_qkv()
    return mha, fused


@pytest.mark.parametrize("kw", CASES, ids=str)
def test_fused_equals_unfused_full_and_cached(kw):
    mha, fused = _pair(**kw)
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    mask = torch.rand(3, 1, 1, 5) > 0.3
    mask[..., 0] = True
    with torch.no_grad():
        for causal in (False, True):
            torch.testing.assert_close(fused(x, mask=mask, causal=causal)[0], mha(x, mask=mask, causal=causal)[0], **TOL)
        plain, packed = KVCache(), KVCache()
        for i in range(5):  # a decoding loop, one position a step
            want = mha(x[:, i : i + 1], causal=True, cache=plain)[0]
            torch.testing.assert_close(fused(x[:, i : i + 1], causal=True, cache=packed)[0], want, **TOL)
    x.requires_grad_(True)  # and with gradients (no cache, no remembered bounds)
    torch.testing.assert_close(fused(x, causal=True)[0], mha(x, causal=True)[0], **TOL)


def test_fused_state_dict_and_refusals():
    mha, fused = _pair(num_heads=4)
    assert {k for k in fused.state_dict() if "proj" in k} == {"qkv_proj.weight", "qkv_proj.bias", "out_proj.weight",
                                                               "out_proj.bias"}
    w = fused.qkv_proj.weight  # ((h + 2g) d, c): q's rows, then k's, then v's
    assert torch.equal(w, torch.cat([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight]))
    fused.fuse_qkv()  # a second call changes nothing
    assert fused.qkv_proj.weight is w
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="serves self-attention only"):
        fused(x, x)
    with pytest.raises(ValueError, match="kv_dim=8"):
        MultiHeadAttention(16, 4, kv_dim=8).fuse_qkv()


def test_one_guard_pass_finds_a_nan_in_a_decoding_step():
    mha, fused = _pair(num_heads=4)
    plain, packed = KVCache(), KVCache()
    with torch.no_grad():
        steps = [torch.randn(2, 1, 16, dtype=torch.float64) for _ in range(4)]
        steps[2][1, 0, 3] = math.nan  # row 1's third position: its q, k, v are NaN from then on in its cache
        for x in steps:
            want, got = mha(x, causal=True, cache=plain)[0], fused(x, causal=True, cache=packed)[0]
            assert torch.equal(torch.isnan(got), torch.isnan(want))
            torch.testing.assert_close(got[0], want[0], **TOL)  # row 0 never sees row 1's NaN
    assert torch.isnan(got[1]).all()


def test_one_guard_pass_finds_a_nan_behind_a_mask():
    """A NaN at a masked-out key position: the rule keeps the other queries finite; SDPA, had the bound missed the
    NaN, would spread it (NaN * 0 weight) to every query of the row."""
    mha, fused = _pair(num_heads=4)
    x = torch.randn(2, 4, 16, dtype=torch.float64)
    x[0, 3, 5] = math.nan
    mask = torch.ones(2, 1, 1, 4, dtype=torch.bool)
    mask[0, ..., 3] = False  # row 0 may not attend its NaN position
    with torch.no_grad():
        want, got = mha(x, mask=mask)[0], fused(x, mask=mask)[0]
    assert torch.isfinite(want[0, :3]).all() and torch.isnan(want[0, 3]).all()
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), **TOL)


def test_one_guard_pass_bounds_overflowing_logits():
    """float32 inputs so large that q·k overflows (D * max|q| * max|k| >= 2^127): the fused bound must send the call
    to the reference as the unfused measurement does; SDPA unguarded gives other numbers there."""
    mha, fused = _pair(dtype=torch.float32, num_heads=4)
    x = torch.randn(2, 3, 16) * 1e20
    with torch.no_grad():
        want, got = mha(x)[0], fused(x)[0]
        q, k, v = (mha._split(p(x), 4) for p in (mha.q_proj, mha.k_proj, mha.v_proj))  # (2, 4, 3, 4) each
        unguarded = mha.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 3, 16))
    assert not torch.allclose(unguarded, want, rtol=1e-4, equal_nan=True)  # the case this test is about
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0.0, equal_nan=True)  # float32: other matmul blocking
