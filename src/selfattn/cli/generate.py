"""``selfattn generate``: decode with a trained run directory (greedy, beam search or sampling)."""

from __future__ import annotations

import argparse

from . import CLIError

HELP = """Generate with a model trained by `selfattn train` (the run directory holds everything needed).

examples:
  selfattn generate --checkpoint runs/rev "1 2 3 4 5"                 # greedy
  selfattn generate --checkpoint runs/rev --beam 4 --n-best 3 "3 1 2"  # beam search, 3 best with scores
  selfattn generate --checkpoint runs/shakespeare --sample --temperature 0.8 --top-k 40 "ROMEO:"
For a task model each TEXT is a source sequence; for a language model it is the prompt to continue."""


def run(args) -> int:
    import torch

    from ..generation import beam_search, greedy, sample
    from ..training.run import load_run

    if args.beam and args.sample:
        raise CLIError("choose --beam K or --sample, not both")
    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    from ._device import resolve_device
    from ._inputs import cut

    device = resolve_device(args.device)
    model, vocab, config = load_run(args.checkpoint, step=args.step, average_last=args.average_last,
                                    device=device)
    lm = config["model"]["kind"] == "decoder"
    if hasattr(model, "new_cache"):  # a decoding copy, as `selfattn translate` uses (--int8 / --compile as asked)
        from ._translation import prepare_model

        model = prepare_model(model, args)
    ids = [vocab.encode(t) for t in args.text]
    if any(not x for x in ids):
        raise CLIError("every TEXT must contain at least one token")
    # an LM sees only its last max_len tokens (the context is cropped as it grows); a source is cut to its first
    ids = cut("generate", ids, model.cfg.max_len, "prompt" if lm else "source", keep="last" if lm else "first")
    kw = dict(max_new_tokens=args.max_new_tokens, bos_id=vocab.bos_id, pad_id=vocab.pad_id,
              stop_tokens=() if vocab.eos_id is None else (vocab.eos_id,))
    kw["prompt" if lm else "src"] = ids
    if args.beam:
        if lm and len({len(x) for x in ids}) > 1:
            raise CLIError("beam search over several prompts needs prompts of one length")
        hyps = beam_search(model, beam_size=args.beam, length_alpha=args.alpha, num_return=args.n_best, **kw)
        for text, hs in zip(args.text, hyps):
            for h in hs:
                print(f"{_show(vocab, h.tokens, text, lm)}\t(score {h.score:.4f}, log p {h.logprob:.4f})")
        return 0
    if args.sample:
        gen = torch.Generator().manual_seed(args.seed)
        outs = sample(model, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=gen, **kw)
    else:
        outs = greedy(model, **kw)
    for text, out in zip(args.text, outs):
        print(_show(vocab, out, text, lm))
    return 0


def _show(vocab, tokens, text, lm) -> str:
    return text + vocab.decode(tokens) if lm else vocab.decode(tokens)


def register(sub) -> None:
    p = sub.add_parser("generate", help="decode with a trained run (greedy, beam, sampling)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="+", metavar="TEXT", help="source sequence(s) or prompt(s)")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run directory written by `selfattn train`")
    p.add_argument("--step", type=int, help="use this checkpoint step (default: the latest)")
    p.add_argument("--average-last", type=int, default=0, metavar="K", help="average the last K checkpoints")
    p.add_argument("--max-new-tokens", type=int, default=64, help="most tokens to generate (default 64)")
    p.add_argument("--beam", type=int, default=0, metavar="K", help="beam search with K beams")
    p.add_argument("--alpha", type=float, default=0.6, help="GNMT length penalty alpha (default 0.6)")
    p.add_argument("--n-best", type=int, default=1, help="hypotheses to print per input with --beam")
    p.add_argument("--sample", action="store_true", help="sample instead of taking the argmax")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="sample among the K most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    from ._device import add_device_argument
    from ._translation import add_speed_arguments

    add_speed_arguments(p)
    add_device_argument(p)
    p.set_defaults(func=run)
