"""``selfattn backtranslate``: synthetic source sentences for monolingual target text, with a reverse model."""

from __future__ import annotations

import argparse
import sys
import time

HELP = """Back-translate (Sennrich et al. 2016): translate a monolingual file with a *reverse* translation run
(trained TGT -> SRC on the same real pairs) into synthetic SRC sentences, written line-aligned with the input;
then train the forward model on real + synthetic pairs with `--synthetic SYNTH.SRC MONO.TGT`.

examples:
  selfattn train --task translate --data DATA --src en --tgt de --run-dir runs/en-de      # the reverse model
  selfattn backtranslate --checkpoint runs/en-de --input mono.en --output synth.de           # beam 4
  selfattn backtranslate --checkpoint runs/en-de --input mono.en --output synth.de --method sample
  selfattn train --task translate --data DATA --synthetic synth.de mono.en --run-dir runs/de-en-bt

Methods: beam (Sennrich et al. 2016), sample (unrestricted sampling) and topk (top-10 sampling; both
Edunov et al. 2018). Synthetic sources are tagged with <bt> in training (Caswell et al. 2019) unless
`--no-synthetic-tag`; tags never appear in translations."""


def run(args) -> int:
    from ..data.parallel import read_lines
    from ..io import atomic_write_text
    from ..translation.backtranslate import BacktranslateConfig, backtranslate
    from ..translation.translate import load_translation_run

    cfg = BacktranslateConfig(method=args.method, beam=args.beam, top_k=args.top_k, temperature=args.temperature,
                              seed=args.seed)
    model, sp, config = load_translation_run(args.checkpoint, step=args.step, average_last=args.average_last)
    lines = read_lines(args.input)
    t0 = time.perf_counter()
    out = backtranslate(model, sp, lines, cfg)
    atomic_write_text(args.output, "".join(line + "\n" for line in out))
    task = config.get("task", {})
    print(f"back-translated {sum(1 for x in lines if x.strip())} of {len(lines)} lines "
          f"({task.get('src')}->{task.get('tgt')}, {args.method}) in {time.perf_counter() - t0:.1f} s -> "
          f"{args.output}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("backtranslate", help="synthetic sources for monolingual text with a reverse run",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="the reverse (TGT -> SRC) translation run")
    p.add_argument("--input", required=True, metavar="FILE", help="monolingual text in the run's source language")
    p.add_argument("--output", required=True, metavar="FILE", help="where the synthetic sentences go (atomic)")
    p.add_argument("--method", default="beam", choices=("beam", "sample", "topk"), help="default beam")
    p.add_argument("--beam", type=int, default=4, help="beam size for --method beam (default 4)")
    p.add_argument("--top-k", type=int, default=10, help="k for --method topk (default 10)")
    p.add_argument("--temperature", type=float, default=1.0, help="for the sampling methods (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--step", type=int, help="use this checkpoint step (default: the latest)")
    p.add_argument("--average-last", type=int, default=0, metavar="K", help="average the last K checkpoints")
    p.set_defaults(func=run)
