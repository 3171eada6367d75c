"""ONNX export: the graphs of :mod:`selfattn.export.program`, one ``.onnx`` file each, for onnxruntime.

Legend and graphs as in :mod:`selfattn.export.program` (L layers, b batch, n / m / t lengths, g kv heads,
d head dim, V vocabulary); padding inputs are booleans, **True = real token**. Batch and lengths stay
dynamic in the files. The key/value cache of a decoder step is explicit (inputs ``self_k``, ``self_v``
(L, b, g, t, d) and outputs ``new_self_k``, ``new_self_v`` one position longer), so greedy or beam decoding
runs with onnxruntime alone — no selfattn, no torch.

ONNX has no operator for the fused C kernels, so the trace uses an attention backend it can express:
``"torch"`` (SDPA, the default, exported by PyTorch's own ONNX translation) or ``"math"`` (explicit
matmul/softmax). The choice is written into every file's metadata (``selfattn.attention_backend``) and
returned in the note.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_write_bytes
from .program import ExportedModel, backend_note, export_program

ONNX_BACKENDS = ("torch", "math")  # attention paths the ONNX translation can express


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    paths: dict[str, Path]  # graph name -> .onnx file
    attention_backend: str
    note: str


def export_onnx(model: nn.Module, directory: str | Path, *, attention_backend: str = "torch",
                max_batch: int = 1024, opset: int | None = None,
                programs: ExportedModel | None = None) -> OnnxExport:
    """Write ``<graph>.onnx`` for every graph of ``model`` into ``directory`` (each file atomically).

    ``attention_backend``: ``"torch"`` (SDPA) or ``"math"``; see the module docstring.
    ``opset``: ONNX opset version; None = the exporter's default.
    ``programs``: reuse :func:`export_program`'s result for this model instead of tracing again.
    """
    if programs is not None:
        attention_backend = programs.attention_backend
    if attention_backend not in ONNX_BACKENDS:
        raise ValueError(f"ONNX export needs an attention backend ONNX can express, one of {ONNX_BACKENDS}; "
                         f"got {attention_backend!r}")
    exported = programs or export_program(model, attention_backend=attention_backend, max_batch=max_batch)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    note = backend_note(attention_backend, "ONNX")
    cfg = getattr(model, "cfg", None)
    paths = {}
    for name, program in exported.programs.items():
        kwargs = {} if opset is None else {"opset_version": opset}
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=exported.input_names[name],
                                         output_names=exported.output_names[name], optimize=True, **kwargs)
        proto = onnx_program.model_proto
        meta = {"selfattn.attention_backend": attention_backend, "selfattn.graph": name,
                "selfattn.note": note}
        if cfg is not None:
            meta["selfattn.config"] = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        paths[name] = directory / f"{name}.onnx"
        atomic_write_bytes(paths[name], proto.SerializeToString())
    return OnnxExport(paths, attention_backend, note)


__all__ = ["ONNX_BACKENDS", "OnnxExport", "export_onnx"]
