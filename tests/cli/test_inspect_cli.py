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


def test_viz_writes_html_and_pngs(tmp_path, capsys):
    out = tmp_path / "viz"
    assert main(["viz", "the cat sat", "--target", "le chat", "--out", str(out), "--single", "1:1"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["attention.html", "encoder_grid.png", "decoder_grid.png", "cross_grid.png",
                            "encoder_layer1_head1.png", "decoder_layer1_head1.png", "cross_layer1_head1.png"])
    page = (out / "attention.html").read_text()
    assert "<script src" not in page and "<link" not in page and "http" not in page  # offline, self-contained
    assert (out / "encoder_grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv,message", [
    (["viz", "a b", "--show-heads", "7"], "heads must be ints in [0, 2)"),
    (["viz", "a b", "--single", "x"], "LAYER:HEAD"),
    (["viz", "a b", "--no-html", "--no-png"], "nothing to write"),
    (["plot", "/nonexistent/run"], "no metrics file"),
])
def test_viz_and_plot_user_errors(tmp_path, capsys, argv, message):
    argv = [*argv, "--out", str(tmp_path / "o")] if argv[0] == "viz" else argv
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_plot_cli(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 1 / s, "lr": 1e-3})
                                                      for s in range(1, 5)))
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_run_is_loaded_with_its_weights_and_vocab(tmp_path, capsys):
    import torch

    from selfattn import build_model, preset
    from selfattn.data.vocab import Vocab
    from selfattn.inspect.source import from_checkpoint
    from selfattn.training import checkpoint as ckpt

    vocab = Vocab(["<pad>", "<bos>", "<eos>", "<unk>", "a", "b", "c"])
    cfg = preset("tiny", vocab_size=len(vocab))
    torch.manual_seed(7)
    model = build_model(cfg)
    ckpt.save_checkpoint(tmp_path / "checkpoints", 5, model)
    (tmp_path / "config.json").write_text(json.dumps({"model": cfg.to_dict(), "vocab": vocab.to_dict()}))
    ins = from_checkpoint(tmp_path, "c a b", target="b a")
    assert ins.ids.tolist() == [[6, 4, 5]] and ins.labels == ["c", "a", "b"]
    assert ins.tgt_ids.tolist() == [[1, 5, 4]] and ins.tgt_labels == ["<bos>", "b", "a"]
    for (name, p), q in zip(model.state_dict().items(), ins.model.state_dict().values()):
        assert torch.equal(p, q), name
    assert main(["explain", "a b", "--checkpoint", str(tmp_path), "--head", "3"]) == 0
    assert f"checkpoint {tmp_path}" in capsys.readouterr().out
