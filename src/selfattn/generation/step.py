"""One cached decoding step of an encoder–decoder or a decoder-only LM, without the general layers' per-call work.

Legend: b rows (beams included), r rows per source (beams), c model dim, h heads, d head dim, t cached target
positions, m source length, V vocabulary.

``model.decode`` runs a step through the general modules: each layer checks its inputs' shapes, each sublayer goes
through its residual wrapper, each of ~30 modules through ``nn.Module.__call__``, each attention call through
validation and dispatch. For the one new position of a beam or greedy step that bookkeeping is a third of the
step at batch 1 (a 2-core Xeon, the m30k model: 2.0 ms a step through ``decode``, 1.27 ms for the same kernels
called directly; the matmuls read the 19 MB of decoder weights each step). :func:`decode_step` computes the step
from the same weights with the same kernels in the same order — ``F.linear``/``F.layer_norm`` with the modules'
parameters (other module types are called as modules), the KV cache's ``append``, and the backend the model's
attention modules name, ``"torch"``, through :func:`~selfattn.attention.torch_backend.torch_attention` itself, so
with its guards (a NaN, an infinity or logits that may overflow go to the reference). What it skips is what the
general path re-checks every step. Tests compare its logits with ``decode``'s with ``torch.equal``.

:func:`step_plan` says once whether a model's steps can run here; :func:`takes_step` whether a call is such a step.
Anything else (several positions, an empty cache, target padding, weights asked for, gradients, tracing, a hook or
an inspection observer on a bypassed module, rows the cache does not hold) goes to ``model.decode``, which
validates it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module  # the global forward-hook dicts

from ..attention.guards import tracing
from ..attention.torch_backend import torch_attention
from ..layers.attention import MultiHeadAttention, _fold_beams, _unfold_beams
from ..layers.blocks import DecoderLayer, _Residual
from ..layers.feedforward import FeedForward
from ..layers.kv_cache import KVCache

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}  # FeedForward's activations applied here; others call the module


def step_plan(model: nn.Module) -> str | None:
    """None when :func:`decode_step` serves ``model``'s decoding steps (an encoder–decoder's or a decoder-only LM's),
    else why not (one line)."""
    decoder = getattr(model, "decoder", None)
    embed = getattr(model, "tgt_embed", getattr(model, "embed", None))  # an encoder–decoder's target side, an LM's
    if decoder is None or embed is None or not hasattr(model, "output"):
        return f"not an encoder–decoder or decoder-only LM ({type(model).__name__})"
    if getattr(decoder, "rel_bias", None) is not None:
        return "T5 relative position bias (the decoder computes it per step)"
    encdec = hasattr(model, "encode")
    for layer in decoder.layers:
        if not isinstance(layer, DecoderLayer) or (layer.cross_attn is None) == encdec:
            return "a decoder layer with cross-attention in an LM, or without it in an encoder–decoder"
        for attn in (layer.self_attn, layer.cross_attn):
            if attn is not None and (attn.backend != "torch" or attn.kernel != "softmax" or attn.window is not None
                                     or attn.alibi_slopes is not None):
                return (f"attention backend {attn.backend!r}, kernel {attn.kernel!r}, window {attn.window}, ALiBi "
                        f"{attn.alibi_slopes is not None}: the step serves plain softmax attention on backend 'torch'")
    return None


class Hooks:
    """What would make a step skip a module's hook: every forward (pre-)hook dict of a model's modules and its
    attention modules' observers (selfattn.inspect), listed once (the dicts themselves stay current)."""

    def __init__(self, model: nn.Module):
        mods = list(model.modules())
        self.dicts = [d for mod in mods for d in (mod._forward_hooks, mod._forward_pre_hooks)]
        self.attention = [mod for mod in mods if isinstance(mod, MultiHeadAttention)]

    def any(self) -> bool:
        return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks or any(self.dicts)
                    or any(mod.observer is not None for mod in self.attention))


def takes_step(hooks: Hooks, tgt: Tensor, memory: Tensor | None, cache: object, beams: object, kw: dict) -> bool:
    """Whether ``decode(tgt, memory, cache=cache, beams=beams, **kw)`` (an LM's ``forward(tgt, cache=cache, **kw)``:
    ``memory`` None, ``beams`` 1) of the model ``hooks`` lists is a step :func:`decode_step` serves."""
    if kw.get("tgt_padding") is not None or kw.get("need_weights") or kw.get("segment_ids") is not None:
        return False
    layers = getattr(cache, "layers", None)
    if not layers or type(beams) is not int or beams < 1 or torch.is_grad_enabled() or tracing():
        return False
    first, b = layers[0].self_attn.k, tgt.shape[0]
    if tgt.dim() != 2 or tgt.shape[1] != 1 or first is None or first.shape[0] != b \
            or torch.is_autocast_enabled(tgt.device.type):
        return False
    if memory is not None and (memory.dim() != 3 or memory.shape[0] * beams != b):
        return False
    return not hooks.any()


def decode_step(model: nn.Module, tgt: Tensor, memory_mask: Tensor | None, cache, beams: int) -> Tensor:
    """Logits (b, 1, V) of the next position, as ``model.decode(tgt, memory, memory_mask, cache=cache,
    beams=beams)[0]`` (an LM: ``model(tgt, cache=cache)``): tgt (b, 1) the new tokens, cache filled by the earlier
    steps (:func:`takes_step`)."""
    offset = cache.offset
    embed = model.tgt_embed if hasattr(model, "tgt_embed") else model.embed
    x = embed(tgt, offset=offset)  # (b, 1, c)
    for layer, lc in zip(model.decoder.layers, cache.layers):
        x = _residual(layer.sub_self, x, _self_attend(layer.self_attn, _pre(layer.sub_self, x), lc.self_attn, offset))
        if layer.cross_attn is not None and layer.sub_cross is not None:  # an encoder–decoder (step_plan)
            x = _residual(layer.sub_cross, x, _cross_attend(layer.cross_attn, _pre(layer.sub_cross, x),
                                                            lc.cross_attn, memory_mask, beams))
        x = _residual(layer.sub_ff, x, _feed_forward(layer.ff, _pre(layer.sub_ff, x)))
    cache.offset += 1
    if model.decoder.norm is not None:
        x = _norm(model.decoder.norm, x)
    return _linear(model.output, x)  # (b, 1, V)


def _pre(sub: _Residual, x: Tensor) -> Tensor:
    """The sublayer's input: normed first (pre-norm) or as it is (post-norm), as _Residual.forward."""
    return _norm(sub.norm, x) if sub.norm_first else x


def _residual(sub: _Residual, x: Tensor, y: Tensor) -> Tensor:
    """_Residual.forward in evaluation (its dropout off): x + y, normed after for post-norm."""
    return x + y if sub.norm_first else _norm(sub.norm, x + y)


def _linear(mod: nn.Module, x: Tensor) -> Tensor:
    """mod(x); a plain nn.Linear without its module call (an int8 or other linear is called). Parameters are read
    from ``_parameters`` (what ``mod.weight`` reads, without nn.Module.__getattr__'s fallback: ~130 reads a step)."""
    if type(mod) is not nn.Linear:
        return mod(x)  # type: ignore[no-any-return]
    p = mod._parameters
    return F.linear(x, p["weight"], p["bias"])


def _norm(mod: nn.Module, x: Tensor) -> Tensor:
    """mod(x); a plain nn.LayerNorm without its module call."""
    if type(mod) is not nn.LayerNorm:
        return mod(x)  # type: ignore[no-any-return]
    p = mod._parameters
    return F.layer_norm(x, mod.normalized_shape, p["weight"], p["bias"], mod.eps)


def _feed_forward(ff: FeedForward, x: Tensor) -> Tensor:
    """ff(x) in evaluation (its dropout off)."""
    act = _ACTIVATIONS.get(ff.activation)
    return ff(x) if act is None else _linear(ff.linear2, act(_linear(ff.linear1, x)))


def _self_attend(attn: MultiHeadAttention, h: Tensor, kv: KVCache, offset: int) -> Tensor:
    """Causal self-attention of h (b, 1, c) to the cached positions and itself; appends its keys/values. One query
    after every cached key: bottom-right causal lets it attend them all (the call the registry would make)."""
    b, n, c = h.shape
    q, k, v = attn._project_self(h)  # (b, h, 1, d), (b, g, 1, d) twice; their max |x| remembered
    if attn.rope is not None:
        q, k = attn.rope(q, offset, None), attn.rope(k, offset, None)
    k, v = kv.append(k, v)  # (b, g, t+1, d)
    out = torch_attention(q, k, v)[0]  # (b, h, 1, d)
    return _linear(attn.out_proj, out.transpose(1, 2).reshape(b, n, c))  # (b, 1, c)


def _cross_attend(attn: MultiHeadAttention, h: Tensor, kv: KVCache, mask: Tensor | None, beams: int) -> Tensor:
    """Attention of h (b, 1, c) to the cached encoder keys/values, which hold one row per source (b / r)."""
    b, n, c = h.shape
    if kv.k is None or kv.v is None:
        raise ValueError("a decoding step needs the cross-attention keys and values of the first step")
    q = attn._split(_linear(attn.q_proj, h), attn.num_heads)  # (b, h, 1, d)
    if beams > 1:  # (b / r, h, r, d): the queries of one source together, as the general path folds them
        q, mask = _fold_beams(q, mask, beams, kv.k.shape[2])
    out = torch_attention(q, kv.k, kv.v, mask=mask)[0]
    if beams > 1:
        out = _unfold_beams(out, beams)  # (b, h, 1, d)
    return _linear(attn.out_proj, out.transpose(1, 2).reshape(b, n, c))  # (b, 1, c)


__all__ = ["Hooks", "decode_step", "step_plan", "takes_step"]
