"""torch.export of the three model kinds, with dynamic batch and sequence length.

Legend: L decoder layers, b batch, n positions, m source positions, t target positions already decoded,
g key/value heads, d head dim, c model dim, V vocabulary. Padding inputs are (b, length) booleans,
**True = real token** (they become key masks, True = may attend).

Graphs (``ExportedModel.programs``), by model kind:

* encoder: ``"encoder"``: tokens (b, n), padding (b, n) -> hidden (b, n, c)
* decoder-only LM: ``"lm"``: tokens (b, n), padding (b, n) -> logits (b, n, V), and
  ``"lm_step"``: tokens (b, 1), self_k, self_v (L, b, g, t, d) -> logits (b, 1, V), self_k, self_v (L, b, g, t+1, d)
* encoder–decoder: ``"encoder"``: src (b, m), src_padding (b, m) -> memory (b, m, c), cross_k, cross_v
  (L, b, g, m, d), and ``"decoder_step"``: tokens (b, 1), src_padding (b, m), self_k, self_v (L, b, g, t, d),
  cross_k, cross_v -> logits (b, 1, V), self_k, self_v (L, b, g, t+1, d)

The key/value cache is explicit: a step takes the caches and returns them one position longer, so a
runtime (onnxruntime, a C++ ``torch.export`` loader) decodes without selfattn. A first step passes t = 0.

An export needs an attention path the target can express: the fused C kernels are opaque to ONNX and
the ``auto`` choice depends on the machine, so the export sets one backend by name on every attention layer
(``attention_backend``, default ``"torch"`` = SDPA) for the duration of the trace and records it in
``ExportedModel.attention_backend`` and ``ExportedModel.note``.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram

from ..attention import BACKENDS
from ..io import atomic_write_bytes
from ..layers.attention import MultiHeadAttention
from ..layers.blocks import DecoderLayerCache
from ..layers.kv_cache import KVCache
from ..models.architectures import Transformer, TransformerEncoderModel, TransformerLM
from ..models.transformer import DecoderCache


@contextlib.contextmanager
def using_backend(model: nn.Module, name: str):
    """Set every attention layer of ``model`` to backend ``name`` inside the block, then restore."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; expected one of {sorted(BACKENDS)}")
    layers = [mod for mod in model.modules() if isinstance(mod, MultiHeadAttention)]
    before = [mod.backend for mod in layers]
    for mod in layers:
        mod.backend = name
    try:
        yield
    finally:
        for mod, old in zip(layers, before):
            mod.backend = old


def _stack_cache(caches: list[KVCache]) -> tuple[Tensor, Tensor]:
    return torch.stack([c.k for c in caches]), torch.stack([c.v for c in caches])  # (L, b, g, t, d) each


class EncoderGraph(nn.Module):
    """Encoder-only model: tokens (b, n), padding (b, n) -> hidden (b, n, c)."""

    def __init__(self, model: TransformerEncoderModel):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, padding: Tensor) -> Tensor:
        return self.model(tokens, padding)


class LMGraph(nn.Module):
    """Decoder-only LM, full sequence: tokens (b, n), padding (b, n) -> logits (b, n, V)."""

    def __init__(self, model: TransformerLM):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, padding: Tensor) -> Tensor:
        return self.model(tokens, padding)


def _cache(self_k: Tensor, self_v: Tensor, cross_k: Tensor | None = None,
           cross_v: Tensor | None = None) -> DecoderCache:
    """A DecoderCache over explicit stacked caches; offset = t, the past length."""
    layers = [DecoderLayerCache(KVCache(self_k[i], self_v[i]),
                                KVCache(cross_k[i], cross_v[i]) if cross_k is not None else KVCache())
              for i in range(self_k.shape[0])]
    return DecoderCache(layers, offset=self_k.shape[3])


class LMStepGraph(nn.Module):
    """One cached LM step: tokens (b, 1), self_k, self_v (L, b, g, t, d) -> logits (b, 1, V), caches (t+1)."""

    def __init__(self, model: TransformerLM):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, self_k: Tensor, self_v: Tensor):
        cache = _cache(self_k, self_v)
        logits = self.model(tokens, cache=cache)  # (b, 1, V)
        return (logits, *_stack_cache([c.self_attn for c in cache.layers]))


class Seq2SeqEncoderGraph(nn.Module):
    """src (b, m), src_padding (b, m) -> memory (b, m, c), cross_k, cross_v (L, b, g, m, d)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, src: Tensor, src_padding: Tensor):
        memory, _, _ = self.model.encode(src, src_padding)  # (b, m, c)
        kv = [layer.cross_attn.project_kv(memory) for layer in self.model.decoder.layers]
        return memory, torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv])  # (L, b, g, m, d)


class Seq2SeqStepGraph(nn.Module):
    """One cached decoder step: tokens (b, 1), src_padding (b, m), self caches (L, b, g, t, d), cross caches
    (L, b, g, m, d) -> logits (b, 1, V), self caches (L, b, g, t+1, d)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, src_padding: Tensor, self_k: Tensor, self_v: Tensor,
                cross_k: Tensor, cross_v: Tensor):
        cache = _cache(self_k, self_v, cross_k, cross_v)
        mask = src_padding[:, None, None, :]  # (b, 1, 1, m) True = may attend
        logits, _ = self.model.decode(tokens, None, mask, cache=cache)  # (b, 1, V)
        return (logits, *_stack_cache([c.self_attn for c in cache.layers]))


@dataclass
class GraphSpec:
    """One graph to export: the wrapper module, example inputs and their dynamic dimensions."""

    module: nn.Module
    args: tuple[Tensor, ...]
    dynamic_shapes: tuple
    input_names: list[str]
    output_names: list[str]


def _ids(b: int, n: int, vocab: int, pad_id: int | None) -> tuple[Tensor, Tensor]:
    """Example ids (b, n) avoiding pad, and a padding mask (b, n) with the last row padded."""
    low = 0 if pad_id is None else pad_id + 1
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(low, max(vocab, low + 1), (b, n), generator=gen)  # (b, n)
    padding = torch.ones(b, n, dtype=torch.bool)
    padding[-1, n // 2:] = False
    if pad_id is not None:
        ids[~padding] = pad_id
    return ids, padding


def _empty_cache(model: nn.Module, b: int, t: int) -> tuple[Tensor, Tensor]:
    cfg, p = model.cfg, next(model.parameters())
    shape = (cfg.num_decoder_layers, b, cfg.num_kv_heads or cfg.num_heads, t, cfg.head_dim)
    return torch.zeros(shape, dtype=p.dtype), torch.zeros(shape, dtype=p.dtype)  # (L, b, g, t, d)


def graph_specs(model: nn.Module, *, max_batch: int = 1024) -> dict[str, GraphSpec]:
    """The graphs of ``model`` with example inputs (batch 2, lengths >= 2 so no size is specialised)."""
    _check_model(model)
    cfg = model.cfg
    batch = Dim("batch", min=1, max=max_batch)
    seq = Dim("seq", min=1, max=cfg.max_len)
    src = Dim("src", min=1, max=cfg.max_len)
    past = Dim("past", min=0, max=cfg.max_len - 1)
    cache_dims = {1: batch, 3: past}
    b, n = 2, 5
    ids, padding = _ids(b, n, cfg.vocab_size, cfg.pad_id)
    step = ids[:, :1]  # (b, 1)
    self_k, self_v = _empty_cache(model, b, 3)
    cache_names, cache_out = ["self_k", "self_v"], ["new_self_k", "new_self_v"]
    if isinstance(model, TransformerEncoderModel):
        return {"encoder": GraphSpec(EncoderGraph(model), (ids, padding), ({0: batch, 1: seq}, {0: batch, 1: seq}),
                                     ["tokens", "padding"], ["hidden"])}
    if isinstance(model, TransformerLM):
        return {
            "lm": GraphSpec(LMGraph(model), (ids, padding), ({0: batch, 1: seq}, {0: batch, 1: seq}),
                            ["tokens", "padding"], ["logits"]),
            "lm_step": GraphSpec(LMStepGraph(model), (step, self_k, self_v), ({0: batch}, cache_dims, cache_dims),
                                 ["tokens", *cache_names], ["logits", *cache_out]),
        }
    # a Transformer (encoder–decoder): _check_model allowed nothing else
    with torch.no_grad():
        _, cross_k, cross_v = Seq2SeqEncoderGraph(model).eval()(ids, padding)
    cross_dims = {1: batch, 3: src}
    return {
        "encoder": GraphSpec(Seq2SeqEncoderGraph(model), (ids, padding), ({0: batch, 1: src}, {0: batch, 1: src}),
                             ["src", "src_padding"], ["memory", "cross_k", "cross_v"]),
        "decoder_step": GraphSpec(
            Seq2SeqStepGraph(model), (step, padding, self_k, self_v, cross_k, cross_v),
            ({0: batch}, {0: batch, 1: src}, cache_dims, cache_dims, cross_dims, cross_dims),
            ["tokens", "src_padding", *cache_names, "cross_k", "cross_v"], ["logits", *cache_out]),
    }


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, (Transformer, TransformerEncoderModel, TransformerLM)):
        raise ValueError(f"expected a selfattn Transformer, TransformerEncoderModel or TransformerLM, "
                         f"got {type(model).__name__}")


def backend_note(name: str, target: str) -> str:
    return (f"{target} export: attention backend {name!r} ({BACKENDS[name].description}) set on every "
            "attention layer while tracing; the model's own setting is restored afterwards")


@dataclass
class ExportedModel:
    """The exported graphs of one model, and the attention path they were traced with."""

    programs: dict[str, ExportedProgram]
    attention_backend: str
    note: str
    input_names: dict[str, list[str]] = field(default_factory=dict)
    output_names: dict[str, list[str]] = field(default_factory=dict)

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``<name>.pt2`` per graph (``torch.export.load`` reads them back), each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, program in self.programs.items():
            buf = io.BytesIO()
            torch.export.save(program, buf)
            atomic_write_bytes(directory / f"{name}.pt2", buf.getvalue())
            paths.append(directory / f"{name}.pt2")
        return paths


def export_program(model: nn.Module, *, attention_backend: str = "torch",
                   max_batch: int = 1024) -> ExportedModel:
    """``torch.export`` every graph of ``model`` (see the module docstring) in eval mode, with dynamic
    batch (up to ``max_batch``) and lengths (up to ``cfg.max_len``), traced with one attention backend."""
    _check_model(model)
    was_training = model.training
    model.eval()
    programs, inputs, outputs = {}, {}, {}
    try:
        with using_backend(model, attention_backend), torch.no_grad():
            for name, spec in graph_specs(model, max_batch=max_batch).items():
                # strict (Dynamo) tracing: it sees through the attention spec's lru_cache of structural masks,
                # which the non-strict tracer cannot (it would hash symbolic sizes)
                programs[name] = torch.export.export(spec.module, spec.args, dynamic_shapes=spec.dynamic_shapes,
                                                     strict=True)
                inputs[name], outputs[name] = spec.input_names, spec.output_names
    finally:
        model.train(was_training)
    return ExportedModel(programs, attention_backend, backend_note(attention_backend, "torch.export"),
                         inputs, outputs)


__all__ = ["ExportedModel", "export_program", "graph_specs", "using_backend"]
