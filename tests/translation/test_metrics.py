"""BLEU / chrF through our wrapper equal direct sacreBLEU calls; lowercasing and signatures as documented."""

import pytest
import sacrebleu

from selfattn.translation.metrics import corpus_scores

HYPS = ["The cat sat on the mat.", "A Dog runs in the park!", "two people are walking", "Hello world"]
REFS = ["The cat is sitting on the mat.", "A dog runs through the park.", "Two people are walking.", "Hello, world"]


def test_equals_direct_sacrebleu_calls():
    s = corpus_scores(HYPS, REFS)
    assert s["bleu"] == sacrebleu.corpus_bleu(HYPS, [REFS]).score  # defaults: cased, 13a
    assert s["bleu_lc"] == sacrebleu.corpus_bleu(HYPS, [REFS], lowercase=True).score
    assert s["chrf"] == sacrebleu.corpus_chrf(HYPS, [REFS]).score


def test_lowercase_equals_cased_on_lowercased_text_and_perfect_is_100():
    s = corpus_scores(HYPS, REFS)
    lower = corpus_scores([h.lower() for h in HYPS], [r.lower() for r in REFS])
    assert s["bleu_lc"] == pytest.approx(lower["bleu"], abs=1e-9)
    assert s["bleu_lc"] > s["bleu"]  # "Dog"/"dog" and "two"/"Two" only match lowercased
    assert corpus_scores(REFS, REFS)["bleu"] == pytest.approx(100.0)


def test_signatures_name_the_settings():
    sig = corpus_scores(HYPS, REFS)["signatures"]
    assert "case:mixed" in sig["bleu"] and "tok:13a" in sig["bleu"] and "nrefs:1" in sig["bleu"]
    assert "case:lc" in sig["bleu_lc"]
    assert sig["chrf"].startswith("nrefs:1|case:mixed") and "nc:6" in sig["chrf"]
    assert f"version:{sacrebleu.__version__}" in sig["bleu"]


def test_errors():
    with pytest.raises(ValueError, match="one hypothesis per reference, got 1 hypotheses and 2"):
        corpus_scores(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="at least one reference"):
        corpus_scores([], [])
