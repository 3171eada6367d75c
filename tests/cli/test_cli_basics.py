"""The command line: help, unknown commands, and the mechanism walkthrough."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from selfattn.cli import main
from selfattn.cli.demo import walkthrough


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_walkthrough_output_is_softmax_weighted_values():
    buf = io.StringIO()
    out = walkthrough("1 2 3 4 5", d_model=8, seed=0, console=Console(file=buf, width=200))
    text = buf.getvalue()
    for step in ("positional encoding", "scores", "softmax", "residual"):
        assert step in text
    assert out.shape == (5, 8) and torch.isfinite(out).all()
