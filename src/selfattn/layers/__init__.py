"""Building blocks: multi-head attention, feed-forward, norms, encoder/decoder layers."""

from .attention import MultiHeadAttention
from .blocks import DecoderLayer, DecoderLayerCache, EncoderLayer, LayerSpec
from .feedforward import FeedForward
from .kv_cache import KVCache
from .norm import RMSNorm, make_norm

__all__ = ["DecoderLayer", "DecoderLayerCache", "EncoderLayer", "FeedForward", "KVCache",
           "LayerSpec", "MultiHeadAttention", "RMSNorm", "make_norm"]
