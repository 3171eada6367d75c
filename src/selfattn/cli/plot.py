"""``selfattn plot RUN``: training curves (loss, learning rate, BLEU) from a run's metrics.jsonl as PNG."""

from __future__ import annotations


def run(args) -> int:
    from ..inspect.curves import plot_curves

    print(plot_curves(args.run, args.out, args.title, args.x))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "plot", help="training curves (loss, lr, BLEU) of a run as PNG",
        description="Draw loss (train and validation), learning rate and BLEU against step (or training time, "
                    "--x time) from RUN/metrics.jsonl (what `selfattn train` writes). "
                    "Example: selfattn plot runs/m30k --out curves.png",
    )
    p.add_argument("run", metavar="RUN", help="a run directory holding metrics.jsonl, or the .jsonl file itself")
    p.add_argument("--out", help="PNG to write (default RUN/curves.png)")
    p.add_argument("--title", help="figure title (default: the run's name)")
    p.add_argument("--x", choices=("step", "time"), default="step",
                   help="horizontal axis: optimizer step or training seconds (default step)")
    p.set_defaults(func=run)
