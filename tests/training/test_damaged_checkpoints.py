"""Checkpoints read back from disk are validated: damaged files give one line naming the file, and
--resume / evaluate / generate fall back to the newest intact checkpoint, saying so on stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from selfattn.cli import main
from selfattn.training import DamagedCheckpoint, TrainConfig, Trainer, load_checkpoint, save_checkpoint
from selfattn.training.checkpoint import latest_intact_checkpoint, read_state

sys.path.insert(0, str(Path(__file__).parent))
from helpers import PoolTask, tiny_model

CFG = TrainConfig(steps=6, batch_size=4, schedule="constant", lr=1e-2, eval_every=0, ckpt_every=0, progress=False)


@pytest.fixture
def saved(tmp_path):
    """Steps 1 and 2 of a trained tiny model, with optimizer state."""
    task = PoolTask(pool_size=16)
    trainer = Trainer(tiny_model(task), task, CFG)
    trainer.fit(max_steps=2)
    state = {"best": 1.0, "bad_evals": 0}
    first = save_checkpoint(tmp_path, 1, trainer.model, trainer.optimizer, state)
    last = save_checkpoint(tmp_path, 2, trainer.model, trainer.optimizer, state)
    return task, trainer, first, last


def _fresh(task):
    model = tiny_model(task, seed=3)
    return model, Trainer(model, task, CFG).optimizer


DAMAGE = {"truncated": lambda b: b[: len(b) // 2], "empty": lambda b: b"", "garbage": lambda b: b"\x07" * 64 + b}


@pytest.mark.parametrize("file", ["model.safetensors", "optimizer.safetensors", "rng.safetensors"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_safetensors_is_one_line_naming_the_file(saved, file, damage):
    task, _, _, last = saved
    (last / file).write_bytes(DAMAGE[damage]((last / file).read_bytes()))
    model, opt = _fresh(task)
    with pytest.raises(DamagedCheckpoint) as e:
        load_checkpoint(last, model, opt)
    msg = str(e.value)
    assert str(last / file) in msg and "\n" not in msg
    chosen, skipped = latest_intact_checkpoint(last.parent)
    assert chosen.name == "step_00000001" and [p.name for p, _ in skipped] == ["step_00000002"]


@pytest.mark.parametrize("edit, words", [
    (lambda s: s.pop("rng"), "no 'rng' key"),
    (lambda s: s["rng"]["python"][1].pop(), "Python RNG state"),
    (lambda s: s.update(step="2"), "'step': an int"),
    (lambda s: s.update(format=7), "'format': 1"),
    (lambda s: s["optimizer"].update(param_groups="x"), "'optimizer'"),
])
def test_state_json_is_validated_naming_the_file(saved, edit, words):
    task, _, _, last = saved
    state = json.loads((last / "state.json").read_text())
    edit(state)
    (last / "state.json").write_text(json.dumps(state))
    with pytest.raises(DamagedCheckpoint, match=words) as e:
        load_checkpoint(last, *_fresh(task))
    assert str(last / "state.json") in str(e.value)
    (last / "state.json").write_text("{ not json")
    with pytest.raises(DamagedCheckpoint, match="is not valid JSON"):
        read_state(last)


def _edit_optimizer(ckpt: Path, fn) -> None:
    tensors = load_file(ckpt / "optimizer.safetensors")
    fn(tensors)
    save_file(tensors, ckpt / "optimizer.safetensors")


def test_misshaped_moment_or_bad_step_count_fails_at_load_not_at_step(saved):
    task, _, _, last = saved
    key = next(k for k in load_file(last / "optimizer.safetensors") if k.endswith(".exp_avg"))
    _edit_optimizer(last, lambda t: t.update({key: torch.zeros(3, 5)}))
    model, opt = _fresh(task)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(DamagedCheckpoint, match=rf"optimizer\.safetensors: expected exp_avg of parameter "
                                                rf"{key.split('.')[1]}: a float tensor.*got torch\.float32 \(3, 5\)"):
        load_checkpoint(last, model, opt)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))  # nothing was changed
    step_key = key.replace(".exp_avg", ".step")
    for bad in (torch.tensor(1e9), torch.tensor(-1.0), torch.tensor(1.5)):
        _edit_optimizer(last, lambda t, b=bad: t.update({key: torch.zeros_like(t[key.replace("exp_avg", "exp_avg_sq")]),
                                                         step_key: b}))
        with pytest.raises(DamagedCheckpoint, match=r"step count of parameter \d+: a whole number in \[0, 2\]"):
            load_checkpoint(last, *_fresh(task))


def test_another_optimizer_is_a_plain_error_naming_the_file(saved):
    task, _, _, last = saved
    model = tiny_model(task, seed=3)
    muon = Trainer(model, task, TrainConfig(**{**CFG.to_dict(), "optimizer": "muon"})).optimizer
    with pytest.raises(ValueError, match=r"optimizer\.safetensors: the optimizer has parameter groups of sizes") as e:
        load_checkpoint(last, model, muon)
    assert not isinstance(e.value, DamagedCheckpoint)


def _run(tmp_path, steps: int) -> Path:
    run = tmp_path / "run"
    assert main(["train", "--task", "copy", "--lengths", "1-4", "--steps", str(steps), "--run-dir", str(run),
                 "--no-progress", "--set", "d_model=32", "--set", "d_ff=64", "--set", "batch_size=8",
                 "--set", "ckpt_every=2", "--set", "eval_every=0", "--set", "keep_last=3"]) == 0
    return run


def test_resume_evaluate_generate_fall_back_to_the_newest_intact_checkpoint(tmp_path, capsys, one_thread):
    run = _run(tmp_path, 6)
    ckpts = run / "checkpoints"
    (ckpts / "step_00000006" / "model.safetensors").write_bytes(b"")
    capsys.readouterr()
    note = "checkpoint step_00000006 is damaged ("
    assert main(["evaluate", "--checkpoint", str(run)]) == 0
    err = capsys.readouterr().err
    assert note in err and "model.safetensors" in err and err.strip().endswith("; using step_00000004")
    assert len(err.strip().splitlines()) == 1
    assert main(["generate", "--checkpoint", str(run), "1 2"]) == 0
    assert note in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(run), "--step", "6"]) != 0  # an explicit step: no fallback
    assert "step_00000006/model.safetensors is not a readable safetensors file" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(run), "--average-last", "2"]) == 0
    assert "averaging step_00000002, step_00000004" in capsys.readouterr().err
    # resume: continues from step 4 and re-saves step 6 over the damaged one
    assert main(["train", "--run-dir", str(run), "--resume", "--steps", "8", "--no-progress"]) == 0
    assert note in capsys.readouterr().err
    assert read_state(ckpts / "step_00000006")["step"] == 6 and latest_intact_checkpoint(ckpts) == (ckpts / "step_00000008", [])
    for c in ckpts.iterdir():
        (c / "state.json").write_text("")
    assert main(["train", "--run-dir", str(run), "--resume", "--steps", "10", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "cannot resume" in err and "no intact checkpoint left" in err


def test_a_flipped_bit_in_tensor_data_is_caught_by_the_recorded_digest(saved):
    """The header still parses and every size matches: only the SHA-256 in state.json tells."""
    task, _, _, last = saved
    data = bytearray((last / "model.safetensors").read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's bytes
    (last / "model.safetensors").write_bytes(bytes(data))
    load_checkpoint(last, *_fresh(task))  # loading alone cannot see it
    chosen, skipped = latest_intact_checkpoint(last.parent)
    assert chosen.name == "step_00000001"
    assert [p.name for p, _ in skipped] == ["step_00000002"] and "SHA-256 differs" in skipped[0][1]
