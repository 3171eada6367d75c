"""Data: vocabularies, synthetic sequence tasks, character-level LM text, parallel corpora, subwords, batching.

The task contract itself (``Task``, ``Batch``, the registry) is :mod:`selfattn.task`; importing this package
registers the synthetic tasks and ``"char"``.
"""

from ..task import IGNORE, Batch, task_from_spec
from .tasks import TASKS, SyntheticTask, seq2seq_batch
from .text import CharLMTask, read_text
from .vocab import SPECIALS, Vocab

__all__ = ["IGNORE", "SPECIALS", "TASKS", "Batch", "CharLMTask", "SyntheticTask", "Vocab", "read_text",
           "seq2seq_batch", "task_from_spec"]
