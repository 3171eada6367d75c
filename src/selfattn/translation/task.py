"""The translation task: a parallel corpus behind the Trainer's task interface (see :mod:`selfattn.data.tasks`).

Legend: b batch, m source length, n target length.

Data: ``DIR/{train,val,test}.{SRC,TGT}`` (``test2016`` is accepted for ``test``, as in Multi30k).
A joint SentencePiece model is trained on both sides of ``train`` when the task is created, and stored
(base64) in :meth:`TranslationTask.spec`, i.e. in the run directory's ``config.json``: the run directory
alone is enough to translate.

Batches (the paper's §5.1): pairs are grouped once by length into batches of at most ``max_tokens`` padded
source and ``max_tokens`` padded target tokens (:func:`selfattn.data.batching.token_batches`); every epoch
visits all batches in a fresh random order (fairseq's scheme). ``task.batch("train", i, size)`` is a pure
function of (seed, i) — augmentation and subword sampling are seeded by i too — so resuming is exact;
``size`` (TrainConfig.batch_size) is ignored: ``max_tokens`` sets the batch. With subword sampling the
sampled segmentation can be a little longer than the deterministic one the budget was planned on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data.augment import AugmentConfig, augment_pair
from ..data.batching import token_batches
from ..data.packing import pack_first_fit, packed_seq2seq_batch, padding_fraction
from ..data.parallel import ReadConfig, read_parallel, split_files
from ..data.subword import BT_TAG, Subword, SubwordConfig, train_subword
from ..data.tasks import seq2seq_batch
from ..task import Batch, register_task
from ..training.evaluate import evaluate as loss_eval
from .metrics import corpus_scores
from .translate import DecodeConfig, translate

SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "dev"), "test": ("test", "test2016")}


@dataclass
class TranslateConfig:
    data: str = ""  # directory with {train,val,test}.{src,tgt}
    src: str = "de"  # source language suffix
    tgt: str = "en"  # target language suffix
    vocab_size: int = 8000  # joint SentencePiece vocabulary (Multi30k scale)
    subword_type: str = "unigram"  # "unigram" or "bpe"
    max_tokens: int = 4096  # padded tokens per side per batch; the paper used ~25k on 8 GPUs (§5.1)
    max_len: int = 128  # drop training pairs with more subword pieces than this on a side (counted)
    empty: str = "skip"  # empty pairs: "skip" (counted) or "error"
    bleu_eval_size: int = 200  # val sentences greedily decoded for BLEU at each evaluation; 0 = loss only
    seed: int = 0  # batch composition/order, augmentation and subword sampling
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # back-translated pairs (Sennrich et al. 2016): [synthetic source file, real target file], or [] for none
    synthetic: list[str] = field(default_factory=list)
    synthetic_ratio: float = 1.0  # synthetic pairs used per real pair (Sennrich et al.: ~1:1); 0 = all of them
    synthetic_tag: bool = True  # prepend BT_TAG to synthetic sources (Caswell et al. 2019: tagged BT)
    # packed rows (issue #14 §3): several pairs share a row of this many tokens per side, with segment ids; a
    # batch holds max_tokens // pack rows. 0 = one pair a row (length-sorted batches already pad little)
    pack: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if self.max_tokens < self.max_len + 1:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be > max_len ({self.max_len}) so every kept "
                             "pair fits in a batch")
        if self.max_len < 1 or self.bleu_eval_size < 0:
            raise ValueError(f"need max_len >= 1 and bleu_eval_size >= 0, got {self.max_len}, {self.bleu_eval_size}")
        if self.pack and not self.max_len + 1 <= self.pack <= self.max_tokens:
            raise ValueError(f"pack (row capacity) must be 0 or in max_len + 1 .. max_tokens = {self.max_len + 1} .. "
                             f"{self.max_tokens} so every kept pair fits a row, got {self.pack}")
        self.synthetic = [str(p) for p in self.synthetic]
        if len(self.synthetic) not in (0, 2) or self.synthetic_ratio < 0:
            raise ValueError("synthetic must be [source file, target file] and synthetic_ratio >= 0, got "
                             f"{self.synthetic!r}, {self.synthetic_ratio}")


def find_split(directory: str, split: str, src: str, tgt: str) -> tuple[Path, Path]:
    err: Exception | None = None
    for name in SPLIT_NAMES[split]:
        try:
            return split_files(directory, name, src, tgt)
        except FileNotFoundError as e:
            err = err or e
    raise FileNotFoundError(f"no {split} split ({' or '.join(SPLIT_NAMES[split])}): {err}")


class TranslationTask:
    name = "translate"
    kind = "seq2seq"

    def __init__(self, cfg: TranslateConfig, subword: Subword | None = None, *, verbose: bool = False):
        self.cfg = cfg
        self.log = print if verbose else (lambda *a, **k: None)
        read = ReadConfig(empty=cfg.empty)
        train = read_parallel(*find_split(cfg.data, "train", cfg.src, cfg.tgt), read)
        self.log(f"train: {train.report()}")
        tagged = bool(cfg.synthetic) and cfg.synthetic_tag
        if subword is None:  # trained on the real pairs only
            sub_cfg = SubwordConfig(vocab_size=cfg.vocab_size, model_type=cfg.subword_type, seed=cfg.seed,
                                    tags=(BT_TAG,) if tagged else ())
            subword = train_subword(train.src + train.tgt, sub_cfg)
            self.log(f"subword: trained a joint {cfg.subword_type} model with {len(subword)} pieces")
        self.subword, self.vocab = subword, subword.vocab()
        self.tag = subword.tag_id(BT_TAG) if tagged else None
        if tagged and self.tag is None:
            raise ValueError(f"synthetic_tag needs a subword model with the piece {BT_TAG!r}; this one has none")
        self.train_text, self.train_ids = self._encode(train.src, train.tgt)
        self.filtered_long = len(train.src) - len(self.train_ids)
        self.num_real = len(self.train_ids)
        self.log(f"train: kept {self.num_real} pairs, {self.filtered_long} over {cfg.max_len} pieces filtered")
        if cfg.synthetic:
            self._add_synthetic(read_parallel(cfg.synthetic[0], cfg.synthetic[1], read))
        self.batches = self._make_batches()
        self._eval: dict[str, tuple[list[str], list[str], list[tuple[list[int], list[int]]]]] = {}

    def _make_batches(self) -> list[list[list[int]]]:
        """Batches of rows of pair indices: one pair a row (length-sorted token batches), or packed rows."""
        cfg, g = self.cfg, torch.Generator().manual_seed(self.cfg.seed)
        src_lens, tgt_lens = [len(s) for s, _ in self.train_ids], [len(t) + 1 for _, t in self.train_ids]  # +1: bos/eos
        if not cfg.pack:
            return [[[i] for i in bt] for bt in token_batches(src_lens, tgt_lens, cfg.max_tokens, generator=g)]
        rows = pack_first_fit(list(zip(src_lens, tgt_lens)), cfg.pack, cfg.pack, generator=g)
        order = torch.randperm(len(rows), generator=g).tolist()  # rows mixed across batches
        per = max(1, cfg.max_tokens // cfg.pack)
        return [[rows[r] for r in order[i : i + per]] for i in range(0, len(order), per)]

    def padding(self) -> dict[str, float]:
        """Share of padded training positions per side ("src", "tgt"): every row padded to its batch's longest."""
        lens = {"src": [len(s) for s, _ in self.train_ids], "tgt": [len(t) + 1 for _, t in self.train_ids]}
        return {side: padding_fraction([[sum(n[i] for i in row) for row in bt] for bt in self.batches])
                for side, n in lens.items()}

    def _encode(self, src: list[str], tgt: list[str], *, synthetic: bool = False):
        """(text pairs, id pairs) of the pairs whose sides have 1..max_len pieces; synthetic sources get the tag."""
        sp, n = self.subword, self.cfg.max_len
        src_ids, tgt_ids = sp.encode_batch(src), sp.encode_batch(tgt)
        keep = [i for i in range(len(src)) if 0 < len(src_ids[i]) <= n and 0 < len(tgt_ids[i]) <= n]
        tag = [self.tag] if synthetic and self.tag is not None else []
        return [(src[i], tgt[i]) for i in keep], [(tag + src_ids[i], tgt_ids[i]) for i in keep]

    def _add_synthetic(self, corpus) -> None:
        """Append ``synthetic_ratio`` back-translated pairs per real pair (a seeded choice, all when 0)."""
        text, ids = self._encode(corpus.src, corpus.tgt, synthetic=True)
        want = len(ids) if self.cfg.synthetic_ratio == 0 else round(self.cfg.synthetic_ratio * self.num_real)
        g = torch.Generator().manual_seed(self.cfg.seed * 31 + 5)
        chosen = sorted(torch.randperm(len(ids), generator=g)[: min(want, len(ids))].tolist())
        self.train_text += [text[i] for i in chosen]
        self.train_ids += [ids[i] for i in chosen]
        self.log(f"synthetic: {len(chosen)} back-translated pairs added ({len(ids)} usable, "
                 f"{'tagged ' + BT_TAG if self.tag is not None else 'untagged'})")

    # -- the task interface ---------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> list[int]:
        if getattr(self, "_order_epoch", None) != epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._order, self._order_epoch = torch.randperm(len(self.batches), generator=g).tolist(), epoch
        return self._order

    def batch(self, split: str, index: int, size: int) -> Batch:
        if split != "train":
            pairs = self.eval_pairs(split)[2][:size]
            return seq2seq_batch(pairs, self.vocab)
        epoch, j = divmod(index, len(self.batches))
        rows = self.batches[self._epoch_order(epoch)[j]]
        pairs = self._train_pairs([i for row in rows for i in row], index)
        if not self.cfg.pack:
            return seq2seq_batch(pairs, self.vocab)
        packed, k = [], 0
        for row in rows:  # the (possibly augmented) pairs regrouped into their rows
            packed.append(pairs[k : k + len(row)])
            k += len(row)
        return packed_seq2seq_batch(packed, self.vocab)

    def _train_pairs(self, members: list[int], index: int) -> list[tuple[list[int], list[int]]]:
        """The id pairs of training pairs ``members``, augmented (seeded by the batch ``index``) when asked."""
        aug = self.cfg.augment
        if not aug.active:
            return [self.train_ids[i] for i in members]
        g = torch.Generator().manual_seed(self.cfg.seed * 7_919 + index * 104_729 + 17)
        sp = self.subword
        pairs = []
        if aug.subword_alpha:
            import sentencepiece as spm

            spm.set_random_generator_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        for i in members:
            src, tgt = self.train_ids[i]
            tag = src[:1] if i >= self.num_real and self.tag is not None else []  # never noised
            src = src[len(tag):]
            if aug.subword_alpha:
                s_text, t_text = self.train_text[i]
                if aug.subword_side in ("src", "both"):
                    src = sp.encode(s_text, sample=True, alpha=aug.subword_alpha)[: self.cfg.max_len] or [sp.unk_id]
                if aug.subword_side in ("tgt", "both"):
                    tgt = sp.encode(t_text, sample=True, alpha=aug.subword_alpha)[: self.cfg.max_len] or [sp.unk_id]
            src, tgt = augment_pair(src, tgt, aug, word_starts=sp.word_starts(src), unk_id=sp.unk_id,
                                    vocab_low=4, vocab_high=len(sp), g=g)
            pairs.append((tag + src, tgt))
        return pairs

    def eval_pairs(self, split: str) -> tuple[list[str], list[str], list[tuple[list[int], list[int]]]]:
        """(source sentences, reference sentences, encoded pairs) of ``split`` ("val" or "test"), unfiltered."""
        if split not in ("val", "test"):
            raise ValueError(f"evaluation split must be 'val' or 'test', got {split!r}")
        if split not in self._eval:
            corpus = read_parallel(*find_split(self.cfg.data, split, self.cfg.src, self.cfg.tgt),
                                   ReadConfig(empty="skip"))
            ids = list(zip(self.subword.encode_batch(corpus.src), self.subword.encode_batch(corpus.tgt)))
            ids = [(s or [self.subword.unk_id], t) for s, t in ids]
            self._eval[split] = (corpus.src, corpus.tgt, ids)
        return self._eval[split]

    def eval_batches(self, split: str = "val", size: int = 256) -> Iterator[Batch]:
        pairs = self.eval_pairs(split)[2]
        for i in range(0, len(pairs), size):
            yield seq2seq_batch(pairs[i : i + size], self.vocab)

    def evaluate(self, model, split: str = "val", *, num_sentences: int | None = None) -> dict:
        """Loss and token accuracy on all of ``split``, plus greedy BLEU/chrF on its first sentences."""
        out = loss_eval(model, self, split, batch_size=128, exact_match=False)
        n = self.cfg.bleu_eval_size if num_sentences is None else num_sentences
        if n:
            srcs, refs, _ = self.eval_pairs(split)
            hyps = [h[0][0] for h in translate(model, self.subword, srcs[:n], DecodeConfig(beam=1))]
            scores = corpus_scores(hyps, refs[:n])
            out.update(bleu=scores["bleu"], bleu_lc=scores["bleu_lc"], chrf=scores["chrf"])
        return out

    def spec(self) -> dict:
        d = asdict(self.cfg)
        return {"name": self.name, **d, "subword": self.subword.to_base64()}

    @classmethod
    def from_spec(cls, spec: dict) -> TranslationTask:
        spec = dict(spec)
        spec.pop("name", None)
        b64 = spec.pop("subword", None)
        cfg = TranslateConfig(**spec)
        sub = Subword.from_base64(b64, cfg.subword_type) if b64 else None
        return cls(cfg, sub)

    def model_overrides(self) -> dict:
        return {"kind": "encoder-decoder", "vocab_size": len(self.subword), "pad_id": self.subword.pad_id,
                "share_embeddings": True, "max_len": max(512, 2 * self.cfg.max_len + 16)}


register_task("translate", TranslationTask.from_spec)

__all__ = ["TranslateConfig", "TranslationTask"]
