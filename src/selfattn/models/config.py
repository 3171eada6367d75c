"""Typed model configuration and named presets.

One dataclass describes all three model kinds: ``"encoder-decoder"`` (the paper's Transformer),
``"encoder"`` (BERT-style) and ``"decoder"`` (GPT-style language model).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..layers.blocks import LayerSpec
from ..layers.feedforward import ACTIVATIONS
from ..positional import POSITIONAL_KINDS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_D = TypeVar("_D", bound="DataclassInstance")

MODEL_KINDS = ("encoder-decoder", "encoder", "decoder")
ATTENTION_TYPES = ("full", "sliding", "linear")
CHOICES: dict[str, tuple[str, ...]] = {
    "kind": MODEL_KINDS, "activation": tuple(ACTIVATIONS), "norm": ("layernorm", "rmsnorm"),
    "positional": tuple(POSITIONAL_KINDS), "attention_type": ATTENTION_TYPES,
}
# (min, max) of each int field. The maxima are sanity bounds far above any real model (GPT-3 has
# c 12288, 96 layers, 96 heads; vocabularies reach ~256k) that stop a hostile or mistyped config
# before it allocates: layers <= 1024 as the issue asks, the rest a power of two with room to spare.
INT_RANGES: dict[str, tuple[int, int]] = {
    "vocab_size": (1, 2**24), "src_vocab_size": (1, 2**24), "d_model": (1, 2**16), "num_heads": (1, 2**12),
    "num_kv_heads": (1, 2**12), "d_ff": (1, 2**20), "num_encoder_layers": (0, 1024),
    "num_decoder_layers": (0, 1024), "max_len": (1, 2**24), "type_vocab_size": (0, 2**16),
    "window": (0, 2**24), "pad_id": (0, 2**24),
}
OPTIONAL_INTS = ("src_vocab_size", "num_kv_heads", "pad_id")  # None has a meaning (see the fields)


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"ModelConfig.{name} must be one of {allowed}, got {value!r}")


def _int_in(name: str, value: Any, lo: int, hi: int, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"ModelConfig.{name} must be an int in [{lo}, {hi}]{' or None' if optional else ''}, "
                         f"got {value!r}")


def _float_in(name: str, value: Any, lo: float, hi: float, *, closed_lo: bool = True, closed_hi: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo <= value if closed_lo else lo < value) and (value <= hi if closed_hi else value < hi)
    if not ok:
        interval = f"{'[' if closed_lo else '('}{lo}, {hi}{']' if closed_hi else ')'}"
        raise ValueError(f"ModelConfig.{name} must be a number in {interval}, got {value!r}")


def dataclass_from_dict(cls: type[_D], d: dict[str, Any], label: str) -> _D:
    """``cls(**d)``, but unknown keys give a ValueError that lists the known ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {label} keys {unknown}; expected some of {sorted(names)}")
    return cls(**d)


@dataclass
class ModelConfig:
    kind: str = "encoder-decoder"  # the paper's model
    vocab_size: int = 37000  # the paper's shared BPE vocabulary for WMT En-De
    src_vocab_size: int | None = None  # None = shared with the target (paper §3.4)
    d_model: int = 512
    num_heads: int = 8
    num_kv_heads: int | None = None  # None = num_heads (multi-head); fewer = grouped-query
    d_ff: int = 2048  # 4 x d_model, the paper's inner width
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout: float = 0.1  # P_drop of the base model (§5.4): sublayer outputs and embedding sums
    attention_dropout: float = 0.0  # the paper applies no dropout to attention weights
    activation: str = "relu"  # the paper's FFN; "gelu", "gelu_tanh", "swiglu" for modern models
    norm: str = "layernorm"  # or "rmsnorm"
    norm_first: bool = False  # post-norm as in the paper; pre-norm trains deeper stacks more stably
    final_norm: bool | None = None  # norm after each stack; None = only with pre-norm (needed there)
    norm_eps: float = 1e-5  # PyTorch's LayerNorm default, as in nn.Transformer
    bias: bool = True  # biases in linear layers, as in the paper
    positional: str = "sinusoidal"  # one of POSITIONAL_KINDS
    max_len: int = 4096  # positions for learned tables (sinusoidal tables grow on demand)
    share_embeddings: bool = True  # source, target and output projection share one matrix (§3.4)
    scale_embeddings: bool = True  # multiply embeddings by sqrt(d_model) (§3.4)
    embed_norm: bool = False  # LayerNorm after the embedding sum (BERT)
    type_vocab_size: int = 0  # token-type (segment) embeddings (BERT); 0 = none
    # "full", "sliding" with `window`, or "linear" (self-attention); layer_spec maps it onto the
    # layers' `window` and `kernel` ("softmax" | "linear"), which are separate words on purpose.
    attention_type: str = "full"
    window: int = 256  # keys on each side (encoder) or to the left (decoder) for sliding attention
    attention_backend: str = "auto"  # any name in selfattn.BACKENDS
    pad_id: int | None = 0  # padding token id: masks are built from it when none are given
    extra: dict[str, Any] = field(default_factory=dict)  # free-form metadata (tokenizer, task)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Types and ranges of every field, up front: one ValueError naming the field, expected and given."""
        for name in ("kind", "activation", "norm", "positional", "attention_type"):
            _one_of(name, getattr(self, name), CHOICES[name])
        for name, (lo, hi) in INT_RANGES.items():
            _int_in(name, getattr(self, name), lo, hi, optional=name in OPTIONAL_INTS)
        for name in ("norm_first", "bias", "share_embeddings", "scale_embeddings", "embed_norm", "final_norm"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "final_norm" and value is None):
                raise ValueError(f"ModelConfig.{name} must be a bool{' or None' if name == 'final_norm' else ''}, "
                                 f"got {value!r}")
        _float_in("dropout", self.dropout, 0.0, 1.0, closed_hi=False)
        _float_in("attention_dropout", self.attention_dropout, 0.0, 1.0, closed_hi=False)
        _float_in("norm_eps", self.norm_eps, 0.0, 1.0, closed_lo=False)
        if not isinstance(self.attention_backend, str) or not self.attention_backend:
            raise ValueError("ModelConfig.attention_backend must be a backend name (str), "
                             f"got {self.attention_backend!r}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"ModelConfig.extra must be a dict, got {type(self.extra).__name__}")
        self._check_relations()

    def _check_relations(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({kv})")
        if self.positional == "rope" and (self.d_model // self.num_heads) % 2:
            raise ValueError("rope needs an even head dim (d_model / num_heads)")
        if self.kind != "decoder" and self.num_encoder_layers < 1:
            raise ValueError(f"a {self.kind!r} model needs num_encoder_layers >= 1, got {self.num_encoder_layers}")
        if self.kind != "encoder" and self.num_decoder_layers < 1:
            raise ValueError(f"a {self.kind!r} model needs num_decoder_layers >= 1, got {self.num_decoder_layers}")
        for name in ("vocab_size", "src_vocab_size"):
            vocab = getattr(self, name)
            if self.pad_id is not None and vocab is not None and self.pad_id >= vocab:
                raise ValueError(f"ModelConfig.pad_id must be < {name} ({vocab}), got {self.pad_id}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def uses_final_norm(self) -> bool:
        return self.norm_first if self.final_norm is None else self.final_norm

    def layer_spec(self, *, decoder: bool) -> LayerSpec:
        window = None
        if self.attention_type == "sliding":
            window = (self.window, 0 if decoder else self.window)
        return LayerSpec(
            d_model=self.d_model, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
            d_ff=self.d_ff, dropout=self.dropout, attention_dropout=self.attention_dropout,
            activation=self.activation, norm=self.norm, norm_first=self.norm_first,
            norm_eps=self.norm_eps, bias=self.bias, rope=self.positional == "rope",
            alibi=self.positional == "alibi", window=window, backend=self.attention_backend,
            kernel="linear" if self.attention_type == "linear" else "softmax",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return dataclass_from_dict(cls, d, "config")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, dict[str, Any]] = {
    # Vaswani et al. 2017, Table 3 "base": 65M parameters with a 37k shared vocabulary.
    "paper-base": {},
    # Table 3 "big": d 1024, 16 heads, d_ff 4096, P_drop 0.3 (0.1 for En-Fr).
    "paper-big": dict(d_model=1024, num_heads=16, d_ff=4096, dropout=0.3),
    # Small enough for a laptop CPU: synthetic tasks and unit tests.
    "tiny": dict(vocab_size=32, d_model=64, num_heads=4, d_ff=128, num_encoder_layers=2,
                 num_decoder_layers=2, dropout=0.0, max_len=512),
    # A 3+3-layer d256 translation model (Multi30k scale), pre-norm for stable CPU training.
    "small": dict(vocab_size=8000, d_model=256, num_heads=8, d_ff=1024, num_encoder_layers=3,
                  num_decoder_layers=3, dropout=0.1, norm_first=True),
    # A GPT-style character LM in the spirit of nanoGPT's CPU recipe.
    "char-lm": dict(kind="decoder", vocab_size=65, d_model=128, num_heads=4, d_ff=512,
                    num_encoder_layers=0, num_decoder_layers=4, dropout=0.0, norm_first=True,
                    activation="gelu", positional="learned", max_len=256, pad_id=None,
                    scale_embeddings=False),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A :class:`ModelConfig` from a named preset, with keyword overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
