"""Fault-injection scenarios: the real ``selfattn train`` in subprocesses, hit at exact points, loses no work.

Every fault is forced, never timed: ``SELFATTN_TEST_FAULT`` (see ``selfattn.training.faults``) makes the
process send itself SIGINT, SIGTERM, SIGKILL or SIGSTOP after a given step or at a given stage of a checkpoint
save. Each scenario then resumes and asserts that nothing was lost: the final weights, every training loss and
every evaluation equal those of one uninterrupted run exactly (float equality), metrics.jsonl holds each step
once and its ``time`` column never goes back. Every failure is one line on stderr with its exit code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfattn.cli import main
from selfattn.training import latest_checkpoint, list_checkpoints

STEPS = 6
# a tiny copy task; dropout > 0 so a resume must also restore the RNG; an evaluation at steps 3 and 6
TINY = ["--task", "copy", "--lengths", "1-4", "--no-progress", "--set", "d_model=16", "--set", "d_ff=32",
        "--set", "num_encoder_layers=1", "--set", "num_decoder_layers=1", "--set", "batch_size=8",
        "--set", "dropout=0.1", "--set", "log_every=1", "--set", "eval_every=3", "--set", "keep_last=0",
        "--set", "eval_batch_size=64"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses run with OMP_NUM_THREADS=1 too: the same kernels, bit for bit
    yield
    torch.set_num_threads(before)


def cli(*args: str, fault: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SELFATTN_TEST_FAULT", None)
    if fault:
        env["SELFATTN_TEST_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "selfattn", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def outcome(run: Path) -> dict:
    """What a finished run produced: final weights, the train losses by step, the evaluations by step."""
    ckpt = latest_checkpoint(run / "checkpoints")
    records = rows(run)
    return {"step": int(ckpt.name.split("_")[1]), "weights": load_file(str(ckpt / "model.safetensors")),
            "train": [(r["step"], r["loss"], r["lr"]) for r in records if "split" not in r],
            "val": [(r["step"], r["loss"], r["exact_match"]) for r in records if r.get("split") == "val"],
            "time": [r["time"] for r in records]}


def assert_nothing_lost(run: Path, ref: dict) -> None:
    got = outcome(run)
    assert got["step"] == STEPS
    assert got["weights"].keys() == ref["weights"].keys()
    for k, v in ref["weights"].items():
        assert torch.equal(got["weights"][k], v), k
    assert got["train"] == ref["train"]  # each step once, the same loss and lr bit for bit
    assert got["val"] == ref["val"]
    assert got["time"] == sorted(got["time"]), got["time"]  # the time column continues across the resume


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", *TINY, "--steps", str(STEPS), "--run-dir", str(run), "--set", "ckpt_every=0"]) == 0
    out = outcome(run)
    assert [s for s, _, _ in out["train"]] == list(range(1, STEPS + 1)) and len(out["val"]) == 2
    return {**out, "run": run}


def resume(run: Path) -> None:
    assert main(["train", "--run-dir", str(run), "--resume", "--no-progress"]) == 0


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stop_signal_checkpoints_the_current_step_and_resume_is_exact(tmp_path, ref, sig, code):
    run = tmp_path / "run"
    p = cli("train", *TINY, "--steps", str(STEPS), "--run-dir", str(run), "--set", "ckpt_every=0",
            fault=f"{sig}:step=4")
    assert p.returncode == code, p.stderr
    line = one_line(p.stderr)
    assert sig in line and "step 4" in line and "--resume" in line
    assert [c.name for c in list_checkpoints(run / "checkpoints")] == ["step_00000004"]  # the work of steps 1-4
    resume(run)
    assert_nothing_lost(run, ref)


def test_sigterm_during_a_save_finishes_that_save_then_exits(tmp_path, ref):
    run = tmp_path / "run"
    p = cli("train", *TINY, "--steps", str(STEPS), "--run-dir", str(run), "--set", "ckpt_every=2",
            fault="SIGTERM:save=weights@2")
    assert p.returncode == 143, p.stderr
    assert "step 2" in one_line(p.stderr)
    assert [c.name for c in list_checkpoints(run / "checkpoints")] == ["step_00000002"]
    assert not [q for q in (run / "checkpoints").iterdir() if q.name.startswith(".")]  # no torn save left
    resume(run)
    assert_nothing_lost(run, ref)


@pytest.mark.parametrize("fault, survivor, last_row", [
    ("SIGKILL:save=rename@4", 2, 4),   # dies with a complete step-4 directory not yet renamed into place
    ("SIGKILL:save=renamed@4", 4, 4),  # dies right after the rename, before pruning
    ("SIGKILL:step=5", 4, 4),          # dies after step 5, before its metrics row
])
def test_sigkill_at_any_point_loses_only_the_steps_since_the_last_checkpoint(tmp_path, ref, fault, survivor,
                                                                              last_row):
    run = tmp_path / "run"
    p = cli("train", *TINY, "--steps", str(STEPS), "--run-dir", str(run), "--set", "ckpt_every=2", fault=fault)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert latest_checkpoint(run / "checkpoints").name == f"step_{survivor:08d}"
    assert max(r["step"] for r in rows(run)) == last_row  # rows after the checkpoint: the resume must drop them
    resume(run)
    assert_nothing_lost(run, ref)


def _wait_stopped(pid: int, proc: subprocess.Popen, limit: float = 240.0) -> None:
    """Wait until ``pid`` has stopped itself (state T in /proc) — a condition, not a guess of how long."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.05)
    raise AssertionError("the first training process never reached its stop point")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see a stopped process")
def test_two_processes_on_one_run_dir_the_second_fails_and_the_first_is_not_overwritten(tmp_path, ref, capsys):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SELFATTN_TEST_FAULT": "SIGSTOP:step=2"}
    first = subprocess.Popen([sys.executable, "-m", "selfattn", "train", *TINY, "--steps", str(STEPS),
                              "--run-dir", str(run), "--set", "ckpt_every=0"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_stopped(first.pid, first)  # it holds the lock, stopped after step 2
        capsys.readouterr()
        for extra in ([], ["--resume"]):
            args = ["--run-dir", str(run), "--no-progress"] if extra else [*TINY, "--run-dir", str(run)]
            assert main(["train", *args, *extra]) == 2
            line = one_line(capsys.readouterr().err)
            assert "in use" in line and f"pid {first.pid}" in line
    finally:
        first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert_nothing_lost(run, ref)  # the first run's work is intact
    assert not (run / ".lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is no longer running
    (run / ".lock").write_text(f"{dead.pid}\n")
    assert main(["train", *TINY, "--steps", "1", "--run-dir", str(run), "--set", "eval_every=0"]) == 0
    assert f"stale lock of pid {dead.pid}" in capsys.readouterr().out


@pytest.fixture
def two_checkpoints(tmp_path, ref, monkeypatch, capsys) -> Path:
    """A run of the reference's config stopped by SIGTERM after step 4, with checkpoints 2 and 4."""
    run = tmp_path / "run"
    monkeypatch.setenv("SELFATTN_TEST_FAULT", "SIGTERM:step=4")  # in this process: the CLI's handler catches it
    assert main(["train", *TINY, "--steps", str(STEPS), "--run-dir", str(run), "--set", "ckpt_every=2"]) == 143
    assert [c.name for c in list_checkpoints(run / "checkpoints")] == ["step_00000002", "step_00000004"]
    capsys.readouterr()
    return run


@pytest.mark.parametrize("damage", ["truncated weights", "garbage state.json", "missing optimizer state"])
def test_a_corrupted_checkpoint_is_one_clear_line_or_a_fallback_that_loses_nothing(two_checkpoints, ref,
                                                                                    damage, capsys):
    run, ckpt = two_checkpoints, two_checkpoints / "checkpoints" / "step_00000004"
    if damage == "truncated weights":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "garbage state.json":
        (ckpt / "state.json").write_text("{\"step\": 4, ")
    else:
        (ckpt / "optimizer.safetensors").unlink()
    capsys.readouterr()
    code = main(["train", "--run-dir", str(run), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    if code == 0:  # checkpoint loading that falls back to the newest intact checkpoint (step 2)
        assert "step_00000004" in err or "step 4" in err, err
        assert_nothing_lost(run, ref)
    else:
        assert code == 2
        line = one_line(err)
        assert "step_00000004" in line and "Traceback" not in err


def test_bad_data_files_fail_before_the_first_step_with_one_line(tmp_path, capsys):
    empty, binary = tmp_path / "empty.txt", tmp_path / "bin.txt"
    empty.write_text("")
    binary.write_bytes(b"ok text \xff\xfe\xfa more")
    corpus = tmp_path / "mt"
    corpus.mkdir()
    words = "ein mann eine frau hund katze läuft schläft".split()
    lines = [" ".join(words[(i + j) % len(words)] for j in range(1 + i % 4)) for i in range(40)]
    for side in ("de", "en"):
        (corpus / f"train.{side}").write_text("\n".join(lines) + "\n")
    mt = ["--task", "translate", "--data", str(corpus), "--vocab-size", "30", "--preset", "tiny",
          "--set", "d_model=16", "--set", "d_ff=32", "--max-tokens", "256", "--max-len", "32", "--steps", "2",
          "--no-progress", "--bleu-eval-size", "0"]
    cases = [(["--data", str(empty)], "empty"), (["--data", str(binary)], "not UTF-8"),
             (mt, "no val split")]
    for argv, message in cases:
        run = tmp_path / f"run{len(message)}"
        assert main(["train", *argv, "--run-dir", str(run)]) == 2
        err = capsys.readouterr().err
        assert message in one_line(err), err
        assert not (run / "checkpoints").exists()  # nothing trained, nothing to lose
    (corpus / "train.en").write_text("\n")
    assert main(["train", *mt, "--run-dir", str(tmp_path / "run-empty")]) == 2
    assert "train.en" in (line := one_line(capsys.readouterr().err)) and "is empty" in line
    (corpus / "train.en").write_text("\n".join(lines) + "\n")
    (corpus / "val.de").write_bytes(b"ein mann\n\xff\xfe\n")
    (corpus / "val.en").write_text("a man\na dog\n")
    assert main(["train", *mt, "--run-dir", str(tmp_path / "run-val")]) == 2
    line = one_line(capsys.readouterr().err)
    assert "UTF-8" in line and "val.de" in line
    assert not (tmp_path / "run-val" / "checkpoints").exists()


def test_a_nan_loss_stops_with_the_step_keeps_the_good_checkpoints_and_exits_1(tmp_path, capsys):
    run = tmp_path / "run"
    # lr 1e30: step 1 (finite loss) blows the weights up, so step 2's loss is NaN
    code = main(["train", *TINY, "--steps", str(STEPS), "--run-dir", str(run), "--set", "ckpt_every=1",
                 "--set", "schedule=constant", "--set", "lr=1e30", "--set", "eval_every=0"])
    assert code == 1
    line = one_line(capsys.readouterr().err)
    assert "step 2" in line and "nan" in line.lower() and "step_00000001" in line
    assert [c.name for c in list_checkpoints(run / "checkpoints")] == ["step_00000001"]
    weights = load_file(str(latest_checkpoint(run / "checkpoints") / "model.safetensors"))
    assert all(bool(torch.isfinite(v).all()) for v in weights.values())


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_set_is_refused_before_anything_is_written(tmp_path, capsys, value):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--run-dir", str(run), "--set", f"lr={value}"]) == 2
    assert "finite" in one_line(capsys.readouterr().err)
    assert not run.exists()


def test_resume_refuses_what_it_cannot_continue(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "2", "--run-dir", str(run), "--seed", "3"]) == 0
    config = (run / "config.json").read_bytes()
    capsys.readouterr()
    cases = [(["--seed", "4", "--lengths", "1-5"], ["--seed 4 (run: 3)", "--lengths 1-5 (run: 1-4)"]),
             (["--task", "reverse", "--preset", "small"], ["--task reverse (run: copy)", "--preset small (run: tiny)"]),
             (["--set", "lr=inf"], ["finite"]), (["--set", "d_model=32"], ["cannot change the model"])]
    for extra, messages in cases:
        assert main(["train", "--run-dir", str(run), "--resume", "--steps", "4", *extra]) == 2
        line = one_line(capsys.readouterr().err)
        assert all(m in line for m in messages), line
        assert (run / "config.json").read_bytes() == config  # a rejected resume rewrites nothing
    shutil.rmtree(run / "checkpoints")
    assert main(["train", "--run-dir", str(run), "--resume"]) == 2  # config.json but no checkpoint
    assert "no checkpoint" in one_line(capsys.readouterr().err)
