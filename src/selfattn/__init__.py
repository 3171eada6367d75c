"""selfattn: self-attention and the Transformer built from it.

Mask convention everywhere: boolean True = may attend. ``causal`` is bottom-right aligned.
"""

from .attention import BACKENDS, attention, explain_backend, register_backend
from .interop.pretrained import load_pretrained  # Hugging Face checkpoints (BERT, GPT-2)
from .layers import DecoderLayer, EncoderLayer, FeedForward, KVCache, MultiHeadAttention, RMSNorm
from .models import (
    PRESETS,
    ModelConfig,
    Transformer,
    TransformerEncoderModel,
    TransformerLM,
    build_model,
    count_parameters,
    preset,
)
from .task import Task, register_task, task_from_spec

# the built-in tasks register themselves with selfattn.task on import
from . import data as _data, translation as _translation  # noqa: F401  isort: skip

__version__ = "0.1.0"
__all__ = [
    "BACKENDS",
    "PRESETS",
    "DecoderLayer",
    "EncoderLayer",
    "FeedForward",
    "KVCache",
    "ModelConfig",
    "MultiHeadAttention",
    "RMSNorm",
    "Task",
    "Transformer",
    "TransformerEncoderModel",
    "TransformerLM",
    "__version__",
    "attention",
    "build_model",
    "count_parameters",
    "explain_backend",
    "load_pretrained",
    "preset",
    "register_backend",
    "register_task",
    "task_from_spec",
]
