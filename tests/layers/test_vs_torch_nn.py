"""selfattn layers equal PyTorch's own nn modules (outputs and gradients) with copied weights.

PyTorch's boolean masks in nn.MultiheadAttention / nn.Transformer mean True = *masked out*;
selfattn's mean True = may attend. The tests convert with ``to_torch_mask``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import selfattn
from selfattn.interop.torch_nn import (
    copy_decoder_layer_from_torch,
    copy_encoder_layer_from_torch,
    copy_mha_from_torch,
    copy_transformer_from_torch,
    to_torch_mask,
)
from selfattn.models import Decoder, Encoder, ModelConfig, key_mask

D, H, FF = 32, 4, 64
# float64 end to end: any difference is rounding, bounded by a few hundred ulps over these depths.
TOL = dict(rtol=1e-10, atol=1e-10)


def torch_causal(n: int) -> torch.Tensor:
    """PyTorch's boolean causal mask: True above the diagonal = masked out."""
    return torch.ones(n, n, dtype=torch.bool).triu(1)


def padding(b=2, n=6, cut=2):
    pad = torch.ones(b, n, dtype=torch.bool)  # True = real token
    pad[-1, -cut:] = False
    return pad


def grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters()]


def backward_with(out: torch.Tensor, seed: int = 0) -> None:
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * w).sum().backward()


def test_mha_equals_nn_multihead_attention():
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(D, H, batch_first=True, dtype=torch.float64)
    ours = selfattn.MultiHeadAttention(D, H).double()
    copy_mha_from_torch(ours, theirs)
    x = torch.randn(2, 6, D, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(2, 9, D, dtype=torch.float64)
    pad = padding(n=9, cut=3)
    x2 = x.detach().clone().requires_grad_(True)

    out, w = ours(x, ctx, mask=key_mask(pad), need_weights=True)
    ref, ref_w = theirs(x2, ctx, ctx, key_padding_mask=to_torch_mask(pad), need_weights=True,
                        average_attn_weights=False)
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(w, ref_w, **TOL)
    backward_with(out)
    backward_with(ref)
    torch.testing.assert_close(x.grad, x2.grad, **TOL)
    torch.testing.assert_close(ours.out_proj.weight.grad, theirs.out_proj.weight.grad, **TOL)
    dq, dk, dv = theirs.in_proj_weight.grad.split(D, 0)
    torch.testing.assert_close(ours.q_proj.weight.grad, dq, **TOL)
    torch.testing.assert_close(ours.k_proj.weight.grad, dk, **TOL)
    torch.testing.assert_close(ours.v_proj.weight.grad, dv, **TOL)


def test_mha_causal_equals_nn_with_float_mask():
    torch.manual_seed(1)
    theirs = nn.MultiheadAttention(D, H, batch_first=True, dtype=torch.float64).eval()
    ours = selfattn.MultiHeadAttention(D, H).double().eval()
    copy_mha_from_torch(ours, theirs)
    x = torch.randn(3, 7, D, dtype=torch.float64)
    causal = nn.Transformer.generate_square_subsequent_mask(7, dtype=torch.float64)
    ref, _ = theirs(x, x, x, attn_mask=causal, need_weights=False)
    out, _ = ours(x, causal=True)
    torch.testing.assert_close(out, ref, **TOL)


def test_mha_score_bias_and_mask_equal_nn_with_per_head_float_mask():
    # score_bias (T5's relative bias) is added to the scores per head, a boolean mask still forbids;
    # torch takes the same bias as a (b*h, n, m) float attn_mask beside its key_padding_mask
    torch.manual_seed(2)
    theirs = nn.MultiheadAttention(D, H, batch_first=True, dtype=torch.float64).eval()
    ours = selfattn.MultiHeadAttention(D, H).double().eval()
    copy_mha_from_torch(ours, theirs)
    x = torch.randn(2, 7, D, dtype=torch.float64)
    score_bias = torch.randn(1, H, 7, 7, dtype=torch.float64)
    pad = padding(n=7, cut=2)
    ref, _ = theirs(x, x, x, attn_mask=score_bias.expand(2, H, 7, 7).reshape(2 * H, 7, 7),  # (b*h, n, m)
                    key_padding_mask=to_torch_mask(pad), need_weights=False)
    out, _ = ours(x, mask=key_mask(pad), score_bias=score_bias)
    torch.testing.assert_close(out, ref, **TOL)
    unbiased, _ = ours(x, mask=key_mask(pad))
    assert not torch.allclose(out, unbiased)  # the bias does reach the scores


def test_cross_attention_ignores_the_self_attention_only_options():
    # causal, window and ALiBi describe positions within one sequence: cross-attention (context given)
    # drops them, so a layer built with all three still equals plain nn.MultiheadAttention across sequences
    torch.manual_seed(3)
    theirs = nn.MultiheadAttention(D, H, batch_first=True, dtype=torch.float64).eval()
    ours = selfattn.MultiHeadAttention(D, H, alibi=True, window=(1, 0)).double().eval()
    copy_mha_from_torch(ours, theirs)
    x, ctx = torch.randn(2, 5, D, dtype=torch.float64), torch.randn(2, 8, D, dtype=torch.float64)
    ref, _ = theirs(x, ctx, ctx, need_weights=False)
    out, _ = ours(x, ctx, causal=True)
    torch.testing.assert_close(out, ref, **TOL)
    self_out, _ = ours(x, causal=True)  # self-attention does use them: differs from unmasked nn
    assert not torch.allclose(self_out, theirs(x, x, x, need_weights=False)[0])


def _cfg(**kw) -> ModelConfig:
    return ModelConfig(d_model=D, num_heads=H, d_ff=FF, num_encoder_layers=2, num_decoder_layers=2,
                       dropout=0.0, vocab_size=11, **kw)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_equals_nn(norm_first, activation):
    torch.manual_seed(2)
    theirs = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, activation=activation, batch_first=True,
                                        norm_first=norm_first, dtype=torch.float64)
    spec = _cfg(norm_first=norm_first, activation=activation).layer_spec(decoder=False)
    ours = selfattn.EncoderLayer(spec).double()
    copy_encoder_layer_from_torch(ours, theirs)
    x = torch.randn(2, 6, D, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    pad = padding()
    out, _ = ours(x, mask=key_mask(pad))
    ref = theirs(x2, src_key_padding_mask=to_torch_mask(pad))
    keep = pad[..., None]  # PyTorch's fast path may zero padded rows; compare real tokens
    torch.testing.assert_close(out * keep, ref * keep, **TOL)
    backward_with(out * keep)
    backward_with(ref * keep)
    torch.testing.assert_close(x.grad, x2.grad, **TOL)
    torch.testing.assert_close(ours.ff.linear1.weight.grad, theirs.linear1.weight.grad, **TOL)
    torch.testing.assert_close(ours.sub_attn.norm.weight.grad, theirs.norm1.weight.grad, **TOL)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_equals_nn(norm_first):
    torch.manual_seed(3)
    theirs = nn.TransformerDecoderLayer(D, H, FF, dropout=0.0, batch_first=True, norm_first=norm_first,
                                        dtype=torch.float64)
    ours = selfattn.DecoderLayer(_cfg(norm_first=norm_first).layer_spec(decoder=True)).double()
    copy_decoder_layer_from_torch(ours, theirs)
    x = torch.randn(2, 5, D, dtype=torch.float64, requires_grad=True)
    mem = torch.randn(2, 8, D, dtype=torch.float64, requires_grad=True)
    x2, mem2 = (t.detach().clone().requires_grad_(True) for t in (x, mem))
    mpad = padding(n=8, cut=3)
    out, _ = ours(x, mem, memory_mask=key_mask(mpad))
    ref = theirs(x2, mem2, tgt_mask=torch_causal(5),
                 memory_key_padding_mask=to_torch_mask(mpad))
    torch.testing.assert_close(out, ref, **TOL)
    backward_with(out)
    backward_with(ref)
    torch.testing.assert_close(x.grad, x2.grad, **TOL)
    torch.testing.assert_close(mem.grad, mem2.grad, **TOL)
    torch.testing.assert_close(ours.cross_attn.out_proj.weight.grad, theirs.multihead_attn.out_proj.weight.grad, **TOL)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_decoder_stacks_equal_nn_transformer(norm_first):
    torch.manual_seed(4)
    theirs = nn.Transformer(D, H, 2, 2, FF, dropout=0.0, batch_first=True, norm_first=norm_first,
                            dtype=torch.float64)
    cfg = _cfg(norm_first=norm_first, final_norm=True)  # nn.Transformer always has final norms
    enc, dec = Encoder(cfg).double(), Decoder(cfg).double()
    copy_transformer_from_torch(enc, dec, theirs)
    src = torch.randn(2, 8, D, dtype=torch.float64, requires_grad=True)
    tgt = torch.randn(2, 5, D, dtype=torch.float64, requires_grad=True)
    src2, tgt2 = (t.detach().clone().requires_grad_(True) for t in (src, tgt))
    spad, tpad = padding(n=8, cut=3), padding(n=5, cut=1)

    memory, _ = enc(src, key_mask(spad))
    out, _ = dec(tgt, memory, self_mask=key_mask(tpad), memory_mask=key_mask(spad))
    ref = theirs(src2, tgt2, tgt_mask=torch_causal(5),
                 src_key_padding_mask=to_torch_mask(spad), tgt_key_padding_mask=to_torch_mask(tpad),
                 memory_key_padding_mask=to_torch_mask(spad))
    keep = tpad[..., None]
    torch.testing.assert_close(out * keep, ref * keep, **TOL)
    backward_with(out * keep)
    backward_with(ref * keep)
    torch.testing.assert_close(src.grad, src2.grad, **TOL)
    torch.testing.assert_close(tgt.grad, tgt2.grad, **TOL)
    ours_g = dec.layers[1].ff.linear2.weight.grad
    torch.testing.assert_close(ours_g, theirs.decoder.layers[1].linear2.weight.grad, **TOL)


@pytest.mark.parametrize("backend", ["math", "torch"])
def test_float32_backends_match_nn_transformer(backend):
    """The same comparison in float32 through each backend; bound from float32 eps and depth."""
    torch.manual_seed(5)
    theirs = nn.Transformer(D, H, 2, 2, FF, dropout=0.0, batch_first=True).eval()
    cfg = _cfg(final_norm=True, attention_backend=backend)
    enc, dec = Encoder(cfg).eval(), Decoder(cfg).eval()
    copy_transformer_from_torch(enc, dec, theirs)
    src, tgt = torch.randn(2, 8, D), torch.randn(2, 5, D)
    with torch.no_grad():
        memory, _ = enc(src)
        out, _ = dec(tgt, memory)
        ref = theirs(src, tgt, tgt_mask=torch_causal(5))
    # 4 layers of O(1)-scaled values with LayerNorm: a few hundred float32 ulps at most
    tol = 256 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


def test_copy_rejects_mismatched_shapes():
    theirs = nn.MultiheadAttention(D, H, batch_first=True)
    with pytest.raises(ValueError, match="head counts differ"):
        copy_mha_from_torch(selfattn.MultiHeadAttention(D, 2), theirs)
    with pytest.raises(ValueError, match="shape mismatch"):
        copy_mha_from_torch(selfattn.MultiHeadAttention(2 * D, H), theirs)


def test_grouped_query_attention_equals_mha_with_repeated_kv_weights():
    """GQA with g kv heads is MHA whose k/v projections repeat each kv head for its query group."""
    torch.manual_seed(6)
    h, g = 4, 2
    ours = selfattn.MultiHeadAttention(D, h, g).double().eval()
    theirs = nn.MultiheadAttention(D, h, batch_first=True, dtype=torch.float64).eval()
    d = D // h
    with torch.no_grad():
        def repeat_heads(w):  # (g*d, ...) -> (h*d, ...): kv head i serves query heads i*h/g ...
            return w.view(g, d, *w.shape[1:]).repeat_interleave(h // g, 0).reshape(h * d, *w.shape[1:])
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, repeat_heads(ours.k_proj.weight),
                                               repeat_heads(ours.v_proj.weight)]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, repeat_heads(ours.k_proj.bias),
                                             repeat_heads(ours.v_proj.bias)]))
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(2, 7, D, dtype=torch.float64)
    out, _ = ours(x, causal=True)
    ref, _ = theirs(x, x, x, attn_mask=torch_causal(7), need_weights=False)
    torch.testing.assert_close(out, ref, **TOL)
