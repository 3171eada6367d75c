"""Models and their configuration."""

from .architectures import Transformer, TransformerEncoderModel, TransformerLM, build_model
from .config import PRESETS, ModelConfig, preset
from .transformer import Decoder, DecoderCache, Embeddings, Encoder, count_parameters, key_mask

__all__ = ["Decoder", "DecoderCache", "Embeddings", "Encoder", "ModelConfig", "PRESETS",
           "Transformer", "TransformerEncoderModel", "TransformerLM", "build_model",
           "count_parameters", "key_mask", "preset"]
