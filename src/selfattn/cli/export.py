"""``selfattn export``: write a trained run in the Hugging Face, CTranslate2, ONNX or torch.export format."""

from __future__ import annotations

import argparse

HELP = """Export a run directory of `selfattn train` for other engines.

  --format hf           a transformers directory: MarianMTModel (post-norm encoder-decoder), Pegasus (pre-norm
                        encoder-decoder), GPT2LMHeadModel (LM) or BertModel (encoder), plus tokenizer.json for
                        runs with a SentencePiece vocabulary; load it with AutoModel*/AutoTokenizer.from_pretrained
  --format ctranslate2  a CTranslate2 model for translation runs (ctranslate2.Translator); --quantization int8
                        stores int8 weights
  --format onnx         one .onnx file per graph (encoder / decoder step with its KV cache / LM step), run by
                        onnxruntime alone; attention through SDPA, recorded in the metadata
  --format torch        the same graphs as torch.export programs (.pt2), dynamic batch and lengths

examples:
  selfattn export runs/m30k --format hf --out exported/m30k-hf
  selfattn export runs/m30k --format ctranslate2 --quantization int8 --out exported/m30k-ct2-int8

Configs a format cannot express are refused with the field named (e.g. RMSNorm, RoPE, grouped-query heads)."""


def run(args) -> int:
    from ..export import export_run

    out, note = export_run(args.run, args.format, args.out, quantization=args.quantization, step=args.step,
                           average_last=args.average_last, force=args.force)
    print(f"wrote {args.format} export of {args.run} to {out} ({note})")
    return 0


def register(sub) -> None:
    from ..export import FORMATS, QUANTIZATIONS

    p = sub.add_parser("export", help="export a trained run (Hugging Face, CTranslate2, ONNX, torch.export)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run directory written by `selfattn train`")
    p.add_argument("--format", required=True, choices=FORMATS, help="target format")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty)")
    p.add_argument("--quantization", choices=QUANTIZATIONS, help="ctranslate2 weight type (e.g. int8)")
    p.add_argument("--step", type=int, help="export this checkpoint step (default: the latest)")
    p.add_argument("--average-last", type=int, default=0, metavar="K", help="average the last K checkpoints")
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=run)
