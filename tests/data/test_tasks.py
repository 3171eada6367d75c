"""Synthetic tasks and the char-LM task against their definitions, written out independently here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selfattn.data import IGNORE, CharLMTask, SyntheticTask, Vocab, task_from_spec


def _words(task, ids):
    return [task.vocab.tokens[i] for i in ids]


@pytest.mark.parametrize("name", ["copy", "reverse", "sort", "addition"])
def test_batches_encode_the_task_definition(name):
    task = SyntheticTask(name, min_len=1, max_len=4)
    batch = task.batch("train", 3, 32)
    for src, tin, tout in zip(batch.src, batch.tgt_in, batch.tgt_out):
        words = [w for w in _words(task, src.tolist()) if w != "<pad>"]
        target = [w for w in _words(task, [t for t in tout.tolist() if t != IGNORE])]
        assert target[-1] == "<eos>"
        target = target[:-1]
        if name == "copy":
            assert target == words
        elif name == "reverse":
            assert target == words[::-1]
        elif name == "sort":
            assert target == sorted(words, key=int)
        else:
            i = words.index("+")
            assert "".join(target) == str(int("".join(words[:i])) + int("".join(words[i + 1:])))
        assert tin[0] == task.vocab.bos_id
        assert tin[1 : len(target) + 1].tolist() == tout[: len(target)].tolist()  # teacher forcing shift


def test_batches_are_a_pure_function_of_the_index_and_held_out_sequences_never_train():
    task = SyntheticTask("reverse", max_len=3, num_symbols=4)
    a, b = task.batch("train", 7, 64), task.batch("train", 7, 64)
    assert torch.equal(a.src, b.src) and torch.equal(a.tgt_out, b.tgt_out)
    assert not torch.equal(task.batch("train", 8, 64).src, a.src)
    val = {tuple(x) for x in task.eval_sources()}
    assert val and all(task.held_out(list(x)) for x in val)
    for i in range(20):
        for row in task.batch("train", i, 64).src.tolist():
            assert tuple(r for r in row if r != task.vocab.pad_id) not in val


def test_example_sentence_is_in_vocabulary():
    task = SyntheticTask("reverse")
    assert task.vocab.decode(task.solve(task.vocab.encode("1 2 3 4 5"))) == "5 4 3 2 1"
    assert task.vocab.decode(task.vocab.encode("1 banana")) == "1 <unk>"


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet="abc xyz\n", min_size=1, max_size=40))
def test_char_vocab_roundtrip(text):
    vocab = Vocab(sorted(set(text)), kind="char")
    assert vocab.decode(vocab.encode(text)) == text
    assert Vocab.from_dict(vocab.to_dict()).tokens == vocab.tokens


def test_char_lm_task_splits_and_windows(tmp_path):
    text = "".join(chr(ord("a") + (i * 7) % 26) for i in range(1000))
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    task = CharLMTask(path, block_size=16, train_fraction=0.9)
    ids = torch.tensor(task.vocab.encode(text))
    assert torch.equal(task.data["train"], ids[:900]) and torch.equal(task.data["val"], ids[900:])
    b = task.batch("train", 0, 8)
    assert b.src is None and b.tgt_in.shape == (8, 16)
    assert torch.equal(b.tgt_in[:, 1:], b.tgt_out[:, :-1])  # targets are inputs shifted by one
    windows = torch.cat([x.tgt_in for x in task.eval_batches("val", 2)])
    assert windows.shape == ((100 - 1) // 16, 16)
    assert torch.equal(windows.flatten(), ids[900 : 900 + windows.numel()])
    again = task_from_spec(task.spec())
    assert again.vocab.tokens == task.vocab.tokens


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        SyntheticTask("translate")
    with pytest.raises(ValueError, match="min_len"):
        SyntheticTask("copy", min_len=5, max_len=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CharLMTask(tmp_path / "missing.txt")
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 100)
    with pytest.raises(ValueError, match="not UTF-8"):
        CharLMTask(binary)
    short = tmp_path / "s.txt"
    short.write_text("abc")
    with pytest.raises(ValueError, match="need at least"):
        CharLMTask(short, block_size=8)
    with pytest.raises(ValueError, match="not in the"):
        Vocab(["a", "b"], kind="char").encode("abc")


SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare" / "input.txt"


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="tinyshakespeare not present beside the repo")
def test_tinyshakespeare_has_nanogpts_vocabulary():
    task = CharLMTask(SHAKESPEARE)
    assert len(task.vocab) == 65  # nanoGPT's shakespeare_char vocabulary
    assert len(task.data["train"]) == int(len(SHAKESPEARE.read_text()) * 0.9)
