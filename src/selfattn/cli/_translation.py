"""The translation options of ``selfattn train --task translate`` and ``selfattn evaluate`` on a translation run.

A private helper of :mod:`selfattn.cli.train` and :mod:`selfattn.cli.evaluate` (argparse and printing stay in
``cli/``; the translation package itself knows nothing of the command line).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..data.augment import AugmentConfig
from ..data.parallel import ReadConfig, multi30k, read_parallel
from ..io import atomic_write_bytes
from ..translation.metrics import corpus_scores
from ..translation.task import TranslateConfig, TranslationTask, find_split
from ..translation.translate import DecodeConfig, load_translation_run, translate


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("translation (--task translate; --data DIR holds SPLIT.SRC / SPLIT.TGT files, "
                             "splits train, val, test or test2016; without --data Multi30k is downloaded)")
    g.add_argument("--src", default="de", help="source language suffix (default de)")
    g.add_argument("--tgt", default="en", help="target language suffix (default en)")
    g.add_argument("--vocab-size", type=int, default=8000, help="joint SentencePiece vocabulary (default 8000)")
    g.add_argument("--subword-type", default="unigram", choices=("unigram", "bpe"), help="default unigram")
    g.add_argument("--max-tokens", type=int, default=4096,
                   help="padded tokens per side per batch (replaces batch_size; default 4096)")
    g.add_argument("--pack", type=int, default=0, metavar="TOKENS",
                   help="pack several pairs into rows of TOKENS per side, attention kept inside each pair by "
                        "segment ids (default 0 = one pair a row)")
    g.add_argument("--max-len", type=int, default=128, help="drop training pairs with more pieces (default 128)")
    g.add_argument("--empty-pairs", default="skip", choices=("skip", "error"),
                   help="pairs with an empty side: skip and count (default) or stop with file:line")
    g.add_argument("--bleu-eval-size", type=int, default=200,
                   help="val sentences greedily translated for BLEU at each evaluation (default 200; 0 = off)")
    g.add_argument("--word-dropout", type=float, default=0.0, help="P(drop a source word) (default 0)")
    g.add_argument("--blank", type=float, default=0.0, help="P(replace a source word by <unk>) (default 0)")
    g.add_argument("--switchout", type=float, default=0.0, help="P(replace a token by a random one) (default 0)")
    g.add_argument("--subword-alpha", type=float, default=0.0,
                   help="subword regularisation: unigram sampling smoothing / BPE-dropout rate (default 0 = off)")
    g.add_argument("--subword-side", default="both", choices=("src", "tgt", "both"),
                   help="which side --subword-alpha samples (default both)")
    g.add_argument("--synthetic", nargs=2, metavar=("SYNTH.SRC", "MONO.TGT"), default=[],
                   help="back-translated pairs to add (see `selfattn backtranslate`)")
    g.add_argument("--synthetic-ratio", type=float, default=1.0,
                   help="synthetic pairs per real pair (default 1; 0 = all)")
    g.add_argument("--no-synthetic-tag", action="store_true", help="do not tag synthetic sources with <bt>")


def task_from_args(args, seed: int = 0):
    """The :class:`TranslationTask` described by ``selfattn train`` arguments (trains the subword model)."""
    data = args.data
    if data is None:
        print("no --data: using Multi30k task 1 (downloaded once into ~/.cache/selfattn/multi30k)")
        data = str(multi30k(None, args.src, args.tgt)["train"][0].parent)
    aug = AugmentConfig(word_dropout=args.word_dropout, blank=args.blank, switchout=args.switchout,
                        subword_alpha=args.subword_alpha, subword_side=args.subword_side)
    cfg = TranslateConfig(data=str(data), src=args.src, tgt=args.tgt, vocab_size=args.vocab_size,
                          subword_type=args.subword_type, max_tokens=args.max_tokens, max_len=args.max_len,
                          empty=args.empty_pairs, bleu_eval_size=args.bleu_eval_size, seed=seed, augment=aug,
                          synthetic=list(args.synthetic), synthetic_ratio=args.synthetic_ratio,
                          synthetic_tag=not args.no_synthetic_tag, pack=args.pack)
    for path in find_split(cfg.data, "train", cfg.src, cfg.tgt):
        if not path.read_bytes().strip():
            raise ValueError(f"training file {str(path)!r} is empty (expected one sentence per line)")
    t0 = time.perf_counter()
    task = TranslationTask(cfg, verbose=True)
    pad = task.padding()
    rows = f"packed into rows of {cfg.pack} tokens, " if cfg.pack else ""
    print(f"translation data ready in {time.perf_counter() - t0:.1f} s: {len(task.train_ids)} pairs {rows}in "
          f"{len(task.batches)} batches of <= {cfg.max_tokens} tokens per side; padding {pad['src']:.1%} of "
          f"source, {pad['tgt']:.1%} of target positions")
    return task


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("translation runs (BLEU / chrF with sacreBLEU signatures)")
    g.add_argument("--beam", type=int, default=4, help="beam size; 1 = greedy (default 4, the paper's)")
    g.add_argument("--alpha", type=float, default=0.6, help="GNMT length penalty (default 0.6)")
    add_stop_argument(g)
    g.add_argument("--num-sentences", type=int, default=0, help="only the first N sentences (default all)")
    g.add_argument("--hyp-out", metavar="FILE", help="also write the translations to FILE")
    add_speed_arguments(g)


STOP_RULES = {"true": True, "false": False, "best": "best"}  # --early-stopping -> beam_search(early_stopping=)


def add_stop_argument(g) -> None:
    g.add_argument("--early-stopping", choices=STOP_RULES, default="true",
                   help="beam stop rule: true = at beam-size finished hypotheses (HF, fairseq; default), false = "
                        "when no live one can beat the beam-size best, best = when none can beat those returned "
                        "(CTranslate2's rule at --alpha 0; same output as false, fewer steps)")


def add_speed_arguments(g) -> None:
    """``--int8`` and ``--compile`` (see :func:`selfattn.generation.fast.for_inference`)."""
    g.add_argument("--int8", action="store_true",
                   help="int8 dynamic quantization of the linear layers (CPU; faster, BLEU may move slightly)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the decoder step (SDPA attention; the first batch pays the compile time)")


def prepare_model(model, args):
    """A copy of the model laid out for decoding, with ``--int8`` / ``--compile`` as asked
    (:func:`selfattn.generation.fast.for_inference`)."""
    from ..generation.fast import for_inference

    return for_inference(model, int8=getattr(args, "int8", False), compile=getattr(args, "compile", False))


def evaluate_run(args) -> int:
    """``selfattn evaluate --checkpoint RUN`` for a translation run: BLEU, lowercased BLEU, chrF, signatures."""
    from ._device import resolve_device

    model, sp, config = load_translation_run(args.checkpoint, step=args.step, average_last=args.average_last,
                                             device=resolve_device(args.device))
    model = prepare_model(model, args)
    spec = {k: v for k, v in config["task"].items() if k not in ("name", "subword")}
    cfg = TranslateConfig(**spec)
    corpus = read_parallel(*find_split(cfg.data, args.split, cfg.src, cfg.tgt), ReadConfig(empty="skip"))
    srcs, refs = corpus.src, corpus.tgt
    if args.num_sentences:
        srcs, refs = srcs[: args.num_sentences], refs[: args.num_sentences]
    t0 = time.perf_counter()
    hyps = [h[0][0] for h in translate(model, sp, srcs, DecodeConfig(beam=args.beam, alpha=args.alpha,
                                                                 early_stopping=STOP_RULES[args.early_stopping]))]
    seconds = time.perf_counter() - t0
    if args.hyp_out:
        atomic_write_bytes(args.hyp_out, ("\n".join(hyps) + "\n").encode())
    s = corpus_scores(hyps, refs)
    print(f"{args.split}: {len(refs)} sentences ({cfg.src}->{cfg.tgt}), beam {args.beam}, "
          f"{len(refs) / max(seconds, 1e-9):.1f} sentences/s", file=sys.stderr)
    print(f"BLEU    {s['bleu']:.2f}  {s['signatures']['bleu']}")
    print(f"BLEU-lc {s['bleu_lc']:.2f}  {s['signatures']['bleu_lc']}")
    print(f"chrF    {s['chrf']:.2f}  {s['signatures']['chrf']}")
    print(json.dumps({"checkpoint": str(args.checkpoint), "split": args.split, "beam": args.beam,
                      "int8": bool(args.int8), "compile": bool(args.compile),
                      "bleu": s["bleu"], "bleu_lc": s["bleu_lc"], "chrf": s["chrf"],
                      "signatures": s["signatures"], "sentences": len(refs), "seconds": seconds}))
    return 0


__all__ = ["add_evaluate_arguments", "add_speed_arguments", "add_train_arguments", "evaluate_run", "prepare_model",
           "task_from_args"]
