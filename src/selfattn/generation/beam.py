"""Beam search with the GNMT length penalty (Wu et al. 2016, §7), early stopping and n-best lists.

Legend: b batch, k beam size, V vocabulary, L generated length (stop token included).

Hypotheses are ranked by ``log p(y | x) / lp(L)`` with ``lp(L) = ((5 + L) / 6) ** alpha``
(the paper decodes with k = 4, alpha = 0.6, §6.1). Each step expands the k live hypotheses of every input,
keeps the best 2k candidates, files those ending in a stop token among the first k as finished and
continues the best k others (the scheme of HF ``BeamSearchScorer`` and fairseq).
``early_stopping=True`` stops an input once it has k finished hypotheses; ``False`` continues while a
live hypothesis could still beat the worst of the k best finished (its log-probability can only fall,
and for alpha >= 0 the best it can reach is ``logp / lp(max_len)``) — exact, so a beam as wide as the
search space returns the best sequence of the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .search import _ban, _prepare, _Session


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's lp(L) = ((5 + L) / 6)^alpha; alpha = 0 gives plain log-probabilities."""
    return ((5.0 + length) / 6.0) ** alpha


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids (stop token included when produced)
    logprob: float  # log p(tokens | input)
    score: float  # logprob / lp(len(tokens))


@torch.no_grad()
def beam_search(model: nn.Module, *, src=None, prompt=None, beam_size: int = 4, max_new_tokens: int = 64,
                length_alpha: float = 0.6, early_stopping: bool = True, num_return: int = 1,
                bos_id: int | None = None, stop_tokens: Sequence[int] = (), pad_id: int | None = None,
                use_cache: bool = True, banned: Sequence[int] | None = None) -> list[list[Hypothesis]]:
    """The ``num_return`` best hypotheses (best first) for each input. LM prompts must share one length."""
    k = beam_size
    if k < 1 or not 1 <= num_return <= k:
        raise ValueError(f"need beam_size >= 1 and 1 <= num_return <= beam_size, got {beam_size}, {num_return}")
    if length_alpha < 0:
        raise ValueError(f"length_alpha must be >= 0, got {length_alpha}")
    banned = [i for i in (pad_id, bos_id) if i is not None] if banned is None else list(banned)
    src_t, src_pad, prefix = _prepare(model, src, prompt, bos_id, pad_id)
    b = prefix.shape[0]
    expand = torch.arange(b).repeat_interleave(k)  # (b*k,) row -> input
    session = _Session(model, src_t, prefix, use_cache, src_pad)
    session.reorder(expand)  # encode once, then copy memory and prefix for every beam
    stops = set(stop_tokens)
    filler = pad_id if pad_id is not None else 0
    scores = torch.full((b, k), float("-inf"), dtype=torch.float64)
    scores[:, 0] = 0.0  # one live hypothesis at the start, so the first step has no duplicates
    seqs: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(b)]
    finished: list[list[Hypothesis]] = [[] for _ in range(b)]
    done = [False] * b
    for step in range(max_new_tokens):
        logp = _ban(session.logits().log_softmax(-1), banned)  # (b*k, V)
        V = logp.shape[-1]
        cand = (scores.view(b * k, 1) + logp.cpu().double()).view(b, k * V)  # (b, k*V)
        top_s, top_i = cand.topk(min(2 * k, k * V), dim=1)  # (b, 2k)
        next_rows, next_tok = torch.zeros(b * k, dtype=torch.long), torch.full((b * k,), filler)
        new_scores = torch.full((b, k), float("-inf"), dtype=torch.float64)
        new_seqs: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(b)]
        for i in range(b):
            next_rows[i * k : (i + 1) * k] = i * k
            if done[i]:
                continue
            live = 0
            for rank, (s, flat) in enumerate(zip(top_s[i].tolist(), top_i[i].tolist())):
                if s == float("-inf") or live == k:
                    break
                beam, tok = divmod(flat, V)
                tokens = seqs[i][beam] + [tok]
                if tok in stops:
                    if rank < k:
                        finished[i].append(Hypothesis(tokens, s, s / length_penalty(len(tokens), length_alpha)))
                    continue
                new_scores[i, live], new_seqs[i][live] = s, tokens
                next_rows[i * k + live], next_tok[i * k + live] = i * k + beam, tok
                live += 1
            done[i] = _is_done(finished[i], new_scores[i], k, early_stopping, length_alpha, max_new_tokens,
                               step + 1)
        scores, seqs = new_scores, new_seqs
        if all(done):
            break
        session.reorder(next_rows)
        session.append(next_tok)
    _finish_live(finished, scores, seqs, done, length_alpha)
    return [sorted(f, key=lambda h: -h.score)[:num_return] for f in finished]


def _finish_live(finished: list[list[Hypothesis]], scores: Tensor, seqs: list[list[list[int]]], done: list[bool],
                 alpha: float) -> None:
    """File the hypotheses still alive at max length (scores (b, k) > -inf) as finished, for inputs not done."""
    b, k = scores.shape
    for i in range(b):
        if not done[i]:
            for j in range(k):
                s = float(scores[i, j])
                if s > float("-inf"):
                    finished[i].append(Hypothesis(seqs[i][j], s, s / length_penalty(len(seqs[i][j]), alpha)))


def _is_done(finished: list[Hypothesis], live_scores: Tensor, k: int, early_stopping: bool, alpha: float,
             max_len: int, cur_len: int) -> bool:
    best_live = float(live_scores.max())
    if best_live == float("-inf"):
        return True
    if len(finished) < k:
        return False
    if early_stopping:
        return True
    worst_kept = sorted((h.score for h in finished), reverse=True)[k - 1]
    # the best normalised score a live hypothesis can still reach (logp <= best_live < 0, lp grows)
    bound = best_live / length_penalty(max_len if alpha > 0 else cur_len, alpha)
    return bound <= worst_kept
