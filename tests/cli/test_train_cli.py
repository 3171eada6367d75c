"""`selfattn train / generate / evaluate` end to end on tiny runs, and their one-line errors."""

from __future__ import annotations

import json

import pytest

from selfattn.cli import main
from selfattn.training import latest_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, _one_thread):
    d = tmp_path_factory.mktemp("run") / "rev"
    code = main(["train", "--task", "reverse", "--lengths", "1-4", "--steps", "20", "--run-dir", str(d),
                 "--no-progress", "--set", "d_model=32", "--set", "d_ff=64", "--set", "batch_size=32",
                 "--set", "schedule=cosine", "--set", "lr=3e-3", "--set", "warmup_steps=5",
                 "--set", "eval_every=20", "--set", "ckpt_every=10"])
    assert code == 0
    return d


def test_train_writes_a_self_contained_run_dir(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["d_model"] == 32 and config["train"]["steps"] == 20
    assert config["task"]["name"] == "reverse" and config["vocab"]["tokens"][:3] == ["<pad>", "<bos>", "<eos>"]
    assert latest_checkpoint(run_dir / "checkpoints").name == "step_00000020"
    assert (run_dir / "loss.png").is_file() and (run_dir / "metrics.jsonl").is_file()


def test_generate_and_evaluate_from_the_run_dir_alone(run_dir, capsys):
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(run_dir), "1 2 3", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(set(line.split()) <= set("0123456789") for line in lines)
    assert main(["generate", "--checkpoint", str(run_dir), "--beam", "3", "--n-best", "2", "1 2 3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["generate", "--checkpoint", str(run_dir), "--sample", "--top-k", "3", "1 2"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run_dir), "--average-last", "2"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["exact_match"] <= 1.0 and metrics["loss"] > 0


def test_resume_continues_from_the_last_checkpoint(run_dir, capsys):
    assert main(["train", "--run-dir", str(run_dir), "--resume", "--steps", "23", "--no-progress"]) == 0
    assert latest_checkpoint(run_dir / "checkpoints").name == "step_00000023"


@pytest.mark.parametrize("argv, message", [
    (["train"], "exactly one of --task"),
    (["train", "--task", "copy", "--data", "x.txt"], "exactly one of --task"),
    (["train", "--data", "/nonexistent/file.txt"], "does not exist"),
    (["train", "--task", "copy", "--set", "bogus=1"], "not a unique field"),
    (["train", "--task", "copy", "--set", "lr=fast"], "expected a float"),
    (["train", "--task", "copy", "--lengths", "x"], "--lengths expects"),
    (["train", "--resume"], "--resume needs --run-dir"),
    (["generate", "--checkpoint", "/nonexistent", "1 2"], "not a run directory"),
    (["evaluate", "--checkpoint", "/nonexistent"], "not a run directory"),
])
def test_bad_arguments_give_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_bad_run_dir_files_give_one_line_errors(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    assert main(["generate", "--checkpoint", str(tmp_path), "1"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\xfa" * 50)
    assert main(["train", "--data", str(binary), "--run-dir", str(tmp_path / "r")]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_char_lm_train_and_generate(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question. " * 20, encoding="utf-8")
    run = tmp_path / "lm"
    assert main(["train", "--data", str(text), "--block-size", "16", "--steps", "3", "--run-dir", str(run),
                 "--no-progress", "--set", "d_model=32", "--set", "d_ff=64", "--set", "batch_size=4",
                 "--set", "eval_every=3"]) == 0
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(run), "--max-new-tokens", "10", "--sample", "to be"]) == 0
    out = capsys.readouterr().out.rstrip("\n")
    assert out.startswith("to be") and len(out) == len("to be") + 10 and set(out) <= set(text.read_text())
    assert main(["generate", "--checkpoint", str(run), "to be", "q"]) == 0  # prompts of different lengths
    assert main(["generate", "--checkpoint", str(run), "ZZZ"]) == 2  # characters outside the vocabulary
    assert "not in the" in capsys.readouterr().err


TINY = ["--task", "copy", "--lengths", "1-4", "--set", "d_model=16", "--set", "d_ff=32",
        "--set", "num_encoder_layers=1", "--set", "num_decoder_layers=1", "--set", "batch_size=8"]


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_raising_steps_on_resume_keeps_the_recorded_lr_horizon(tmp_path):
    run = tmp_path / "run"
    base = [*TINY, "--no-progress", "--set", "schedule=cosine", "--set", "lr=3e-3", "--set", "warmup_steps=1",
            "--set", "eval_every=0", "--set", "log_every=1"]
    assert main(["train", *base, "--steps", "4", "--run-dir", str(run)]) == 0
    assert main(["train", "--run-dir", str(run), "--resume", "--steps", "8", "--no-progress"]) == 0
    lr = {r["step"]: r["lr"] for r in _rows(run)}
    assert sorted(lr) == list(range(1, 9))
    floor = 3e-3 * 0.1  # min_lr_ratio of the peak, reached at the recorded horizon (step 4)
    assert all(abs(lr[s] - floor) < 1e-12 for s in range(5, 9)), lr  # no jump back up
    assert json.loads((run / "config.json").read_text())["train"]["schedule_steps"] == 4
    # stretching the schedule is explicit: --set schedule_steps
    assert main(["train", "--run-dir", str(run), "--resume", "--steps", "10", "--no-progress",
                 "--set", "schedule_steps=20"]) == 0
    assert {r["step"]: r["lr"] for r in _rows(run)}[9] > floor


def test_no_progress_prints_plain_log_lines_and_the_bar_names_its_loss(tmp_path, capsys):
    assert main(["train", *TINY, "--steps", "4", "--run-dir", str(tmp_path / "a"), "--no-progress",
                 "--set", "eval_every=2", "--set", "ckpt_every=2", "--set", "log_every=2"]) == 0
    out = capsys.readouterr().out
    assert "step 2: val loss" in out and "step 4: checkpoint" in out
    assert "step 2/4: train loss" in out and "(label-smoothed)" in out
    assert main(["train", *TINY, "--steps", "2", "--run-dir", str(tmp_path / "b"), "--set", "eval_every=0",
                 "--set", "log_every=1"]) == 0
    err = capsys.readouterr().err  # tqdm's bar
    assert "train loss" in err and "label-smoothed" in err


def test_default_recipes_fit_the_readme_commands(tmp_path):
    import argparse

    from selfattn.cli import build_parser
    from selfattn.cli._runconfig import fresh_run
    from selfattn.training.optim import lr_at

    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question. " * 40, encoding="utf-8")
    parser = build_parser()
    for argv, most_warmup in ([["train", "--data", str(text), "--steps", "2000"], 100],
                              [["train", "--task", "reverse", "--steps", "300"], 30]):
        args = parser.parse_args(argv)
        plan = fresh_run(args, tmp_path / "never-written")
        assert isinstance(args, argparse.Namespace) and plan.train.warmup_steps <= most_warmup
        lrs = [lr_at(s, plan.train, plan.model.d_model) for s in range(plan.train.steps)]
        assert max(lrs) == plan.train.lr and lrs.index(max(lrs)) < plan.train.steps // 10  # warm-up is short
    assert not (tmp_path / "never-written").exists()


def test_train_config_file_relaunches_a_run_bit_exactly(tmp_path, capsys):
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["train", *TINY, "--steps", "3", "--run-dir", str(first), "--no-progress", "--seed", "2",
                 "--set", "eval_every=0", "--set", "log_every=1", "--set", "dropout=0.1"]) == 0
    assert main(["train", "--config", str(first / "config.json"), "--run-dir", str(again), "--no-progress"]) == 0
    assert [r["loss"] for r in _rows(first)] == [r["loss"] for r in _rows(again)]
    own = tmp_path / "mine.json"  # a user's own partial config: a preset, some fields, a task spec
    own.write_text(json.dumps({"preset": "tiny", "model": {"d_model": 16, "d_ff": 32},
                               "train": {"steps": 2, "eval_every": 0, "batch_size": 4},
                               "task": {"name": "sort", "min_len": 1, "max_len": 3}}))
    assert main(["train", "--config", str(own), "--run-dir", str(tmp_path / "own"), "--no-progress"]) == 0
    config = json.loads((tmp_path / "own" / "config.json").read_text())
    assert config["model"]["d_model"] == 16 and config["train"]["steps"] == 2 and config["task"]["name"] == "sort"
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["train", "--config", str(bad), "--run-dir", str(tmp_path / "x")]) == 2
    assert "expected a JSON object" in capsys.readouterr().err


def test_tensorboard_event_files_beside_metrics(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", *TINY, "--steps", "2", "--run-dir", str(run), "--no-progress", "--set", "tensorboard=true",
            "--set", "log_every=1", "--set", "eval_every=2"]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert main(argv) == 2  # without the optional package: one line saying what to install
        assert "tensorboard package" in capsys.readouterr().err
        pytest.skip("the optional tensorboard package is not installed")
    assert main(argv) == 0
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    expected = [r["loss"] for r in _rows(run) if "split" not in r]
    assert losses == pytest.approx(expected, rel=1e-6)  # TensorBoard stores float32
    assert "val/loss" in acc.Tags()["scalars"]
