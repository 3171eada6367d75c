"""Augmentation: observed rates inside binomial confidence bounds, structure preserved, determinism."""

import math

import pytest
import torch

from selfattn.data.augment import AugmentConfig, augment_pair, blank_words, switchout, word_dropout

Z = 4.4  # two-sided normal quantile for ~1e-5: a correct implementation fails about once in 100k runs


def within_binomial(hits: int, n: int, p: float) -> bool:
    return abs(hits - n * p) <= Z * math.sqrt(n * p * (1 - p))


def words(n_words: int, pieces_per_word: int = 2):
    ids, starts = [], []
    for w in range(n_words):
        for j in range(pieces_per_word):
            ids.append(10 + w * pieces_per_word + j)
            starts.append(j == 0)
    return ids, starts


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_word_dropout_rate_and_whole_words(p):
    ids, starts = words(2000)
    g = torch.Generator().manual_seed(0)
    out = word_dropout(ids, starts, p, g)
    kept_words = {(i - 10) // 2 for i in out}
    assert all(((w * 2 + 10) in out) and ((w * 2 + 11) in out) for w in kept_words)  # words stay whole
    assert out == sorted(out)  # order kept
    assert within_binomial(2000 - len(kept_words), 2000, p)


def test_blanking_rate_and_whole_words():
    ids, starts = words(3000, 3)
    out = blank_words(ids, starts, 0.2, unk_id=3, g=torch.Generator().manual_seed(1))
    assert len(out) == len(ids)
    blanked = [out[3 * w : 3 * w + 3] for w in range(3000)]
    assert all(b == [3, 3, 3] or b == ids[3 * w : 3 * w + 3] for w, b in enumerate(blanked))
    assert within_binomial(sum(b == [3, 3, 3] for b in blanked), 3000, 0.2)


def test_switchout_rate_and_range():
    ids = [4] * 5000
    out = switchout(ids, 0.15, 5, 1005, torch.Generator().manual_seed(2))
    changed = [t for t in out if t != 4]
    assert all(5 <= t < 1005 for t in changed)
    assert within_binomial(len(changed), 5000, 0.15)
    # replacements uniform over 1000 ids: each decile gets about a tenth
    counts = torch.bincount((torch.tensor(changed) - 5) // 100, minlength=10)
    assert all(within_binomial(int(c), len(changed), 0.1) for c in counts)


def test_augment_pair_deterministic_and_off_is_identity():
    ids, starts = words(30)
    tgt = list(range(50, 80))
    cfg = AugmentConfig(word_dropout=0.1, blank=0.1, switchout=0.1)
    kw = dict(word_starts=starts, unk_id=3, vocab_low=4, vocab_high=100)
    a = augment_pair(ids, tgt, cfg, g=torch.Generator().manual_seed(5), **kw)
    b = augment_pair(ids, tgt, cfg, g=torch.Generator().manual_seed(5), **kw)
    assert a == b and a != (ids, tgt)
    off = augment_pair(ids, tgt, AugmentConfig(), g=torch.Generator().manual_seed(5), **kw)
    assert off == (ids, tgt)


def test_never_empty_and_errors():
    assert word_dropout([7], [True], 0.99, torch.Generator().manual_seed(0)) == [7]
    with pytest.raises(ValueError, match=r"word_dropout must be in \[0, 1\)"):
        AugmentConfig(word_dropout=1.0)
    with pytest.raises(ValueError, match="switchout needs"):
        switchout([1], 0.5, 5, 5, torch.Generator())
