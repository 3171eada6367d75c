"""``selfattn train``: train a model on a built-in task or a text file, with exact resume; it loses no work.

Order of a run: parse and check the arguments (``--set`` values included) → lock the run directory (one run per
directory) → build the task, reading every split the run will need → train, with SIGINT/SIGTERM turned into
"finish this step, checkpoint it, exit 130/143" → exit 0, or 1 when the loss became NaN/inf.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from pathlib import Path

from . import CLIError
from ._device import add_device_argument, resolve_device
from ._runconfig import fresh_run, resumed_run

HELP = """Train a Transformer with the paper's recipe (Adam 0.9/0.98/1e-9, warm-up schedule, label smoothing).

examples:
  selfattn train --task reverse --steps 600
  selfattn train --data ../shared/data/tinyshakespeare/input.txt --steps 2000 --run-dir runs/shakespeare
  selfattn train --run-dir runs/rev --resume --steps 1000      # continue exactly where it stopped
  selfattn train --config runs/rev/config.json --run-dir runs/rev2 --set lr=1e-3   # relaunch a run's config
  torchrun --nproc_per_node 2 -m selfattn train --task sort    # data-parallel (gloo on CPU)

--set KEY=VALUE sets any ModelConfig or TrainConfig field (prefix model. / train. if ambiguous), e.g.
  --set d_model=128 --set amp=bf16 --set label_smoothing=0 --set eval_every=100 --set keep_last=5 --set optimizer=muon
Default recipe when --set/--config give none: tasks warm-up 50 + cosine from lr 3e-3; text files (char LM)
warm-up 100 + cosine from 1e-3 (nanoGPT's shakespeare-char); translation the paper's noam schedule. The
warm-up is at most a tenth of --steps, so a short run is never all warm-up.

Stopping and resuming: Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a checkpoint and exits
130 / 143; `--resume` continues bit-exactly. A second signal stops at once. Raising --steps on --resume keeps
the cosine schedule's horizon as recorded (train.schedule_steps): the extra steps run at the floor lr; to
stretch the schedule say so with --set schedule_steps=N. A NaN/inf loss stops the run with exit 1 before that
step touches the weights; the checkpoints already written stay. One run per directory: a second `train` on a
run directory in use fails at once (RUN/.lock holds the pid).
The run directory holds config.json, checkpoints/, metrics.jsonl, loss.png (and tensorboard/ with
--set tensorboard=true); `selfattn generate --checkpoint RUN` needs nothing else."""


class _Interrupted(Exception):
    """A stop signal arrived before training began (nothing to checkpoint yet)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals(state: dict):
    """SIGINT/SIGTERM: before training raise :class:`_Interrupted`; during training ask the trainer to stop
    after its step (``state["trainer"]``). A second signal gets the default action (stop at once)."""

    def handler(signum, frame):
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
        trainer = state.get("trainer")
        if trainer is None:
            raise _Interrupted(signum)
        trainer.request_stop(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _locked(run_dir: Path, rank: int):
    """Hold RUN/.lock for the run (rank 0 only); a directory this call created and left empty is removed."""
    from ..io import DirectoryLocked, DirLock

    if rank != 0:
        yield
        return
    created = not run_dir.exists()
    lock = DirLock(run_dir)
    try:
        lock.acquire()
    except DirectoryLocked as e:
        raise CLIError(f"{e}: one run per directory — wait for it, or pick another --run-dir") from None
    if lock.stale_pid is not None:
        print(f"note: took over the stale lock of pid {lock.stale_pid} (no longer running) in {run_dir}")
    try:
        yield
    finally:
        lock.release()
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()


def run(args) -> int:
    from ..training.distributed import cleanup_distributed, setup_distributed

    if args.resume and args.config:
        raise CLIError("--config starts a new run from a config file; --resume continues one: give one of them")
    rank, world, device = setup_distributed(resolve_device(args.device))
    state: dict = {}
    with _stop_on_signals(state):
        try:
            return _train(args, rank, world, device, state)
        except _Interrupted as e:
            name = signal.Signals(e.signum).name
            print(f"selfattn train: {name} before the first step; nothing to save", file=sys.stderr)
            return 128 + e.signum
        finally:
            cleanup_distributed()


def _train(args, rank: int, world: int, device: str, state: dict) -> int:
    import torch

    from ..models import build_model
    from ..training import Trainer
    from ..training.trainer import NonFiniteLoss

    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.resume and run_dir is None:
        raise CLIError("--resume needs --run-dir of the run to continue")
    if run_dir is None:
        run_dir = Path("runs") / f"{args.task or 'char'}-{time.strftime('%Y%m%d-%H%M%S')}"
    with _locked(run_dir, rank):
        plan = resumed_run(args, run_dir) if args.resume else fresh_run(args, run_dir)
        torch.manual_seed(plan.train.seed)
        model = build_model(plan.model)
        if rank == 0:
            print(f"run dir {run_dir} | {plan.model.kind} model, {model.num_parameters():,} parameters | "
                  f"task {plan.task.name} | {world} process(es) on {device}", flush=True)
        trainer = Trainer(model, plan.task, plan.train, run_dir, device=device, extra_config=plan.extra,
                          echo=lambda line: print(line, flush=True))
        if rank == 0:
            print(f"precision: {trainer.amp_reason}", flush=True)
        if args.resume:
            _resume(trainer, run_dir)
        state["trainer"] = trainer
        try:
            result = trainer.fit()
        except NonFiniteLoss as e:
            from ..training import latest_checkpoint

            last = latest_checkpoint(run_dir / "checkpoints")
            kept = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
            print(f"selfattn train: error: {e}; {kept}", file=sys.stderr)
            return 1
    if rank != 0:
        return 0 if result.interrupted is None else 128 + result.interrupted
    if result.interrupted is not None:
        name = signal.Signals(result.interrupted).name
        print(f"selfattn train: {name}: stopped at step {result.step} with a checkpoint; continue with "
              f"`selfattn train --run-dir {run_dir} --resume`", file=sys.stderr)
        return 128 + result.interrupted
    last = result.evals[-1] if result.evals else {}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "step")
    print(f"done: step {result.step} in {result.seconds:.1f} s{' (early stop)' if result.stopped_early else ''}"
          f"{' | val ' + shown if shown else ''} | checkpoints, metrics.jsonl, loss.png in {run_dir}")
    return 0


def _resume(trainer, run_dir: Path) -> None:
    """Restore the newest intact checkpoint (the trainer says on stderr which damaged newer ones it skipped),
    with a one-line error when there is none or none can be read."""
    from ..training.checkpoint import DamagedCheckpoint

    try:
        found = trainer.resume()
    except DamagedCheckpoint as e:
        raise CLIError(f"--resume: {e}") from None
    if not found:
        raise CLIError(f"--resume: {str(run_dir)!r} has no checkpoint yet, nothing to continue; "
                       "start it again without --resume")


def register(sub) -> None:
    p = sub.add_parser("train", help="train on a built-in task (copy/reverse/sort/addition) or a text file",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("copy", "reverse", "sort", "addition", "translate"),
                   help="a built-in sequence task, or translate (see the translation options below)")
    p.add_argument("--data", help="a UTF-8 text file for character-level language modelling")
    p.add_argument("--config", metavar="FILE",
                   help="start from a JSON config: a run's config.json, or your own with any of the keys "
                        "preset, model, train, task (--set, --steps and the other options apply on top)")
    p.add_argument("--preset", help="model preset (default: tiny for tasks, char-lm for --data, small for translate)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ModelConfig/TrainConfig field (repeatable)")
    p.add_argument("--steps", type=int, help="optimizer steps (TrainConfig.steps; on --resume the new total)")
    p.add_argument("--run-dir", help="where checkpoints, metrics and the loss curve go (default runs/TASK-TIME)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its last checkpoint (an error when it has none)")
    p.add_argument("--lengths", help="task sequence lengths MIN-MAX (default 1-8)")
    p.add_argument("--block-size", type=int, help="context length for --data (default 64)")
    p.add_argument("--seed", type=int, help="seed for init, dropout and data (default 0)")
    add_device_argument(p)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: plain log lines (train loss, evaluations, checkpoints) on stdout")
    from ._translation import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=run)
