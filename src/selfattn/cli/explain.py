"""``selfattn explain TEXT``: self-attention walked through on real numbers of a real model.

Every step (tokens, embeddings, positional encodings, Q/K/V of one head, QKᵀ/√d_k, softmax,
weighted sum, residual) is a small table with one line of plain explanation.
"""

from __future__ import annotations

import argparse

from . import CLIError


def add_model_arguments(p: argparse.ArgumentParser, default_kind: str) -> None:
    """Options shared by ``explain`` and ``viz``: a trained run, or a small random model."""
    g = p.add_argument_group("model (a trained run, or a small random one built from the text's words)")
    g.add_argument("--checkpoint", metavar="RUN", help="a training run directory (default: random weights)")
    g.add_argument("--model", choices=["encoder", "decoder", "encoder-decoder"], default=default_kind,
                   help="random model kind: bidirectional encoder, causal LM, or translation model "
                        f"(default {default_kind})")
    g.add_argument("--target", help="target text for an encoder-decoder model (default: the text itself)")
    g.add_argument("--d-model", type=int, default=8, help="random model width c (default 8)")
    g.add_argument("--heads", type=int, default=2, help="random model heads (default 2, so d_k = c / 2)")
    g.add_argument("--layers", type=int, default=2, help="random model layers per stack (default 2)")
    g.add_argument("--positional", default="sinusoidal",
                   choices=["sinusoidal", "learned", "rope", "alibi", "t5", "none"],
                   help="random model positions (default sinusoidal, the paper's)")
    g.add_argument("--seed", type=int, default=0, help="random model seed (default 0)")
    from ._device import add_device_argument

    add_device_argument(g)


def load_model(args):
    """The model and tokens the options describe (see :mod:`selfattn.inspect.source`), on ``--device``;
    a trained run tokenizes with its own vocabulary (a translation run: its SentencePiece model)."""
    from ..inspect.source import RandomModelSpec, from_checkpoint, random_model
    from ._device import resolve_device

    device = resolve_device(args.device)
    if args.checkpoint:
        ins = from_checkpoint(args.checkpoint, args.text, args.target)
    else:
        for name in ("d_model", "heads", "layers"):
            if getattr(args, name) < 1:
                raise CLIError(f"--{name.replace('_', '-')} must be a positive int, got {getattr(args, name)}")
        spec = RandomModelSpec(kind=args.model, d_model=args.d_model, num_heads=args.heads,
                               num_layers=args.layers, positional=args.positional, seed=args.seed)
        ins = random_model(args.text, spec, args.target)
    _cut_to_limit(ins, args.command)
    ins.model = ins.model.to(device)
    ins.ids = ins.ids.to(device)
    ins.tgt_ids = ins.tgt_ids.to(device) if ins.tgt_ids is not None else None
    return ins


def _cut_to_limit(ins, command: str) -> None:
    """Inputs longer than the model's positions (``cfg.max_len``) are cut to their first tokens, with a warning."""
    from ._inputs import cut

    limit = ins.model.cfg.max_len
    for ids, labels, what in (("ids", "labels", "text"), ("tgt_ids", "tgt_labels", "target")):
        t = getattr(ins, ids)
        if t is not None and t.shape[1] > limit:
            cut(command, [t[0].tolist()], limit, what)
            setattr(ins, ids, t[:, :limit])  # (1, limit)
            setattr(ins, labels, getattr(ins, labels)[:limit])


def run(args) -> int:
    from rich.console import Console

    from ..inspect.explain import ExplainOptions, explain

    ins = load_model(args)
    kind = args.kind or ("decoder" if ins.model.cfg.kind == "decoder" else "encoder")
    if kind == "decoder" and ins.tgt_ids is not None:
        inputs, labels = (ins.ids, ins.tgt_ids), ins.tgt_labels
    else:
        inputs, labels = ((ins.ids, ins.tgt_ids) if ins.tgt_ids is not None else ins.ids), ins.labels
    console = Console()
    origin = "random weights" if ins.origin == "random" else f"checkpoint {ins.origin}"
    console.print(f"model: {origin}")
    if args.max_cols < 1 or args.max_rows < 1:
        raise CLIError(f"--max-cols and --max-rows must be >= 1, got {args.max_cols}, {args.max_rows}")
    explain(ins.model, inputs, labels, ExplainOptions(layer=args.layer, head=args.head, kind=kind,
                                                      max_cols=args.max_cols, max_rows=args.max_rows),
            console=console)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "explain", help="walk through self-attention step by step on real numbers",
        description="Walk through one attention head of a real selfattn model on TEXT: tokens, embeddings, "
                    "positional encodings, Q/K/V, scores QKᵀ/√d_k, softmax weights, weighted sum, residual. "
                    "Example: selfattn explain \"1 2 3 4 5\" --layer 1 --head 0",
    )
    p.add_argument("text", help="the input, e.g. \"1 2 3 4 5\" (whitespace words for the random model)")
    p.add_argument("--layer", type=int, default=0, help="which layer (default 0: reads the embeddings)")
    p.add_argument("--head", type=int, default=0, help="which head (default 0)")
    p.add_argument("--kind", choices=["encoder", "decoder"],
                   help="which self-attention: encoder, or the (causal) decoder's (default: the model's first)")
    p.add_argument("--max-cols", type=int, default=8, help="cut wider tables with a '…' column (default 8)")
    p.add_argument("--max-rows", type=int, default=16,
                   help="cut longer tables (one row per token) with a '…' row (default 16)")
    add_model_arguments(p, "encoder")
    p.set_defaults(func=run)
