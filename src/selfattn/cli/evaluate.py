"""``selfattn evaluate``: loss, token accuracy and exact match of a trained run on its task's held-out split."""

from __future__ import annotations

import argparse
import json

HELP = """Evaluate a run directory on its own task (rebuilt from config.json).

examples:
  selfattn evaluate --checkpoint runs/rev                  # val loss, accuracy, exact match (greedy)
  selfattn evaluate --checkpoint runs/rev --average-last 3 # the average of the last 3 checkpoints
Prints one JSON object."""


def run(args) -> int:
    from ..data import task_from_spec
    from ..training import evaluate
    from ..training.run import load_run
    from ..training.trainer import read_run_config

    if read_run_config(args.checkpoint).get("task", {}).get("name") == "translate":
        from ._translation import evaluate_run

        return evaluate_run(args)  # BLEU / chrF with sacreBLEU signatures
    if args.split != "val":
        raise ValueError(f"--split {args.split} exists only for translation runs; this run has 'val'")
    from ._device import resolve_device

    device = resolve_device(args.device)
    model, _, config = load_run(args.checkpoint, step=args.step, average_last=args.average_last, device=device)
    task = task_from_spec(config["task"])
    metrics = evaluate(model, task, args.split, batch_size=args.batch_size, device=device)
    print(json.dumps({"checkpoint": str(args.checkpoint), "split": args.split, **metrics}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="held-out loss / accuracy / exact match of a trained run",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run directory written by `selfattn train`")
    p.add_argument("--step", type=int, help="use this checkpoint step (default: the latest)")
    p.add_argument("--average-last", type=int, default=0, metavar="K", help="average the last K checkpoints")
    p.add_argument("--split", default="val", choices=("val", "test"), help="which split (default val)")
    p.add_argument("--batch-size", type=int, default=256)
    from ._device import add_device_argument

    add_device_argument(p)
    from ._translation import add_evaluate_arguments

    add_evaluate_arguments(p)
    p.set_defaults(func=run)
