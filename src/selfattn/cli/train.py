"""``selfattn train``: train a model on a built-in task or a text file, with exact resume."""

from __future__ import annotations

import time
from pathlib import Path

from . import CLIError

HELP = """Train a Transformer with the paper's recipe (Adam 0.9/0.98/1e-9, warm-up schedule, label smoothing).

examples:
  selfattn train --task reverse --steps 600 --set schedule=cosine --set lr=3e-3 --set warmup_steps=50
  selfattn train --data ../shared/data/tinyshakespeare/input.txt --preset char-lm --steps 2000
  selfattn train --run-dir runs/rev --resume --steps 1000      # continue exactly where it stopped
  torchrun --nproc_per_node 2 -m selfattn train --task sort    # data-parallel (gloo on CPU)

--set KEY=VALUE sets any ModelConfig or TrainConfig field (prefix model. / train. if ambiguous), e.g.
  --set d_model=128 --set amp=bf16 --set label_smoothing=0 --set eval_every=100 --set keep_last=5 --set optimizer=muon
The run directory holds config.json, checkpoints/, metrics.jsonl and loss.png; `selfattn generate
--checkpoint RUN` needs nothing else."""


def _task(args):
    from ..data import CharLMTask, SyntheticTask

    if args.task == "translate":  # parallel corpus in --data DIR (selfattn.translation)
        from ._translation import task_from_args

        return task_from_args(args)
    if (args.task is None) == (args.data is None):
        raise CLIError("give exactly one of --task NAME or --data FILE")
    if args.data is not None:
        return CharLMTask(args.data, block_size=args.block_size, seed=args.seed)
    try:
        lo, hi = (int(x) for x in args.lengths.split("-"))
    except ValueError:
        raise CLIError(f"--lengths expects MIN-MAX like 1-8, got {args.lengths!r}") from None
    return SyntheticTask(args.task, min_len=lo, max_len=hi, seed=args.seed)


def run(args) -> int:
    import torch

    from ..data import task_from_spec
    from ..models import ModelConfig, preset
    from ..training import Trainer, TrainConfig, apply_overrides, read_run_config
    from ..training.distributed import cleanup_distributed, setup_distributed

    rank, world, device = setup_distributed(args.device)
    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.resume:
        if run_dir is None:
            raise CLIError("--resume needs --run-dir of the run to continue")
        config = read_run_config(run_dir)
        task = task_from_spec(config["task"])
        model_cfg, train_cfg = ModelConfig.from_dict(config["model"]), TrainConfig.from_dict(config["train"])
        new_model_cfg, train_cfg = apply_overrides(model_cfg, train_cfg, args.set)
        if new_model_cfg != model_cfg:
            raise CLIError("--resume cannot change the model config; only TrainConfig fields")
    else:
        task = _task(args)
        default = "small" if args.task == "translate" else "char-lm" if args.data else "tiny"
        model_cfg = preset(args.preset or default, **task.model_overrides())
        model_cfg, train_cfg = apply_overrides(model_cfg, TrainConfig(seed=args.seed), args.set)
        if run_dir is None:
            run_dir = Path("runs") / f"{task.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            raise CLIError(f"{str(run_dir)!r} already has checkpoints; add --resume or pick another --run-dir")
    if args.steps is not None:
        train_cfg = TrainConfig.from_dict({**train_cfg.to_dict(), "steps": args.steps})
    if args.no_progress:
        train_cfg.progress = False
    torch.manual_seed(train_cfg.seed)
    from ..models import build_model

    model = build_model(model_cfg)
    if rank == 0:
        print(f"run dir {run_dir} | {model_cfg.kind} model, {model.num_parameters():,} parameters | "
              f"task {task.name} | {world} process(es) on {device}")
    trainer = Trainer(model, task, train_cfg, run_dir, device=device)
    if rank == 0:
        print(f"precision: {trainer.amp_reason}")
    try:
        result = trainer.fit(resume=args.resume)
    finally:
        cleanup_distributed()
    if rank == 0:
        last = result.evals[-1] if result.evals else {}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "step")
        print(f"done: step {result.step} in {result.seconds:.1f} s{' (early stop)' if result.stopped_early else ''}"
              f"{' | ' + shown if shown else ''} | checkpoints, metrics.jsonl, loss.png in {run_dir}")
    return 0


def register(sub) -> None:
    import argparse

    p = sub.add_parser("train", help="train on a built-in task (copy/reverse/sort/addition) or a text file",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("copy", "reverse", "sort", "addition", "translate"),
                   help="a built-in sequence task, or translate (see the translation options below)")
    p.add_argument("--data", help="a UTF-8 text file for character-level language modelling")
    p.add_argument("--preset", help="model preset (default: tiny for tasks, char-lm for --data)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ModelConfig/TrainConfig field (repeatable)")
    p.add_argument("--steps", type=int, help="optimizer steps (TrainConfig.steps)")
    p.add_argument("--run-dir", help="where checkpoints, metrics and the loss curve go (default runs/TASK-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.add_argument("--lengths", default="1-8", help="task sequence lengths MIN-MAX (default 1-8)")
    p.add_argument("--block-size", type=int, default=64, help="context length for --data (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed for init, dropout and data (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0 ... (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    from ._translation import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=run)
