"""``--pack``: the translation task's packed rows, end to end through the task, the training forward and the CLI.

The model-level equality (each pair's logits and gradients in a packed row equal those it gets alone) is in
tests/models/test_packed.py; here the independent side is the same task unpacked: the same pairs, one a row.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import selfattn
from selfattn.data.tasks import seq2seq_batch
from selfattn.models import preset
from selfattn.task import IGNORE
from selfattn.training.forward import forward_logits
from selfattn.training.loss import smoothed_cross_entropy
from selfattn.translation.task import TranslateConfig, TranslationTask

WORDS = "ein mann eine frau fährt fahrrad der hund läuft im park zwei kinder spielen".split()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pack")
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 150), ("val", 8), ("test2016", 4)):
        lines = []
        for _ in range(n):  # lengths 1..14 words: the padding of length-sorted batches is not zero
            k = int(torch.randint(1, 15, (1,), generator=g))
            lines.append(" ".join(WORDS[int(j)] for j in torch.randint(0, len(WORDS), (k,), generator=g)))
        (d / f"{split}.de").write_text("\n".join(lines) + "\n")
        (d / f"{split}.en").write_text("\n".join(" ".join(reversed(s.split())) for s in lines) + "\n")
    return d


def _config(data_dir, pack: int) -> TranslateConfig:
    return TranslateConfig(data=str(data_dir), vocab_size=60, max_tokens=256, max_len=40, pack=pack, bleu_eval_size=0)


@pytest.fixture(scope="module")
def tasks(data_dir):
    """(unpacked, packed) tasks over the same pairs and subword model."""
    unpacked = TranslationTask(_config(data_dir, 0))
    return unpacked, TranslationTask(_config(data_dir, 64), unpacked.subword)


def test_pack_must_fit_every_pair(data_dir):
    with pytest.raises(ValueError, match=r"pack \(row capacity\) must be 0 or in max_len \+ 1 \.\. max_tokens"):
        TranslateConfig(data=str(data_dir), max_len=40, max_tokens=256, pack=30)


def test_an_epoch_of_packed_rows_holds_every_pair_once_within_capacity(tasks):
    unpacked, packed = tasks
    seen = []
    for i in range(len(packed.batches)):
        b = packed.batch("train", i, 0)
        assert b.segment_ids is not None and b.src.shape[1] <= 64 and b.tgt_in.shape[1] <= 64
        assert b.src.shape[0] <= 256 // 64
        for r in range(b.src.shape[0]):
            for k in range(1, int(b.src_seg[r].max()) + 1):
                src = b.src[r][b.src_seg[r] == k].tolist()
                out = b.tgt_out[r][b.tgt_seg[r] == k].tolist()
                assert out[-1] == packed.subword.eos_id and IGNORE not in out
                seen.append((tuple(src), tuple(out[:-1])))
    assert sorted(seen) == sorted((tuple(s), tuple(t)) for s, t in unpacked.train_ids)
    pad_before, pad_after = unpacked.padding(), packed.padding()
    assert pad_after["src"] < pad_before["src"] and pad_after["tgt"] < pad_before["tgt"]


def test_packed_loss_is_the_unpacked_loss_of_the_same_pairs(tasks):
    # float64, no dropout: a packed batch's summed loss equals the same pairs' loss one a row
    unpacked, packed = tasks
    torch.manual_seed(0)
    model = selfattn.build_model(preset("tiny", vocab_size=len(unpacked.subword), pad_id=0, dropout=0.0)).double()
    b = packed.batch("train", 0, 0)
    loss = smoothed_cross_entropy(forward_logits(model, b), b.tgt_out, 0.1)
    pairs = {}
    for r in range(b.src.shape[0]):
        for k in range(1, int(b.src_seg[r].max()) + 1):
            pairs[(tuple(b.src[r][b.src_seg[r] == k].tolist()),
                   tuple(b.tgt_out[r][b.tgt_seg[r] == k].tolist()[:-1]))] = None
    index = {(tuple(s), tuple(t)): i for i, (s, t) in enumerate(unpacked.train_ids)}
    alone = seq2seq_batch([unpacked.train_ids[index[p]] for p in pairs], unpacked.vocab)
    want = smoothed_cross_entropy(forward_logits(model, alone), alone.tgt_out, 0.1)
    assert b.num_targets == alone.num_targets
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=0)


def test_selfattn_train_pack_in_a_subprocess(data_dir, tmp_path):
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "selfattn", "train", "--task", "translate", "--data", str(data_dir),
                        "--vocab-size", "60", "--preset", "tiny", "--max-tokens", "256", "--max-len", "40",
                        "--pack", "64", "--steps", "3", "--no-progress", "--bleu-eval-size", "0",
                        "--run-dir", str(run)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "packed into rows of 64 tokens" in p.stdout and "padding" in p.stdout
    assert (run / "checkpoints").is_dir()
