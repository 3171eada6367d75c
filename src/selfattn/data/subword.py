"""A joint subword vocabulary (SentencePiece, Kudo & Richardson 2018) trained on both sides of the training data.

One model for source and target (the paper's shared BPE vocabulary, §5.1, which lets the embeddings be
shared, §3.4). Ids 0..3 are ``<pad> <bos> <eos> <unk>`` exactly as in :class:`selfattn.data.tasks.Vocab`, so
:meth:`Subword.vocab` is a drop-in ``Vocab`` for the Trainer and run directories.
The trained model is a few hundred KB of protobuf bytes; :meth:`Subword.to_base64` lets a run directory's
``config.json`` carry it, so translating needs nothing but the run directory.

Subword regularisation: ``encode(text, sample=True)`` draws a segmentation — from the 64 best of the unigram
lattice with smoothing ``alpha`` (Kudo 2018's l = 64, alpha = 0.1: ~10% more pieces on Multi30k) or, for a BPE
model, by dropping merges with probability ``alpha`` (BPE-dropout, Provilkov et al. 2020).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sentencepiece as spm

from ..io import atomic_write_bytes
from .vocab import SPECIALS, Vocab

MODEL_TYPES = ("unigram", "bpe")


BT_TAG = "<bt>"  # marks back-translated (synthetic) sources (Caswell et al. 2019, "Tagged Back-Translation")


@dataclass
class SubwordConfig:
    vocab_size: int = 8000  # Multi30k-sized joint vocabulary (~9M-parameter 3+3 d256 model); the paper: 37k
    model_type: str = "unigram"  # "unigram" (Kudo 2018) or "bpe" (Sennrich et al. 2016)
    character_coverage: float = 1.0  # keep every character: European scripts are small
    max_sentences: int = 2_000_000  # SentencePiece samples at most this many training sentences
    seed: int = 0  # SentencePiece's sampling of training sentences (its global RNG)
    tags: tuple[str, ...] = ()  # whole-piece tags (e.g. BT_TAG for tagged back-translation, Caswell et al. 2019)

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if not isinstance(self.vocab_size, int) or self.vocab_size < len(SPECIALS) + 2:
            raise ValueError(f"vocab_size must be an int >= {len(SPECIALS) + 2}, got {self.vocab_size!r}")
        if not 0.9 <= self.character_coverage <= 1.0:
            raise ValueError(f"character_coverage must be in [0.9, 1], got {self.character_coverage}")


class Subword:
    """A loaded SentencePiece model with the project's special ids (pad 0, bos 1, eos 2, unk 3)."""

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, model_proto: bytes, model_type: str = "unigram"):
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
        if not isinstance(model_proto, (bytes, bytearray)) or not model_proto:
            raise ValueError("Subword needs the non-empty bytes of a SentencePiece model")
        self.proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.proto)
        ids = (self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id())
        if ids != (0, 1, 2, 3):
            raise ValueError(f"SentencePiece model must have pad/bos/eos/unk ids 0/1/2/3, got {ids}")
        self.model_type = model_type  # decides how `encode(sample=True)` samples
        # first id of each whole word piece ("▁" prefix); used by word-level augmentation
        self._word_start = [self.sp.id_to_piece(i).startswith("\u2581") for i in range(len(self))]

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    # -- text <-> ids ---------------------------------------------------------------------------------
    def encode(self, text: str, *, sample: bool = False, alpha: float = 0.1) -> list[int]:
        """Piece ids of ``text`` (no bos/eos). ``sample`` draws a segmentation (see the module docstring)."""
        if not sample:
            return self.sp.encode(text, out_type=int)
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"subword sampling alpha must be in (0, 1), got {alpha}")
        nbest = 64 if self.model_type == "unigram" else -1  # Kudo 2018: l = 64 best; BPE-dropout ignores it
        return self.sp.encode(text, out_type=int, enable_sampling=True, alpha=alpha, nbest_size=nbest)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Detokenized text of ``ids``; stops at eos and drops pad/bos."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                out.append(i)
        return self.sp.decode(out)

    def tag_id(self, tag: str) -> int | None:
        """The id of whole-piece ``tag`` (a SubwordConfig tag), or None when the model has no such piece."""
        i = self.sp.piece_to_id(tag)
        return None if i == self.unk_id and tag != self.sp.id_to_piece(self.unk_id) else int(i)

    def pieces(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def word_starts(self, ids: list[int]) -> list[bool]:
        """True where a piece begins a whitespace word (SentencePiece marks those with "▁")."""
        return [self._word_start[i] if 0 <= i < len(self._word_start) else False for i in ids]

    # -- interop with the task interface -----------------------------------------------------------------
    def vocab(self) -> Vocab:
        """The pieces as a word :class:`Vocab` (ids identical; specials renamed to the project's names)."""
        tokens = [self.sp.id_to_piece(i) for i in range(len(self))]
        tokens[: len(SPECIALS)] = SPECIALS
        return Vocab(tokens, "word")

    def to_base64(self) -> str:
        return base64.b64encode(self.proto).decode("ascii")

    @classmethod
    def from_base64(cls, text: str, model_type: str = "unigram") -> Subword:
        try:
            return cls(base64.b64decode(text.encode("ascii"), validate=True), model_type)
        except (ValueError, UnicodeEncodeError) as e:
            raise ValueError(f"not a base64 SentencePiece model: {e}") from None

    def save(self, path) -> None:
        """Write the ``.model`` file atomically (usable by any SentencePiece tool)."""
        atomic_write_bytes(path, self.proto)


def train_subword(sentences: Iterable[str], cfg: SubwordConfig | None = None) -> Subword:
    """Train a joint model on ``sentences`` (give both languages' training lines)."""
    cfg = cfg or SubwordConfig()
    sentences = [s for s in sentences if s]
    if not sentences:
        raise ValueError("train_subword needs at least one non-empty training sentence")
    buf = io.BytesIO()
    tags: dict[str, Any] = {"user_defined_symbols": list(cfg.tags)} if cfg.tags else {}
    spm.set_random_generator_seed(cfg.seed)  # sentence sampling is global-RNG driven
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=buf, vocab_size=cfg.vocab_size,
            model_type=cfg.model_type, character_coverage=cfg.character_coverage,
            input_sentence_size=cfg.max_sentences, shuffle_input_sentence=True, hard_vocab_limit=False,
            pad_id=0, bos_id=1, eos_id=2, unk_id=3, minloglevel=2, num_threads=2,
            **tags,
        )
    except RuntimeError as e:  # e.g. vocab_size larger than the data allows
        raise ValueError(f"SentencePiece training failed: {e}") from None
    return Subword(buf.getvalue(), cfg.model_type)


__all__ = ["BT_TAG", "MODEL_TYPES", "Subword", "SubwordConfig", "train_subword"]
