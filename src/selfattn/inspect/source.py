"""Where the inspected model and tokens come from: a small random model, or a trained checkpoint.

Legend: n tokens, c model dim. The random model maps whitespace words to ids (0 = padding), so
``"1 2 3 4 5"`` needs no tokenizer; its weights use the library's own initialisation.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..models import ModelConfig, build_model


@dataclass
class RandomModelSpec:
    """A model small enough that every number fits in a terminal table."""

    kind: str = "encoder"  # "encoder" (BERT-like, bidirectional), "decoder" (causal LM) or "encoder-decoder"
    d_model: int = 8  # 8 columns per table: readable in an 80-column terminal
    num_heads: int = 2  # so d_k = 4: a head is visibly a slice of the model width
    num_layers: int = 2  # enough to show that layer > 0 starts from the previous layer's output
    positional: str = "sinusoidal"  # the paper's §3.5 encodings; "rope"/"alibi"/"t5"/"learned" also work
    seed: int = 0  # same numbers on every run


@dataclass
class Inspected:
    """A model ready to look at, with the tokens of the text (and of the target, for seq2seq)."""

    model: nn.Module
    ids: torch.Tensor  # (1, n)
    labels: list[str]
    tgt_ids: torch.Tensor | None = None  # (1, n_tgt) for an encoder-decoder model
    tgt_labels: list[str] = field(default_factory=list)
    origin: str = "random"  # "random" or the checkpoint path


def word_ids(text: str, vocab: dict[str, int] | None = None) -> tuple[torch.Tensor, list[str], dict[str, int]]:
    """Whitespace words -> ids 1.. in order of first appearance (0 is padding)."""
    words = text.split()
    if not words:
        raise ValueError(f"text must contain at least one token, got {text!r}")
    vocab = dict(vocab or {})
    for w in words:
        vocab.setdefault(w, len(vocab) + 1)
    return torch.tensor([[vocab[w] for w in words]]), words, vocab


def random_model(text: str, spec: RandomModelSpec = RandomModelSpec(), target: str | None = None) -> Inspected:
    """Build a random selfattn model whose vocabulary is the words of ``text`` (and ``target``)."""
    ids, labels, vocab = word_ids(text)
    tgt_ids, tgt_labels = None, list[str]()
    if spec.kind == "encoder-decoder":
        tgt_ids, tgt_labels, vocab = word_ids(target if target is not None else text, vocab)
    if spec.d_model % spec.num_heads:
        raise ValueError(f"d_model ({spec.d_model}) must be divisible by heads ({spec.num_heads})")
    cfg = ModelConfig(
        kind=spec.kind, vocab_size=len(vocab) + 1, d_model=spec.d_model, num_heads=spec.num_heads,
        d_ff=4 * spec.d_model, num_encoder_layers=0 if spec.kind == "decoder" else spec.num_layers,
        num_decoder_layers=0 if spec.kind == "encoder" else spec.num_layers, dropout=0.0,
        positional=spec.positional, max_len=max(512, 2 * ids.shape[1]), pad_id=0,
    )
    torch.manual_seed(spec.seed)
    model = build_model(cfg).eval()
    return Inspected(model, ids, labels, tgt_ids, tgt_labels)


def checkpoint_loader():
    """The training package's run loader, ``load_run(run_dir) -> (model, vocab, config)``, or None."""
    try:
        module = importlib.import_module("selfattn.training.run")
    except ImportError:
        return None
    return getattr(module, "load_run", None)


def from_checkpoint(run: str | Path, text: str, target: str | None = None) -> Inspected:
    """Load a trained run directory (``selfattn train``'s output) and tokenize ``text`` with its vocab.

    An encoder-decoder's target starts with <bos>, as the decoder saw it in training.
    """
    loader = checkpoint_loader()
    if loader is None:
        raise ValueError(f"cannot load {str(run)!r}: this installation has no run loader "
                         "(selfattn.training.run.load_run); leave out --checkpoint for a random model")
    if not Path(run).is_dir():
        raise FileNotFoundError(f"run directory {str(run)!r} does not exist")
    model, vocab, _ = loader(run)
    model = model.eval()

    def encode(t: str, bos: bool) -> tuple[torch.Tensor, list[str]]:
        ids = vocab.encode(t)
        if bos and getattr(vocab, "bos_id", None) is not None:
            ids = [vocab.bos_id, *ids]
        if not ids:
            raise ValueError(f"text must contain at least one token, got {t!r}")
        return torch.tensor([ids]), [vocab.tokens[i] for i in ids]

    ids, labels = encode(text, bos=False)
    tgt_ids, tgt_labels = None, list[str]()
    if model.cfg.kind == "encoder-decoder":
        tgt_ids, tgt_labels = encode(target if target is not None else text, bos=True)
    return Inspected(model, ids, labels, tgt_ids, tgt_labels, origin=str(run))
