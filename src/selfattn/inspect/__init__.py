"""Looking inside: the mechanism step by step, attention maps at any length, pictures.

* :func:`capture_attention` — weights of any layers/heads/rows of any selfattn model, recomputed
  blockwise from q, k and the row log-sum-exp, whatever backend the model runs (see capture.py).
* :mod:`.explain` — ``selfattn explain``: every step of one head on real numbers (rich tables).
* :mod:`.heatmap` — PNG heatmaps (matplotlib); :mod:`.html` — a self-contained interactive viewer.
* :mod:`.curves` — training curves from a run's ``metrics.jsonl``.

Mask convention: boolean True = may attend; ``causal`` is bottom-right aligned.
"""

from .capture import AttentionCapture, attention_modules, available_kinds, blockwise_weights, capture_attention

__all__ = ["AttentionCapture", "attention_modules", "available_kinds", "blockwise_weights", "capture_attention"]
