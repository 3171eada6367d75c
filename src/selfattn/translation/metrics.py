"""Translation metrics through sacreBLEU (Post 2018): BLEU (cased, detokenized, 13a), lowercased BLEU, chrF.

Scores are computed on detokenized system output against raw references, the WMT convention, and each
comes with sacreBLEU's signature string (what to quote beside a number so others can reproduce it).
"""

from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF


def _check(hyps: list[str], refs: list[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"need one hypothesis per reference, got {len(hyps)} hypotheses and {len(refs)} references")
    if not refs:
        raise ValueError("need at least one reference sentence, got none")


def corpus_scores(hyps: list[str], refs: list[str]) -> dict:
    """{"bleu", "bleu_lc", "chrf"} floats (0..100) and {"signatures": {...}} for one reference per sentence."""
    _check(hyps, refs)
    bleu, bleu_lc, chrf = BLEU(tokenize="13a"), BLEU(tokenize="13a", lowercase=True), CHRF()
    b, lc, c = (m.corpus_score(hyps, [refs]) for m in (bleu, bleu_lc, chrf))
    return {"bleu": b.score, "bleu_lc": lc.score, "chrf": c.score,
            "signatures": {"bleu": str(bleu.get_signature()), "bleu_lc": str(bleu_lc.get_signature()),
                           "chrf": str(chrf.get_signature())},
            "bleu_detail": str(b)}


__all__ = ["corpus_scores"]
