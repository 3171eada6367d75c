"""Export trained models to other runtimes: ``torch.export`` programs and ONNX files.

See :mod:`selfattn.export.program` for the graphs (encoder, LM, encoder–decoder with an explicit KV cache).
"""

from .onnx import OnnxExport, export_onnx
from .program import ExportedModel, export_program, using_backend

__all__ = ["ExportedModel", "OnnxExport", "export_onnx", "export_program", "using_backend"]
