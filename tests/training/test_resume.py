"""Exact resume, crash safety (SIGKILL of a real training process), checkpoints, averaging."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selfattn.cli import main
from selfattn.data import SyntheticTask
from selfattn.training import (
    TrainConfig,
    Trainer,
    average_checkpoints,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_state_into,
    save_checkpoint,
)
from selfattn.training.checkpoint import clean_partial, read_state

sys.path.insert(0, str(Path(__file__).parent))
from helpers import PoolTask, tiny_model

CFG = TrainConfig(steps=10, batch_size=8, accum_steps=2, schedule="noam", warmup_steps=4, lr=2.0,
                  weight_decay=0.01, label_smoothing=0.1, clip_grad_norm=0.5, eval_every=5, ckpt_every=3,
                  keep_last=2, progress=False)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, optimizer):
    cfg = dataclasses.replace(CFG, optimizer=optimizer)  # Muon + AdamW: a chained optimizer state
    task = SyntheticTask("reverse", max_len=6, val_size=64)
    # dropout > 0: the resumed run must also restore the RNG that draws the dropout masks
    full = Trainer(tiny_model(task, dropout=0.2), task, cfg, tmp_path / "a").fit()
    first = Trainer(tiny_model(task, dropout=0.2), task, cfg, tmp_path / "b").fit(max_steps=4)
    torch.manual_seed(999)  # a different RNG state and different initial weights before resuming
    resumed_model = tiny_model(task, seed=5, dropout=0.2)
    second = Trainer(resumed_model, task, cfg, tmp_path / "b").fit(resume=True)
    assert first.step == 4 and second.step == 10
    assert first.losses + second.losses == full.losses  # exact float equality, step by step
    ca, cb = latest_checkpoint(tmp_path / "a" / "checkpoints"), latest_checkpoint(tmp_path / "b" / "checkpoints")
    ma, mb = tiny_model(task, dropout=0.2), tiny_model(task, seed=7, dropout=0.2)
    load_checkpoint(ca, ma, restore_rng=False), load_checkpoint(cb, mb, restore_rng=False)
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k
    assert [e["loss"] for e in full.evals][-1] == [e["loss"] for e in second.evals][-1]


def test_checkpoint_roundtrip_keep_last_and_partial_leftovers(tmp_path):
    task = PoolTask()
    model = tiny_model(task)
    trainer = Trainer(model, task, CFG, tmp_path)
    trainer.fit(max_steps=7)  # checkpoints at 3, 6, 7; keep_last=2
    root = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step_00000006", "step_00000007"]
    # a half-written checkpoint (process killed before the rename) is invisible and cleaned up
    (root / ".step_00000008.tmp-123").mkdir()
    (root / ".step_00000008.tmp-123" / "model.safetensors").write_bytes(b"\0" * 10)
    assert latest_checkpoint(root).name == "step_00000007"
    clean_partial(root)
    assert not any(p.name.startswith(".") for p in root.iterdir())
    fresh = tiny_model(task, seed=3)
    opt = Trainer(fresh, task, CFG).optimizer
    state = load_checkpoint(latest_checkpoint(root), fresh, opt)
    assert state["step"] == 7 and state["data_position"] == 14
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)
    saved, loaded = trainer.optimizer.state_dict()["state"], opt.state_dict()["state"]
    assert saved.keys() == loaded.keys()
    for i in saved:
        for name in saved[i]:
            assert torch.equal(torch.as_tensor(saved[i][name]), torch.as_tensor(loaded[i][name]))


def test_average_checkpoints_is_the_elementwise_mean(tmp_path):
    task = PoolTask()
    models = [tiny_model(task, seed=s) for s in range(3)]
    paths = [save_checkpoint(tmp_path, s, m) for s, m in enumerate(models)]
    avg_model = tiny_model(task, seed=9)
    load_state_into(avg_model, average_checkpoints(paths))
    for name, p in avg_model.named_parameters():
        p = p.detach()
        ref = sum(dict(m.named_parameters())[name].detach().double() for m in models) / 3
        torch.testing.assert_close(p.double(), ref, rtol=0, atol=torch.finfo(torch.float32).eps * float(ref.abs().max()))
    assert avg_model.output.weight is avg_model.tgt_embed.token.weight  # still tied
    with pytest.raises(ValueError, match="at least one"):
        average_checkpoints([])


def test_average_checkpoints_reads_each_checkpoint_once(tmp_path, monkeypatch):
    import selfattn.training.checkpoint as ckpt_io

    task = PoolTask()
    paths = [save_checkpoint(tmp_path, s, tiny_model(task, seed=s)) for s in range(3)]
    reads: list[Path] = []
    real = ckpt_io.load_tensors

    def counting(path, *args, **kwargs):
        reads.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ckpt_io, "load_tensors", counting)
    average_checkpoints(paths)
    assert reads == [Path(p) / "model.safetensors" for p in paths]  # once each, in order (not once per tensor)


def test_loading_a_mismatched_or_missing_checkpoint_is_a_clear_error(tmp_path):
    task = PoolTask()
    path = save_checkpoint(tmp_path, 1, tiny_model(task))
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint(path, tiny_model(task, d_model=64))
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        read_state(tmp_path / "nothing")


def test_sigkill_during_a_save_leaves_a_loadable_resumable_checkpoint(tmp_path):
    """SIGKILL inside the save of step 3, just before its rename — forced at that exact point by the
    SELFATTN_TEST_FAULT hook, not by a sleep that may land anywhere."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "selfattn", "train", "--task", "copy", "--steps", "6", "--run-dir", str(run),
           "--no-progress", "--lengths", "1-5", "--set", "ckpt_every=1", "--set", "eval_every=0",
           "--set", "d_model=32", "--set", "d_ff=64", "--set", "batch_size=16", "--set", "keep_last=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SELFATTN_TEST_FAULT": "SIGKILL:save=rename@3"}
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    root = run / "checkpoints"
    assert any(p.name.startswith(".step_00000003.tmp-") for p in root.iterdir())  # it died inside that save
    ckpt = latest_checkpoint(root)
    assert ckpt is not None and read_state(ckpt)["step"] == 2
    model = tiny_model(SyntheticTask("copy", max_len=5))
    load_checkpoint(ckpt, model, restore_rng=False)  # complete and consistent
    assert main(["train", "--run-dir", str(run), "--resume", "--steps", "4", "--no-progress"]) == 0
    assert read_state(latest_checkpoint(root))["step"] == 4
    assert not any(p.name.startswith(".") for p in root.iterdir())  # the torn save was cleaned up
