"""Batched translation of sentences with a trained encoder–decoder, and loading a translation run.

Legend: b batch, m source length, k beam size.

Sentences are sorted by length and cut into batches of at most ``batch_tokens`` source pieces, so
little work goes into padding; outputs are returned in input order. ``beam=1`` decodes greedily (fastest);
``beam>1`` runs :func:`selfattn.generation.beam_search` with the GNMT length penalty (Wu et al. 2016,
alpha 0.6 and k 4 as in the paper, §6.1). The output length is capped at ``max_len_a * m + max_len_b``
(fairseq's rule) so an untrained model cannot loop forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.subword import BT_TAG, Subword
from ..generation import beam_search, greedy, sample
from ..generation.beam import check_early_stopping
from ..training.run import load_run


@dataclass
class DecodeConfig:
    beam: int = 4  # the paper's beam size (§6.1); 1 = greedy
    nbest: int = 1  # hypotheses returned per sentence (<= beam)
    alpha: float = 0.6  # GNMT length penalty exponent (§6.1)
    early_stopping: bool | str = True  # beam stop rule: True k finished (HF, fairseq), False / "best" exact
    max_len_a: float = 1.5  # output length cap a·m + b (fairseq's default shape)
    max_len_b: int = 10
    batch_tokens: int = 2048  # source pieces per decoding batch (beam multiplies the work by k)
    max_src_len: int = 256  # longer sources are truncated (positions beyond training are unseen anyway)
    sample: bool = False  # ancestral sampling instead of search (back-translation, Edunov et al. 2018)
    temperature: float = 1.0  # sampling temperature
    top_k: int = 0  # sample among the k most likely pieces (Edunov et al.'s "top10"); 0 = unrestricted
    seed: int = 0  # the sampling generator's seed (one per call: the same inputs give the same samples)

    def __post_init__(self) -> None:
        if self.beam < 1 or not 1 <= self.nbest <= self.beam:
            raise ValueError(f"need beam >= 1 and 1 <= nbest <= beam, got beam={self.beam}, nbest={self.nbest}")
        if self.sample and self.beam != 1:
            raise ValueError(f"sampling draws one output per sentence: use beam=1 with sample=True, "
                             f"got beam={self.beam}")
        check_early_stopping(self.early_stopping)
        if self.alpha < 0 or self.max_len_a < 0 or self.max_len_b < 1 or self.batch_tokens < 1:
            raise ValueError("alpha, max_len_a must be >= 0 and max_len_b, batch_tokens >= 1, got "
                             f"{self.alpha}, {self.max_len_a}, {self.max_len_b}, {self.batch_tokens}")


@torch.no_grad()
def translate_ids(model: nn.Module, sources: list[list[int]], sp: Subword,
                  cfg: DecodeConfig) -> list[list[tuple[list[int], float]]]:
    """For each source id list, ``cfg.nbest`` (output ids without eos, score) pairs, best first."""

    was_training = model.training
    switch = any(m.training for m in model.modules())  # eval() walks and sets every module: ~2 ms a call here
    if switch:
        model.eval()
    sources = [(s[: cfg.max_src_len] or [sp.unk_id]) for s in sources]
    banned = [sp.pad_id, sp.bos_id, *(t for t in [sp.tag_id(BT_TAG)] if t is not None)]  # tags never output
    g = torch.Generator().manual_seed(cfg.seed)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[list[tuple[list[int], float]] | None] = [None] * len(sources)
    try:
        i = 0
        while i < len(order):
            longest, j = 0, i
            while j < len(order) and (j - i + 1) * max(longest, len(sources[order[j]])) <= cfg.batch_tokens:
                longest = max(longest, len(sources[order[j]]))
                j += 1
            j = max(j, i + 1)
            idx = order[i:j]
            src = [sources[t] for t in idx]
            max_new = int(cfg.max_len_a * max(len(s) for s in src)) + cfg.max_len_b
            kw: dict[str, Any] = dict(src=src, max_new_tokens=max_new, bos_id=sp.bos_id, stop_tokens=(sp.eos_id,),
                                      pad_id=sp.pad_id, banned=banned)
            if cfg.sample:
                outs = sample(model, temperature=cfg.temperature, top_k=cfg.top_k, generator=g, **kw)
                res = [[(_strip(ids, sp.eos_id), 0.0)] for ids in outs]
            elif cfg.beam == 1:
                res = [[(_strip(ids, sp.eos_id), 0.0)] for ids in greedy(model, **kw)]
            else:
                hyps = beam_search(model, beam_size=cfg.beam, num_return=cfg.nbest, length_alpha=cfg.alpha,
                                   early_stopping=cfg.early_stopping, **kw)
                res = [[(_strip(h.tokens, sp.eos_id), h.score) for h in hs] for hs in hyps]
            for t, r in zip(idx, res):
                out[t] = r
            i = j
    finally:
        if switch:
            model.train(was_training)
    return out  # type: ignore[return-value]


def _strip(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else list(ids)


def translate(model: nn.Module, sp: Subword, sentences: list[str],
              cfg: DecodeConfig | None = None) -> list[list[tuple[str, float]]]:
    """Detokenized translations: for each sentence ``cfg.nbest`` (text, score) pairs, best first."""
    cfg = cfg or DecodeConfig()
    ids = sp.encode_batch(list(sentences)) if sentences else []
    return [[(sp.decode(o), s) for o, s in hyps] for hyps in translate_ids(model, ids, sp, cfg)]


def load_translation_run(run_dir: str | Path, *, step: int | None = None, average_last: int = 0,
                         device: str = "cpu") -> tuple[nn.Module, Subword, dict]:
    """(model in eval mode, subword model, config) of a ``selfattn train --task translate`` run directory.

    ``average_last=k`` averages the weights of the last k checkpoints (Vaswani et al. 2017 §6.1)."""
    model, _, config = load_run(run_dir, step=step, average_last=average_last, device=device)
    task = config.get("task", {})
    if task.get("name") != "translate" or "subword" not in task:
        raise ValueError(f"{str(run_dir)!r} is not a translation run (its task is {task.get('name')!r}); "
                         "expected a run directory written by `selfattn train --task translate`")
    return model, Subword.from_base64(task["subword"], task.get("subword_type", "unigram")), config


__all__ = ["DecodeConfig", "load_translation_run", "translate", "translate_ids"]
