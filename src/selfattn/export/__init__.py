"""Export trained selfattn models to the formats other engines load.

* ``hf`` (:mod:`.hf`): a ``transformers`` directory — MarianMT / Pegasus (encoder–decoder), GPT-2 (LM),
  BERT (encoder) — with the run's SentencePiece tokenizer as ``tokenizer.json``.
* ``ctranslate2`` (:mod:`.ctranslate2`): a CTranslate2 model directory for translation runs, optionally
  quantized (``int8``).
* ``onnx`` (:mod:`.onnx`): one ``.onnx`` file per graph (encoder; LM and LM step; encoder and decoder step with
  an explicit KV cache) that onnxruntime runs alone, attention through SDPA (recorded in the metadata).
* ``torch`` (:mod:`.program`): the same graphs as ``torch.export`` programs (``.pt2``), dynamic batch and lengths.

``export_run(run_dir, fmt, out)`` reads a run directory written by ``selfattn train``; the format modules
take an in-memory model and config. Output directories are written beside ``out`` and renamed into place.
"""

from __future__ import annotations

from pathlib import Path

from .onnx import OnnxExport, export_onnx
from .program import ExportedModel, export_program, using_backend

FORMATS = ("hf", "ctranslate2", "onnx", "torch")
# CTranslate2 weight types (its converter's names); int8 = int8 weights with per-row scales
QUANTIZATIONS = ("int8", "int8_float32", "int16", "float16", "bfloat16", "float32")


def load_for_export(run_dir: str | Path, *, step: int | None = None, average_last: int = 0):
    """(model in eval mode, its ModelConfig, Subword or None) of a run directory."""
    from ..data.subword import Subword
    from ..training.run import load_run

    model, _, config = load_run(run_dir, step=step, average_last=average_last)
    task = config.get("task", {})
    subword = None
    if "subword" in task:
        subword = Subword.from_base64(task["subword"], task.get("subword_type", "unigram"))
    return model, model.cfg, subword


def export_run(run_dir: str | Path, fmt: str, out: str | Path, *, quantization: str | None = None,
               step: int | None = None, average_last: int = 0, force: bool = False) -> tuple[Path, str]:
    """Export the run's latest (or ``step``, or last-k averaged) weights to ``out`` in format ``fmt``.
    Returns (the output directory, a note on what was chosen for the target — e.g. the attention path)."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, got {fmt!r}")
    if quantization is not None and fmt != "ctranslate2":
        raise ValueError(f"--quantization applies to the ctranslate2 format only, got format {fmt!r}")
    from .files import check_out_dir

    check_out_dir(out, force=force)  # fail before loading anything
    model, cfg, subword = load_for_export(run_dir, step=step, average_last=average_last)
    if fmt == "hf":
        from .hf import save_hf

        return save_hf(model, cfg, out, subword, force=force), f"{cfg.kind} model as a transformers directory"
    if fmt in ("onnx", "torch"):  # the graphs pick SDPA attention, which both formats express (the note says so)
        Path(out).mkdir(parents=True, exist_ok=True)
        return Path(out), export_onnx(model, out).note if fmt == "onnx" else _save_program(model, out)
    from .ctranslate2 import save_ctranslate2

    if cfg.kind != "encoder-decoder" or subword is None:
        raise ValueError(f"CTranslate2 export needs a translation run (encoder–decoder with a SentencePiece "
                         f"vocabulary), got a {cfg.kind!r} model{'' if subword else ' without one'}")
    path = save_ctranslate2(model, cfg, subword, out, quantization=quantization, force=force)
    return path, f"translation model, {quantization or 'float32'} weights"


def _save_program(model, out: str | Path) -> str:
    exported = export_program(model)
    exported.save(out)
    return exported.note


__all__ = ["FORMATS", "QUANTIZATIONS", "ExportedModel", "OnnxExport", "export_onnx", "export_program", "export_run",
           "load_for_export", "using_backend"]
