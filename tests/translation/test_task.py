"""The translation task behind the Trainer interface: exact-once epochs, token budget, purity, spec round trip."""

from pathlib import Path

import pytest
import torch

from selfattn.data.augment import AugmentConfig
from selfattn.task import IGNORE, task_from_spec
from selfattn.translation.task import TranslateConfig, TranslationTask

DE = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", "Eine Frau liest ein Buch.",
      "Kinder spielen Fußball auf der Straße.", "Ein Hund rennt.", "Die Sonne scheint über dem See."]
EN = ["A man rides a bike.", "Two dogs play in the snow.", "A woman reads a book.",
      "Children play soccer in the street.", "A dog runs.", "The sun shines over the lake."]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("para")
    words = [w for s in DE + EN for w in s.split()]
    g = torch.Generator().manual_seed(0)
    src, tgt = [], []
    for i in range(120):  # sentences of varied length built from the vocabulary
        n = int(torch.randint(1, 12, (1,), generator=g))
        ws = [words[int(j)] for j in torch.randint(0, len(words), (n,), generator=g)]
        src.append(" ".join(ws))
        tgt.append(" ".join(reversed(ws)))
    (d / "train.de").write_text("\n".join(src + DE) + "\n")
    (d / "train.en").write_text("\n".join(tgt + EN) + "\n")
    (d / "val.de").write_text("\n".join(DE) + "\n")
    (d / "val.en").write_text("\n".join(EN) + "\n")
    (d / "test2016.de").write_text("\n".join(DE[:3]) + "\n")
    (d / "test2016.en").write_text("\n".join(EN[:3]) + "\n")
    return d


@pytest.fixture(scope="module")
def task(data_dir) -> TranslationTask:
    return TranslationTask(TranslateConfig(data=str(data_dir), vocab_size=150, max_tokens=96, max_len=40))


def test_one_epoch_covers_every_pair_once_within_budget(task):
    n = len(task.batches)
    seen = []
    for i in range(n):
        b = task.batch("train", i, 0)
        assert b.src.numel() <= 96 and b.tgt_in.numel() <= 96  # padded tokens per side
        for row_src, row_out in zip(b.src.tolist(), b.tgt_out.tolist()):
            s = [t for t in row_src if t != 0]
            y = [t for t in row_out if t != IGNORE]
            assert y[-1] == task.subword.eos_id
            seen.append((tuple(s), tuple(y[:-1])))
    expected = sorted((tuple(s), tuple(t)) for s, t in task.train_ids)
    assert sorted(seen) == expected


def test_batches_are_pure_functions_of_the_index_and_epochs_reshuffle(task):
    n = len(task.batches)
    a = task.batch("train", 3, 0)
    task.batch("train", n + 5, 0)  # touch another epoch
    b = task.batch("train", 3, 0)
    assert a.src.equal(b.src) and a.tgt_out.equal(b.tgt_out)
    order0 = [tuple(task.batch("train", i, 0).src.flatten().tolist()) for i in range(n)]
    order1 = [tuple(task.batch("train", n + i, 0).src.flatten().tolist()) for i in range(n)]
    assert sorted(order0) == sorted(order1) and order0 != order1


def test_augmented_batches_deterministic_and_different(data_dir):
    aug = AugmentConfig(word_dropout=0.2, switchout=0.1, subword_alpha=0.1)
    t = TranslationTask(TranslateConfig(data=str(data_dir), vocab_size=150, max_tokens=96, max_len=40, augment=aug))
    plain = TranslationTask.from_spec({**t.spec(), "augment": {}})
    a, b = t.batch("train", 2, 0), t.batch("train", 2, 0)
    assert a.src.equal(b.src) and a.tgt_in.equal(b.tgt_in)
    c = plain.batch("train", 2, 0)
    assert len(a) == len(c) and not (a.src.shape == c.src.shape and a.src.equal(c.src))


def test_spec_round_trip_through_task_from_spec(task):
    again = task_from_spec(task.spec())
    assert isinstance(again, TranslationTask)
    assert again.subword.proto == task.subword.proto and again.batches == task.batches
    assert again.vocab.tokens == task.vocab.tokens
    o = task.model_overrides()
    assert o["kind"] == "encoder-decoder" and o["vocab_size"] == len(task.subword) and o["pad_id"] == 0


def test_eval_splits_and_errors(task, data_dir):
    srcs, refs, pairs = task.eval_pairs("test")  # found as test2016.*
    assert srcs == DE[:3] and refs == EN[:3] and len(pairs) == 3
    assert sum(len(b) for b in task.eval_batches("val", 4)) == len(DE)
    with pytest.raises(ValueError, match="'val' or 'test'"):
        task.eval_pairs("train")
    with pytest.raises(FileNotFoundError, match="no train split"):
        TranslationTask(TranslateConfig(data=str(data_dir), src="fr", tgt="en"))
    with pytest.raises(ValueError, match="max_tokens .* must be > max_len"):
        TranslateConfig(max_tokens=10, max_len=10)
