"""`selfattn train / generate / evaluate` end to end on tiny runs, and their one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from selfattn.cli import main
from selfattn.training import latest_checkpoint


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster on a shared, oversubscribed CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
