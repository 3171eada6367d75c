"""The command line: help, unknown commands, and the demo's walkthrough mode."""

from __future__ import annotations

import pytest

from selfattn.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "train", "generate", "evaluate", "explain", "viz", "embed", "translate"):
        assert command in out


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_demo_walkthrough_explains_a_random_model(capsys):
    assert main(["demo", "--walkthrough"]) == 0
    text = capsys.readouterr().out
    for step in ("positional", "softmax", "residual", "check:"):
        assert step.lower() in text.lower()
