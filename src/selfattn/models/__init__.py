"""Models and their configuration."""

from .architectures import Transformer, TransformerEncoderModel, TransformerLM, build_model
from .config import PRESETS, ModelConfig, preset
from .transformer import Decoder, DecoderCache, Embeddings, Encoder, count_parameters, key_mask

__all__ = [
           "PRESETS",
           "Decoder",
           "DecoderCache",
           "Embeddings",
           "Encoder",
           "ModelConfig",
           "Transformer",
           "TransformerEncoderModel",
           "TransformerLM",
           "build_model",
           "count_parameters",
           "key_mask",
           "preset",
]
