"""selfattn.layers.dropout: the cheap mask's statistics, exact scaling, gradients, reproducibility, errors."""

from __future__ import annotations

import math

import pytest
import torch

from selfattn.layers.dropout import (
    Dropout,
    drop_probability,
    dropout,
    keep_mask,
    residual_dropout,
)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drop_rate_within_binomial_bounds(p):
    n = 1 << 20
    torch.manual_seed(0)
    kept = keep_mask((n,), p).double().mean().item()
    pe = drop_probability(p)
    assert abs(pe - p) <= 2**-17
    sigma = math.sqrt(pe * (1 - pe) / n)  # a binomial proportion's standard deviation
    assert abs((1 - kept) - pe) < 6 * sigma


def test_mask_bits_are_independent_across_neighbours():
    """Four elements share one 64-bit draw: neighbours must still be uncorrelated."""
    torch.manual_seed(1)
    m = keep_mask((1 << 20,), 0.5).double()
    for lag in (1, 2, 3, 4):
        corr = torch.corrcoef(torch.stack([m[:-lag], m[lag:]]))[0, 1].item()
        assert abs(corr) < 6 / math.sqrt(m.numel())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_values_and_gradient_are_mask_times_scale(dtype):
    x = torch.randn(3, 5, 64, dtype=dtype, requires_grad=True)
    torch.manual_seed(2)
    y = dropout(x, 0.25)
    torch.manual_seed(2)
    keep = keep_mask(x.shape, 0.25)
    scale = 1 / (1 - drop_probability(0.25))
    torch.testing.assert_close(y, x * keep.to(dtype) * scale, rtol=0, atol=0)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, keep.to(dtype) * scale, rtol=0, atol=0)


def test_expectation_is_exactly_the_input():
    torch.manual_seed(3)
    x = torch.full((1 << 20,), 2.0, dtype=torch.float64)
    mean = dropout(x, 0.1).mean().item()
    pe = drop_probability(0.1)
    sigma = 2.0 * math.sqrt(pe / (1 - pe) / x.numel())  # std of the mean of x·keep/(1-p')
    assert abs(mean - 2.0) < 6 * sigma


def test_residual_dropout_equals_add_of_dropout_and_grads():
    x = torch.randn(2, 7, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 7, 16, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(4)
    out = residual_dropout(x, y, 0.2)
    torch.manual_seed(4)
    ref = x + dropout(y, 0.2)
    # torch.add(x, y', alpha=s) may fuse the multiply-add: at most one rounding of the product differs
    tol = 2 * torch.finfo(torch.float64).eps * ref.abs().max().item()
    torch.testing.assert_close(out, ref, rtol=0, atol=tol)
    g = torch.randn_like(out)
    gx, gy = torch.autograd.grad(out, (x, y), g)
    rx, ry = torch.autograd.grad(ref, (x, y), g)
    torch.testing.assert_close(gx, rx, rtol=0, atol=0)
    torch.testing.assert_close(gy, ry, rtol=0, atol=0)
    # mixed dtypes (autocast: an fp32 residual stream, a bf16 sublayer output) promote like x + y
    assert residual_dropout(x.float(), y.bfloat16(), 0.2).dtype == torch.float32


def test_eval_identity_reproducible_and_errors():
    x = torch.randn(4, 8)
    layer = Dropout(0.5).eval()
    assert layer(x) is x and residual_dropout(x, x, 0.5, training=False).equal(2 * x)
    layer.train()
    torch.manual_seed(5)
    a = layer(x)
    torch.manual_seed(5)
    assert layer(x).equal(a) and not a.equal(x)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\), got"):
            Dropout(bad)
    with pytest.raises(ValueError, match="must have one shape"):
        residual_dropout(x, x[:, :4], 0.1)
