"""Building blocks: multi-head attention, feed-forward, norms, encoder/decoder layers."""

from .attention import KVCache, MultiHeadAttention
from .blocks import DecoderLayer, DecoderLayerCache, EncoderLayer, LayerSpec
from .feedforward import FeedForward
from .norm import RMSNorm, make_norm

__all__ = ["DecoderLayer", "DecoderLayerCache", "EncoderLayer", "FeedForward", "KVCache",
           "LayerSpec", "MultiHeadAttention", "RMSNorm", "make_norm"]
