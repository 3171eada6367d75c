"""Copy weights from PyTorch's ``torch.nn`` Transformer modules into selfattn's layers.

Used by the tests that show selfattn equals ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``,
``nn.TransformerDecoderLayer`` and ``nn.Transformer`` when both hold the same weights.

Mind the masks: selfattn's boolean masks mean **True = may attend**; PyTorch's ``key_padding_mask``
and boolean ``attn_mask`` of ``nn.MultiheadAttention`` mean True = *may not* attend. Use
:func:`to_torch_mask` to convert.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers.attention import MultiHeadAttention
from ..layers.blocks import DecoderLayer, EncoderLayer


def to_torch_mask(mask: Tensor) -> Tensor:
    """selfattn boolean mask (True = may attend) -> nn.MultiheadAttention's (True = masked out)."""
    if mask.dtype != torch.bool:
        raise ValueError(f"expected a boolean mask, got dtype {mask.dtype}")
    return ~mask


@torch.no_grad()
def _copy(dst: Tensor, src: Tensor, name: str) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"{name}: shape mismatch, selfattn {tuple(dst.shape)} vs torch {tuple(src.shape)}")
    dst.copy_(src)


def copy_linear(dst: nn.Linear, src: nn.Linear, name: str = "linear") -> None:
    _copy(dst.weight, src.weight, f"{name}.weight")
    if (dst.bias is None) != (src.bias is None):
        raise ValueError(f"{name}: one side has a bias and the other has not")
    if dst.bias is not None:
        _copy(dst.bias, src.bias, f"{name}.bias")


def copy_norm(dst: nn.Module, src: nn.LayerNorm, name: str = "norm") -> None:
    _copy(dst.weight, src.weight, f"{name}.weight")
    if getattr(src, "bias", None) is not None:
        _copy(dst.bias, src.bias, f"{name}.bias")


@torch.no_grad()
def copy_mha_from_torch(dst: MultiHeadAttention, src: nn.MultiheadAttention) -> None:
    """nn.MultiheadAttention (packed in_proj or separate q/k/v) -> MultiHeadAttention."""
    if dst.num_kv_heads != dst.num_heads or src.num_heads != dst.num_heads:
        raise ValueError(
            f"head counts differ: selfattn {dst.num_heads} q / {dst.num_kv_heads} kv vs torch {src.num_heads}"
        )
    c = src.embed_dim
    if src.in_proj_weight is not None:
        wq, wk, wv = src.in_proj_weight.split(c, dim=0)  # 3 x (c, c)
    else:
        wq, wk, wv = src.q_proj_weight, src.k_proj_weight, src.v_proj_weight
    _copy(dst.q_proj.weight, wq, "q_proj.weight")
    _copy(dst.k_proj.weight, wk, "k_proj.weight")
    _copy(dst.v_proj.weight, wv, "v_proj.weight")
    if src.in_proj_bias is not None:
        bq, bk, bv = src.in_proj_bias.split(c, dim=0)
        _copy(dst.q_proj.bias, bq, "q_proj.bias")
        _copy(dst.k_proj.bias, bk, "k_proj.bias")
        _copy(dst.v_proj.bias, bv, "v_proj.bias")
    copy_linear(dst.out_proj, src.out_proj, "out_proj")


def copy_encoder_layer_from_torch(dst: EncoderLayer, src: nn.TransformerEncoderLayer) -> None:
    copy_mha_from_torch(dst.self_attn, src.self_attn)
    copy_linear(dst.ff.linear1, src.linear1, "linear1")
    copy_linear(dst.ff.linear2, src.linear2, "linear2")
    copy_norm(dst.sub_attn.norm, src.norm1, "norm1")
    copy_norm(dst.sub_ff.norm, src.norm2, "norm2")


def copy_decoder_layer_from_torch(dst: DecoderLayer, src: nn.TransformerDecoderLayer) -> None:
    copy_mha_from_torch(dst.self_attn, src.self_attn)
    copy_mha_from_torch(dst.cross_attn, src.multihead_attn)
    copy_linear(dst.ff.linear1, src.linear1, "linear1")
    copy_linear(dst.ff.linear2, src.linear2, "linear2")
    copy_norm(dst.sub_self.norm, src.norm1, "norm1")
    copy_norm(dst.sub_cross.norm, src.norm2, "norm2")
    copy_norm(dst.sub_ff.norm, src.norm3, "norm3")


def copy_transformer_from_torch(encoder: nn.Module, decoder: nn.Module, src: nn.Transformer) -> None:
    """nn.Transformer -> selfattn Encoder and Decoder stacks (``final_norm=True`` on the selfattn side)."""
    for name, ours, theirs in (("encoder", encoder, src.encoder), ("decoder", decoder, src.decoder)):
        if len(ours.layers) != len(theirs.layers):
            raise ValueError(f"{name}: {len(ours.layers)} selfattn layers vs {len(theirs.layers)} torch layers")
        if (ours.norm is None) != (theirs.norm is None):
            raise ValueError(f"{name}: final norm present on one side only (set final_norm=True)")
        if ours.norm is not None:
            copy_norm(ours.norm, theirs.norm, f"{name}.norm")
    for dst, s in zip(encoder.layers, src.encoder.layers):
        copy_encoder_layer_from_torch(dst, s)
    for dst, s in zip(decoder.layers, src.decoder.layers):
        copy_decoder_layer_from_torch(dst, s)
