"""Crash atomicity of save_checkpoint, SQLite-style: the save is killed at EVERY file-system step in turn.

Each primitive a save uses (mkdir, safetensors writes, write_text, fsync, rename/replace, rmtree) is wrapped;
run k raises ``Crash`` (a BaseException, as uncatchable as a kill) at the k-th call — after leaving a
half-written file or a half-deleted directory where the primitive writes or deletes. After every k a reader
must find the step complete (old or new, never a mix), the writer's recovery (``clean_partial``, run by
resume) must keep it, and training must resume from it. No sleep(): the crash points are counted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import selfattn.training.checkpoint as ckpt_io
from selfattn.training import TrainConfig, Trainer
from selfattn.training.checkpoint import clean_partial, latest_intact_checkpoint, list_checkpoints, save_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from helpers import PoolTask, tiny_model

CFG = TrainConfig(steps=8, batch_size=4, schedule="constant", lr=1e-2, eval_every=0, ckpt_every=0, progress=False)


class Crash(BaseException):
    """The process dies here."""


def _half(args, kw, name):
    """What a primitive interrupted mid-way leaves behind."""
    if name in ("save_file", "save_model"):  # a truncated output file
        Path(args[1] if len(args) > 1 else kw["filename"]).write_bytes(b"\x08\x00\x00")
    elif name == "rmtree" and Path(args[0]).is_dir():  # some files already deleted
        files = sorted(Path(args[0]).iterdir())
        for f in files[: max(1, len(files) // 2)]:
            f.unlink()
    elif name == "write_text":
        Path(args[0]).write_bytes(b'{"format": 1, "st')


@contextlib.contextmanager
def crash_at(k: int | None, calls: list[str]):
    """Count the file-system primitives a save calls; raise Crash at call number ``k`` (None: never)."""
    targets = [(os, "replace"), (os, "rename"), (os, "fsync"), (os, "mkdir"), (shutil, "rmtree"),
               (ckpt_io, "save_file"), (ckpt_io, "save_model"), (Path, "write_text")]
    mp = pytest.MonkeyPatch()

    def wrap(name, fn):
        def inner(*args, **kw):
            calls.append(name)
            if len(calls) - 1 == k:
                _half(args, kw, name)
                raise Crash(name)
            return fn(*args, **kw)
        return inner

    for owner, name in targets:
        mp.setattr(owner, name, wrap(name, getattr(owner, name)))
    try:
        yield
    finally:
        mp.undo()


def _trained(task, steps: int, seed: int):
    model = tiny_model(task, seed=seed)
    trainer = Trainer(model, task, CFG)
    trainer.fit(max_steps=steps)
    return trainer


def _tag(ckpt: Path) -> str:
    return ckpt_io.read_state(ckpt)["tag"]


def _assert_complete(ckpt: Path, versions: dict[str, dict]) -> None:
    """ckpt is one saved version whole: its weights and optimizer moments are that version's."""
    want = versions[_tag(ckpt)]
    got = load_file(ckpt / "model.safetensors")
    assert got.keys() == want["model"].keys()
    assert all(torch.equal(got[k], want["model"][k]) for k in got)
    opt = load_file(ckpt / "optimizer.safetensors")
    assert all(torch.equal(opt[k], want["optimizer"][k]) for k in want["optimizer"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint dir with steps 2 and 3 (version "A"), and trainers for a re-save of step 3 ("B")
    and a new step 4 ("C"); keep_last=2, so saving step 4 also prunes step 2."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: runs before the one-thread fixture of tests/training
    task = PoolTask(pool_size=32)
    template = tmp_path_factory.mktemp("template")
    a = _trained(task, 3, seed=0)
    state = {"best": 1.0, "bad_evals": 0}
    save_checkpoint(template, 2, a.model, a.optimizer, {**state, "tag": "A2"})
    save_checkpoint(template, 3, a.model, a.optimizer, {**state, "tag": "A"})
    b = _trained(task, 3, seed=1)  # same step, other weights and moments
    c = _trained(task, 4, seed=2)
    versions = {}
    for tag, tr in (("A2", a), ("A", a), ("B", b), ("C", c)):
        model = {k: v.detach().clone() for k, v in load_file(template / "step_00000003" / "model.safetensors").items()}
        sd = {k: v.detach().clone() for k, v in tr.model.state_dict().items() if k in model}
        opt, _ = ckpt_io._optimizer_tensors(tr.optimizer)
        versions[tag] = {"model": sd, "optimizer": {k: v.clone() for k, v in opt.items()}}
    saves = {
        "re-save step 3": lambda root: save_checkpoint(root, 3, b.model, b.optimizer, {**state, "tag": "B"}, keep_last=2),
        "new step 4": lambda root: save_checkpoint(root, 4, c.model, c.optimizer, {**state, "tag": "C"}, keep_last=2),
    }
    torch.set_num_threads(threads)
    return task, template, versions, saves


@pytest.mark.parametrize("scenario, acceptable", [("re-save step 3", {3: {"A", "B"}}),
                                                  ("new step 4", {3: {"A"}, 4: {"C"}})])
def test_a_crash_at_every_step_of_a_save_leaves_a_loadable_checkpoint(setup, tmp_path, scenario, acceptable):
    task, template, versions, saves = setup
    calls: list[str] = []
    probe = tmp_path / "probe"
    shutil.copytree(template, probe)
    with crash_at(None, calls):
        saves[scenario](probe)
    assert {"replace", "fsync", "save_model", "save_file", "write_text"} <= set(calls)
    newest = max(acceptable)
    for k in range(len(calls)):
        root = tmp_path / f"crash{k}"
        shutil.copytree(template, root)
        with pytest.raises(Crash), crash_at(k, []):
            saves[scenario](root)
        where = f"crash at call {k} ({calls[k]}) of {scenario}"
        # a reader (evaluate, translate) changes nothing on disk and still finds a whole checkpoint
        seen, skipped = latest_intact_checkpoint(root)
        assert seen is not None and not skipped, where
        assert ckpt_io.checkpoint_step(seen) >= 3 and _tag(seen) in set().union(*acceptable.values()), where
        _assert_complete(seen, versions)
        # the writer recovers (resume runs clean_partial) and never loses a step that was complete
        clean_partial(root)
        assert not [p.name for p in root.iterdir() if p.name.startswith(".")], where
        steps = {ckpt_io.checkpoint_step(p): p for p in list_checkpoints(root)}
        assert 3 in steps, where
        for step, tags in acceptable.items():
            if step in steps:
                assert _tag(steps[step]) in tags, where
                _assert_complete(steps[step], versions)
        # and training resumes from the newest one, optimizer moments included (a step runs)
        trainer = Trainer(tiny_model(task, seed=9), task, CFG, root.parent / f"run{k}")
        trainer.ckpt_root = root
        assert trainer.resume(), where
        assert trainer.step == max(steps) and trainer.step in (3, newest), where
        trainer.train_step()
