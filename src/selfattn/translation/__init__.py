"""Machine translation: the translation task for the Trainer, batched beam-search translation, sacreBLEU scores.

See :mod:`.task` (data, subwords, token batches, augmentation behind the task interface),
:mod:`.translate` (decoding and loading a run) and :mod:`.metrics` (BLEU / chrF with signatures).
"""

from .metrics import corpus_scores
from .task import TranslateConfig, TranslationTask
from .translate import DecodeConfig, load_translation_run, translate, translate_ids

__all__ = ["DecodeConfig", "TranslateConfig", "TranslationTask", "corpus_scores", "load_translation_run",
           "translate", "translate_ids"]
