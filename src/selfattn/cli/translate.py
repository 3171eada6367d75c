"""``selfattn translate``: translate sentences from stdin (one per line) with a trained translation run."""

from __future__ import annotations

import argparse
import sys

HELP = """Translate stdin to stdout, one sentence per line, with a run directory written by
`selfattn train --task translate` (the run holds the model and its SentencePiece vocabulary).

examples:
  echo "Ein Mann fährt Fahrrad." | selfattn translate --checkpoint runs/m30k
  selfattn translate --checkpoint runs/m30k --beam 5 --average-last 3 < test.de > test.hyp.en
  selfattn translate --checkpoint runs/m30k --beam 4 --nbest 4 < in.de     # "i ||| text ||| score" lines
  selfattn translate --checkpoint runs/m30k --int8 < test.de > test.hyp.en   # int8 linear layers (CPU)

Sentences are translated in length-sorted batches (--batch-tokens source pieces each) and written in
input order. Scores are log-probabilities divided by the GNMT length penalty ((5+L)/6)^alpha."""


def run(args) -> int:
    from ..translation import DecodeConfig, load_translation_run
    from ..translation.translate import translate_ids
    from ._device import resolve_device
    from ._inputs import cut, read_lines
    from ._translation import STOP_RULES, prepare_model

    cfg = DecodeConfig(beam=args.beam, nbest=args.nbest, alpha=args.alpha, batch_tokens=args.batch_tokens,
                       early_stopping=STOP_RULES[args.early_stopping])
    device = resolve_device(args.device)
    model, sp, _ = load_translation_run(args.checkpoint, step=args.step, average_last=args.average_last,
                                        device=device)
    lines = [line.strip() for line in read_lines(args.input)]
    model = prepare_model(model, args)
    todo = [i for i, line in enumerate(lines) if line]  # empty lines translate to empty lines
    ids = cut("translate", sp.encode_batch([lines[i] for i in todo]) if todo else [],
              min(model.cfg.max_len, cfg.max_src_len), "sentence")
    results = [[(sp.decode(o), score) for o, score in hyps] for hyps in translate_ids(model, ids, sp, cfg)]
    by_line = dict(zip(todo, results))
    out = sys.stdout
    for i in range(len(lines)):
        hyps = by_line.get(i, [("", 0.0)])
        if args.nbest == 1:
            out.write(hyps[0][0] + "\n")
        else:
            for text, score in hyps:
                out.write(f"{i} ||| {text} ||| {score:.4f}\n")
    out.flush()
    return 0


def register(sub) -> None:
    p = sub.add_parser("translate", help="translate stdin with a trained translation run (beam search, n-best)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="run directory of `selfattn train --task translate`")
    p.add_argument("--beam", type=int, default=4, help="beam size; 1 = greedy (default 4, the paper's)")
    p.add_argument("--nbest", type=int, default=1, help="hypotheses per sentence (<= beam; default 1)")
    p.add_argument("--alpha", type=float, default=0.6, help="GNMT length penalty exponent (default 0.6)")
    p.add_argument("--average-last", type=int, default=0, metavar="K", help="average the last K checkpoints")
    p.add_argument("--step", type=int, help="use this checkpoint step (default: the latest)")
    p.add_argument("--batch-tokens", type=int, default=2048, help="source pieces per batch (default 2048)")
    p.add_argument("--input", metavar="FILE", help="read FILE instead of stdin")
    from ._device import add_device_argument

    add_device_argument(p)
    from ._translation import add_speed_arguments, add_stop_argument

    add_stop_argument(p)
    add_speed_arguments(p)
    p.set_defaults(func=run)
