"""Data: synthetic sequence tasks, character-level LM text, and the task interface (see ``tasks``)."""

from .tasks import IGNORE, SPECIALS, TASKS, Batch, SyntheticTask, Vocab, seq2seq_batch, task_from_spec
from .text import CharLMTask, read_text

__all__ = ["IGNORE", "SPECIALS", "TASKS", "Batch", "CharLMTask", "SyntheticTask", "Vocab", "read_text",
           "seq2seq_batch", "task_from_spec"]
