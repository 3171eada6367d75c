"""Faster decoding of a trained model: a compiled decoder step and int8 dynamic quantization on CPU.

Legend: b batch (beams included), t target positions so far, m source length, c model dim, V vocabulary.

:func:`for_inference` returns a copy of an encoder–decoder or decoder-only model prepared for
:mod:`selfattn.generation` (greedy, sampling, beam search), the original left untouched:

* ``int8=True``: every ``nn.Linear`` becomes a dynamically quantized int8 linear (weights int8 per tensor,
  activations quantized per call; PyTorch's fbgemm/oneDNN kernels through ``torch.ao.quantization.
  quantize_dynamic``). CPU only. Embeddings stay float32; the tied output projection gets its own int8 copy.
* ``compile=True``: the decoder step (``decode`` / the LM forward with a cache) runs through
  ``torch.compile(dynamic=True)``: one graph for every batch size, source length and cache length (the
  forward has no host synchronisation, so nothing breaks the graph). The first call compiles (tens of seconds on
  a small CPU); later calls reuse the code.
* otherwise (eager) the one-position steps of an encoder–decoder or an LM run through :func:`~selfattn.generation.step.
  decode_step`: the same kernels without the general layers' per-call checks (``decode``'s logits bit for bit;
  at batch 1 beam 4 a step takes 1.75 ms instead of 2.1 on a 2-core Xeon).

The copy's attention uses backend ``attention_backend`` (default ``"torch"``, SDPA: it traces, and the lean step
calls it directly; as fast as ``"auto"`` for decoding, test2016 batch 32 beam 4: 126 vs 119–131 sentences/s). SDPA
returns no attention weights: ask the model itself, or pass ``attention_backend="auto"``, for those.

Always, the copy is laid out for decoding's few rows a step (the same values, so the same outputs up to float
rounding): each self-attention's q, k, v projections become one matmul (:meth:`~selfattn.layers.attention.
MultiHeadAttention.fuse_qkv`), and the output projection's (V, c) weight is stored column-major, which MKL's
few-row matmul reads faster (measured on a 2-core Xeon, 4 rows x 8000 x 256: 313 µs -> 210 µs; 128 rows: equal).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn

from ..layers.attention import MultiHeadAttention
from ..layers.blocks import DecoderLayer, EncoderLayer
from .step import Hooks, decode_step, step_plan, takes_step


class InferenceModel(nn.Module):
    """A model wrapped for decoding: ``encode`` as the model's, ``decode`` / ``forward`` compiled or not."""

    def __init__(self, model: nn.Module, *, compile: bool, compile_backend: str = "inductor"):
        super().__init__()
        self.model, self.cfg, self.compiled = model, model.cfg, compile
        step = model.decode if hasattr(model, "decode") else model.forward
        self._step = torch.compile(step, dynamic=True, backend=compile_backend) if compile else step
        # beam search folds the k beams of an input onto its one memory row (decode's beams=k); in a graph with
        # dynamic sizes that relation (b = k * inputs) specialises the sizes, recompiling for every batch
        # (measured: the recompile limit of 8 hit within 64 test2016 sentences), so a compiled step gets the memory
        # copied per beam instead
        self.shares_memory_across_beams = not compile
        # eager one-position steps (encoder–decoder or LM) skip the general layers' per-call work (generation.step)
        self.lean_steps = not compile and step_plan(model) is None
        self._hooks, self._lm = Hooks(model), not hasattr(model, "encode")

    def encode(self, src: Tensor, src_padding: Tensor | None = None):
        return self.model.encode(src, src_padding)

    def decode(self, tgt: Tensor, memory: Tensor, memory_mask: Tensor | None = None, *, cache=None, beams: int = 1,
               **kw):
        if not self._lm and self.lean_steps and takes_step(self._hooks, tgt, memory, cache, beams, kw):
            return decode_step(self.model, tgt, memory_mask, cache, beams), [(None, None)] * len(cache.layers)
        return self._step(tgt, memory, memory_mask, cache=cache, beams=beams, **kw)

    def forward(self, tokens: Tensor, padding: Tensor | None = None, *, cache=None, **kw):
        if self._lm and padding is None and self.lean_steps and takes_step(self._hooks, tokens, None, cache, 1, kw):
            return decode_step(self.model, tokens, None, cache, 1)
        return self._step(tokens, padding, cache=cache, **kw)

    def new_cache(self):
        return self.model.new_cache()


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantized to int8 (CPU inference)."""
    return _quantize_in_place(copy.deepcopy(model).eval())


def _quantize_in_place(model: nn.Module) -> nn.Module:
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        raise ValueError(f"int8 dynamic quantization runs on the CPU; expected a CPU model, got {sorted(devices)}")
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, still supported
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def _lay_out_for_decoding(model: nn.Module) -> None:
    """Fuse every self-attention's q, k, v projections and store the output projection column-major (module
    docstring), in place."""
    for mod in model.modules():
        if isinstance(mod, (EncoderLayer, DecoderLayer)):
            mod.self_attn.fuse_qkv()
    output = getattr(model, "output", None)
    if isinstance(output, nn.Linear):  # a tied weight is the embedding's too: its lookups read rows with a stride
        output.weight.data = output.weight.data.t().contiguous().t()  # (V, c), strides (1, V)


def for_inference(model: nn.Module, *, int8: bool = False, compile: bool = False,
                  attention_backend: str = "torch", compile_backend: str = "inductor") -> InferenceModel:
    """A decoding-ready copy of ``model`` (eval mode): int8 linears and/or a compiled step (module docstring).

    ``compile_backend``: torch.compile's backend ("inductor" generates code; "aot_eager" only traces, for tests).
    """
    if not hasattr(model, "new_cache"):
        raise ValueError(f"expected an encoder–decoder or decoder-only selfattn model, got {type(model).__name__}")
    prepared = copy.deepcopy(model).eval()
    _lay_out_for_decoding(prepared)
    if int8:
        prepared = _quantize_in_place(prepared)
    for mod in prepared.modules():
        if isinstance(mod, MultiHeadAttention):
            mod.backend = attention_backend
    return InferenceModel(prepared, compile=compile, compile_backend=compile_backend).eval()


__all__ = ["InferenceModel", "for_inference", "quantize_int8"]
