"""``selfattn explain``, ``viz`` and ``plot`` from the command line: outputs and one-line errors."""

from __future__ import annotations

import json

import pytest

from selfattn.cli import main


def test_explain_prints_every_step(capsys):
    assert main(["explain", "1 2 3 4 5", "--head", "1"]) == 0
    out = capsys.readouterr().out
    for step in ("random weights", "1. tokens", "token embeddings", "positional encodings", "queries Q",
                 "keys K", "values V", "scores QKᵀ/√d_k", "softmax weights", "weights·V", "residual"):
        assert step in out


def test_explain_causal_lm_shows_masked_scores(capsys):
    assert main(["explain", "a b c", "--model", "decoder", "--layer", "1", "--positional", "rope"]) == 0
    out = capsys.readouterr().out
    assert "-inf" in out and "RoPE" in out


@pytest.mark.parametrize("argv,message", [
    (["explain", "1 2 3", "--head", "9"], "head must be in [0, 2)"),
    (["explain", "   "], "at least one token"),
    (["explain", "1 2", "--d-model", "6", "--heads", "4"], "divisible"),
])
def test_explain_user_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
