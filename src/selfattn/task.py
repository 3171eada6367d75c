"""The task contract the Trainer, evaluation and the CLI rely on, and the registry tasks register into.

Legend: b batch, m source length, n target length.

A task owns its data, vocabulary and (optionally) its evaluation; the trainer knows only this interface
(fairseq's ``FairseqTask`` + ``@register_task``). This module sits at the bottom of the upper floors: it imports
nothing of selfattn, so ``data``, ``training`` and ``translation`` can all depend on it without depending on each
other. Concrete tasks live in :mod:`selfattn.data` (synthetic, char LM) and :mod:`selfattn.translation` and call
:func:`register_task` when imported (``import selfattn`` imports them all).

A :class:`Batch` holds ``src`` (b, m) source ids or None for language models, ``tgt_in`` (b, n) decoder inputs
(BOS + target, teacher forcing) and ``tgt_out`` (b, n) targets (target + EOS) with :data:`IGNORE` where there is no
target. Padding uses ``vocab.pad_id``; models derive masks from it (True = real token, may be attended).
A packed batch (several pairs a row, :mod:`selfattn.data.packing`) also holds ``src_seg`` / ``tgt_seg``: the
segment id of each position (1, 2, ... in row order, 0 = padding); the targets are those of the pairs alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

IGNORE = -100  # target id skipped by the loss (torch's cross_entropy default ignore_index)


@dataclass
class Batch:
    src: Tensor | None  # (b, m) source ids; None for language models
    tgt_in: Tensor  # (b, n) decoder input (BOS + target for seq2seq)
    tgt_out: Tensor  # (b, n) next-token targets, IGNORE where none
    # packed rows (selfattn.data.packing): segment ids 1, 2, ... per pair, 0 = padding; None = one pair a row
    src_seg: Tensor | None = None  # (b, m)
    tgt_seg: Tensor | None = None  # (b, n)

    def __len__(self) -> int:
        return self.tgt_in.shape[0]

    @property
    def segment_ids(self) -> tuple[Tensor, Tensor] | None:
        """(source ids (b, m), target ids (b, n)) of a packed batch, None when unpacked."""
        if self.src_seg is None or self.tgt_seg is None:
            return None
        return self.src_seg, self.tgt_seg

    def rows(self, index: slice | Tensor) -> Batch:
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return Batch(pick(self.src), self.tgt_in[index], self.tgt_out[index], pick(self.src_seg), pick(self.tgt_seg))

    @property
    def num_targets(self) -> int:
        return int((self.tgt_out != IGNORE).sum())

    def to(self, device: torch.device | str) -> Batch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return Batch(move(self.src), self.tgt_in.to(device), self.tgt_out.to(device), move(self.src_seg),
                     move(self.tgt_seg))


class TaskVocab(Protocol):
    """What the trainer and generation need of a vocabulary (:class:`selfattn.data.Vocab` is one)."""

    @property
    def pad_id(self) -> int | None: ...
    @property
    def bos_id(self) -> int | None: ...
    @property
    def eos_id(self) -> int | None: ...

    def __len__(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class Task(Protocol):
    """The contract between a task and :class:`selfattn.training.Trainer`.

    - ``batch(split, index, size)``: batch number ``index`` of ``split`` — a **pure function** of (the task's seed,
      split, index). The data position is then just the step count, so resuming is exact and every DDP rank can
      build the same global batch and take its own rows;
    - ``eval_batches(split, size)``: the whole fixed evaluation set of ``split``;
    - ``spec()``: a JSON-able dict (with ``"name"``) from which :func:`task_from_spec` rebuilds the task — it is
      stored in the run directory's config.json;
    - ``model_overrides()``: the ModelConfig fields the task fixes (kind, vocab size, pad id, max length).
    """

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...  # "seq2seq" (src -> tgt) or "lm" (Batch.src is None)
    @property
    def vocab(self) -> TaskVocab: ...

    def batch(self, split: str, index: int, size: int) -> Batch: ...
    def eval_batches(self, split: str = "val", size: int = 256) -> Iterator[Batch]: ...
    def spec(self) -> dict[str, Any]: ...
    def model_overrides(self) -> dict[str, Any]: ...


@runtime_checkable
class EvaluatingTask(Task, Protocol):
    """A task with its own evaluation (e.g. BLEU). The dict must hold ``"loss"``: early stopping watches it.
    Tasks without one are evaluated by :func:`selfattn.training.evaluate` (loss, accuracy, exact match)."""

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]: ...


TaskFactory = Callable[[dict[str, Any]], Task]  # spec without "name" -> task
_REGISTRY: dict[str, TaskFactory] = {}


def register_task(name: str, from_spec: TaskFactory) -> None:
    """Make ``task_from_spec({"name": name, ...})`` call ``from_spec({...})``. Re-registering a name replaces it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a task name must be a non-empty string, got {name!r}")
    _REGISTRY[name] = from_spec


def registered_tasks() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def task_from_spec(spec: dict[str, Any]) -> Task:
    """Rebuild a task from ``task.spec()`` (stored in a run directory's config.json)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(f"a task spec needs a dict with a string 'name', got {spec!r:.200}")
    rest = dict(spec)
    name = rest.pop("name")
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; registered tasks: {', '.join(registered_tasks()) or 'none'} "
                         "(import the module that defines it first)")
    return _REGISTRY[name](rest)


__all__ = ["IGNORE", "Batch", "EvaluatingTask", "Task", "TaskVocab", "register_task", "registered_tasks",
           "task_from_spec"]
