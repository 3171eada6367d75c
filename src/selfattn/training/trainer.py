"""The Trainer: the paper's recipe (§5.3–5.4) with exact resume and DDP.

Legend: b batch, n target length, V vocabulary.

Usage (any :class:`selfattn.task.Task`)::

    task = SyntheticTask("reverse")
    model = build_model(preset("tiny", **task.model_overrides()))
    result = Trainer(model, task, TrainConfig(steps=500), "runs/rev").fit()

One optimizer step = ``accum_steps`` micro-batches of ``batch_size`` sequences (global, over all ranks).
Micro-batch ``k`` of step ``s`` is ``task.batch("train", s * accum_steps + k, batch_size)``; under DDP each
rank takes rows ``rank::world`` of it. The loss is the token-sum divided by the number of target tokens
of the whole step (all ranks, all micro-batches), times ``world`` because DDP averages gradients: the
gradient then equals one process training on the same global batch.
Checkpoints (rank 0 only) hold everything needed to continue bit-exactly (see ``checkpoint``).
Evaluation: ``task.evaluate(model, split) -> dict`` when the task is an :class:`~selfattn.task.EvaluatingTask`
(e.g. BLEU; it must include "loss", which early stopping watches), else :func:`evaluate`.

Losing no work: before step 1 the validation split is read once (a missing or undecodable split fails then, not
after training); :meth:`Trainer.request_stop` (the CLI calls it from its SIGINT/SIGTERM handler) makes
:meth:`fit` finish the current step, checkpoint it and return with ``result.interrupted`` set; a non-finite loss
raises :class:`NonFiniteLoss` *before* its optimizer step, so no NaN weights reach a checkpoint. A resume drops
the metrics rows logged after its checkpoint and continues the ``time`` column. Progress and log lines go to
``echo`` (default: the ``selfattn.training`` logger) — the library itself never prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..io import atomic_write_json
from ..task import Batch, EvaluatingTask, Task
from . import checkpoint as ckpt_io
from .config import TrainConfig
from .evaluate import evaluate
from .faults import fault_point
from .forward import autocast, forward_logits, resolve_amp
from .loss import smoothed_cross_entropy
from .metrics import MetricsLog, plot_losses
from .optim import build_optimizer, lr_at


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)  # training loss of each step run by this call
    evals: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    run_dir: Path | None = None
    seconds: float = 0.0
    interrupted: int | None = None  # the signal number a stop was requested with (see Trainer.request_stop)


class NonFiniteLoss(RuntimeError):
    """The training loss of a step was NaN or infinite; raised before that step changed the weights."""


class Trainer:
    def __init__(self, model: nn.Module, task: Task, cfg: TrainConfig, run_dir: str | Path | None = None, *,
                 device: str | torch.device = "cpu", extra_config: dict | None = None,
                 echo: Callable[[str], None] | None = None):
        if not isinstance(task, Task):
            raise ValueError(f"the task must implement selfattn.task.Task (name, kind, vocab, batch, eval_batches, "
                             f"spec, model_overrides), got {type(task).__name__}")
        self.device = torch.device(device)
        amp, self.amp_reason = resolve_amp(cfg.amp, self.device)  # "auto" resolved once, recorded in config.json
        cfg = dataclasses.replace(cfg, amp=amp)
        self.task, self.cfg = task, cfg
        self.model = model.to(self.device)
        self.model_cfg = getattr(model, "cfg", None)
        self.rank, self.world = world()
        if cfg.batch_size < self.world:
            raise ValueError(f"batch_size ({cfg.batch_size}) must be >= the number of processes ({self.world})")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.ckpt_root = self.run_dir / "checkpoints" if self.run_dir else None
        self.optimizer = build_optimizer(self.model, cfg)
        self.train_model: nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        self.step = 0
        self.best = math.inf  # best validation loss (early stopping)
        self.bad_evals = 0
        self.extra_config = extra_config or {}
        self.echo = echo or logging.getLogger("selfattn.training").info
        self.stop_signal: int | None = None  # set by request_stop (e.g. from a signal handler)
        self.elapsed = 0.0  # training seconds of earlier calls of this run (restored on resume)
        self._saved_step = -1
        self.log: MetricsLog | None = None

    def request_stop(self, signum: int = 0) -> None:
        """Ask :meth:`fit` to stop after the current step, with a checkpoint (safe inside a signal handler)."""
        self.stop_signal = signum

    # -- run directory ----------------------------------------------------------------------------
    def config_dict(self) -> dict:
        d = {"format": ckpt_io.FORMAT, "train": self.cfg.to_dict(), **self.extra_config}
        if self.model_cfg is not None:
            d["model"] = self.model_cfg.to_dict()
        d["task"] = self.task.spec()
        d["vocab"] = self.task.vocab.to_dict()
        return d

    def save(self) -> Path | None:
        if self.ckpt_root is None or self.rank != 0:
            return None
        state = {"data_position": self.step * self.cfg.accum_steps, "best": self.best,
                 "bad_evals": self.bad_evals, "elapsed": self.elapsed}
        path = ckpt_io.save_checkpoint(self.ckpt_root, self.step, self.model, self.optimizer, state,
                                       keep_last=self.cfg.keep_last)
        self._saved_step = self.step
        return path

    def resume(self, ckpt: str | Path | None = None) -> bool:
        """Restore the given checkpoint, or the newest intact one (saying on stderr which damaged newer ones
        were skipped); False when there is none yet."""
        if ckpt is None:
            if self.ckpt_root is None:
                return False
            ckpt_io.clean_partial(self.ckpt_root)  # roll back an interrupted re-save, drop temporaries
            ckpt, state, skipped = ckpt_io.load_latest_intact(self.ckpt_root, self.model, self.optimizer)
            note = ckpt_io.fallback_note(ckpt, skipped)
            if ckpt is None and skipped:
                raise ckpt_io.DamagedCheckpoint(f"cannot resume {self.run_dir}: {note}")
            if self.rank == 0:
                ckpt_io.warn(note)
            if ckpt is None:
                return False
        else:
            state = ckpt_io.load_checkpoint(ckpt, self.model, self.optimizer)
        missing = [k for k in ("best", "bad_evals") if k not in state]
        if missing:
            raise ckpt_io.DamagedCheckpoint(f"{Path(ckpt) / 'state.json'}: expected the trainer's keys {missing}, "
                                            f"got only {sorted(state)}")
        self.step, self.best, self.bad_evals = state["step"], state["best"], state["bad_evals"]
        self.elapsed, self._saved_step = float(state.get("elapsed", 0.0)), self.step
        return True

    # -- one optimizer step ---------------------------------------------------------------------------
    def _micro_batches(self) -> list[Batch]:
        k0 = self.step * self.cfg.accum_steps
        return [self.task.batch("train", k0 + k, self.cfg.batch_size) for k in range(self.cfg.accum_steps)]

    def train_step(self) -> tuple[float, int]:
        """One optimizer step; returns (mean token loss over the global batch, tokens processed here)."""
        cfg, model = self.cfg, self.train_model
        model.train()
        lr = lr_at(self.step, cfg, self.model_cfg.d_model if self.model_cfg else 512)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = self._micro_batches()
        total_targets = sum(b.num_targets for b in micro)  # whole global step, all ranks
        loss_sum, tokens = torch.zeros((), dtype=torch.float64), 0
        for k, batch in enumerate(micro):
            local = batch.rows(slice(self.rank, None, self.world)).to(self.device)
            sync = k == len(micro) - 1 or self.world == 1
            ctx = contextlib.nullcontext() if sync else model.no_sync()
            with ctx:  # DDP all-reduces gradients only on the last micro-batch
                with autocast(self.device, cfg.amp):
                    logits = forward_logits(model, local)  # (b, n, V)
                loss = smoothed_cross_entropy(logits, local.tgt_out, cfg.label_smoothing)
                (loss * (self.world / max(total_targets, 1))).backward()
            loss_sum += loss.detach().double().cpu()
            tokens += local.tgt_in.numel() + (local.src.numel() if local.src is not None else 0)
        if self.world > 1:
            dist.all_reduce(loss_sum)
        mean = float(loss_sum) / max(total_targets, 1)
        if not math.isfinite(mean):  # before the optimizer step: the weights stay those of the last good step
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"step {self.step + 1}: the training loss is {mean}; training stopped before "
                                f"this step changed the weights (lr {lr:.3g}; try a lower lr or amp=none)")
        if cfg.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return mean, tokens * self.world

    # -- evaluation -----------------------------------------------------------------------------------
    def evaluate(self, split: str = "val") -> dict:
        if isinstance(self.task, EvaluatingTask):
            return self.task.evaluate(self.model, split)
        return evaluate(self.model, self.task, split, batch_size=self.cfg.eval_batch_size, amp=self.cfg.amp,
                        device=self.device)

    def _after_eval(self, metrics: dict) -> bool:
        """Update early-stopping state; True = stop."""
        cfg = self.cfg
        if metrics["loss"] < self.best:
            self.best, self.bad_evals = metrics["loss"], 0
        else:
            self.bad_evals += 1
        if cfg.target_exact_match and metrics.get("exact_match", 0.0) >= cfg.target_exact_match:
            return True
        return bool(cfg.early_stop_patience) and self.bad_evals >= cfg.early_stop_patience

    # -- the loop -----------------------------------------------------------------------------------------
    def fit(self, *, resume: bool = False, max_steps: int | None = None) -> TrainResult:
        """Train until ``cfg.steps`` (or early stop, or :meth:`request_stop`). ``max_steps`` stops this call
        sooner (tests, budgets). Raises :class:`NonFiniteLoss` when a step's loss is NaN/inf."""
        cfg = self.cfg
        if resume:
            self.resume()
        self.preflight()
        if self.run_dir is not None and self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.log = MetricsLog(self.run_dir / "metrics.jsonl",
                                  self.run_dir / "tensorboard" if cfg.tensorboard else None)
            self.log.truncate_after(self.step)  # rows logged after the checkpoint we start from
            atomic_write_json(self.run_dir / "config.json", self.config_dict())
        else:
            self.log = MetricsLog(None)
        result = TrainResult(step=self.step, run_dir=self.run_dir)
        end = cfg.steps if max_steps is None else min(cfg.steps, self.step + max_steps)
        bar = self._progress(end)
        t0 = time.perf_counter() - self.elapsed  # the time column continues across resumes
        window = {"tokens": 0, "since": time.perf_counter()}
        try:
            while self.step < end and self._stop_agreed() is None:
                loss, tokens = self.train_step()
                self.elapsed = time.perf_counter() - t0
                fault_point("step", self.step)  # tests only (SELFATTN_TEST_FAULT)
                result.losses.append(loss)
                window["tokens"] += tokens
                if self._after_step(loss, end, result, bar, window):
                    break
            result.interrupted = self._stop_agreed()
            if result.interrupted is not None and self._saved_step != self.step:
                self._checkpoint(bar)
        finally:
            if bar is not None:
                bar.close()
            self.log.close()
        result.step, result.seconds = self.step, self.elapsed
        if self.run_dir is not None and self.rank == 0:
            plot_losses(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        return result

    def _after_step(self, loss: float, end: int, result: TrainResult, bar, window: dict) -> bool:
        """Log, evaluate and checkpoint after a step as the config says; True = stop the loop."""
        cfg = self.cfg
        if self.step % cfg.log_every == 0 or self.step == end:
            now = time.perf_counter()
            tok_s = window["tokens"] / max(now - window["since"], 1e-9)
            lr = self.optimizer.param_groups[0]["lr"]
            self.log.write({"step": self.step, "loss": loss, "lr": lr, "tok_s": tok_s, "time": self.elapsed})
            if bar is not None:
                bar.set_postfix_str(f"train loss {loss:.3f} (label-smoothed), lr {lr:.2e}, {tok_s:,.0f} tok/s")
            elif self.rank == 0:
                self.echo(f"step {self.step}/{end}: train loss {loss:.4f} (label-smoothed), lr {lr:.2e}, "
                          f"{tok_s:,.0f} tok/s")
            window["tokens"], window["since"] = 0, now
        if bar is not None:
            bar.update(1)
        stop = False  # a requested stop still runs this step's due evaluation (a resume would never redo it)
        if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == end):
            metrics = self.evaluate()
            result.evals.append({"step": self.step, **metrics})
            self.log.write({"step": self.step, "split": "val", **metrics, "time": self.elapsed})
            stop = self._after_eval(metrics)
            self._say(bar, f"step {self.step}: val " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or self.step == end or stop:
            self._checkpoint(bar)
        result.stopped_early = stop
        return stop or self._stop_agreed() is not None  # fit() checkpoints a requested stop

    def _checkpoint(self, bar) -> None:
        path = self.save()
        if path is not None:
            self._say(bar, f"step {self.step}: checkpoint {path}")

    def _say(self, bar, line: str) -> None:
        if self.rank != 0:
            return
        if bar is not None:
            bar.write(line)
        else:
            self.echo(line)

    def _stop_agreed(self) -> int | None:
        """The requested stop signal, agreed by all DDP ranks (any rank's request stops every rank)."""
        if self.world == 1:
            return self.stop_signal
        flag = torch.tensor([-1 if self.stop_signal is None else self.stop_signal], dtype=torch.long)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return None if int(flag) < 0 else int(flag)

    def preflight(self) -> None:
        """Read what the run will need before step 1: the first training batch, and the validation split
        when the run evaluates — a missing or undecodable split fails now, not after the training."""
        self.task.batch("train", self.step * self.cfg.accum_steps, self.cfg.batch_size)
        if self.cfg.eval_every:
            for _ in self.task.eval_batches("val", self.cfg.eval_batch_size):
                pass

    def _progress(self, end: int):
        if not self.cfg.progress or self.rank != 0:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True)


def read_run_config(run_dir: str | Path) -> dict:
    """The JSON config of a run directory, with a one-line error when it is not one."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run directory (no config.json); "
                                "expected the directory `selfattn train` wrote")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None
