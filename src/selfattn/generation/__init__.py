"""Generation: greedy, sampling and beam search over a key/value cache (see ``search`` and ``beam``)."""

from .beam import Hypothesis, beam_search, length_penalty
from .search import filter_logits, greedy, sample

__all__ = ["Hypothesis", "beam_search", "filter_logits", "greedy", "length_penalty", "sample"]
