"""Beam search with the GNMT length penalty (Wu et al. 2016, §7), early stopping and n-best lists.

Legend: b batch, k beam size, V vocabulary, L generated length (stop token included).

Hypotheses are ranked by ``log p(y | x) / lp(L)`` with ``lp(L) = ((5 + L) / 6) ** alpha``
(the paper decodes with k = 4, alpha = 0.6, §6.1). Each step expands the k live hypotheses of every input,
keeps the best 2k candidates, files those ending in a stop token among the first k as finished and
continues the best k others (the scheme of HF ``BeamSearchScorer`` and fairseq).
``early_stopping=True`` stops an input once it has k finished hypotheses (HF's and fairseq's rule);
``False`` continues while a live hypothesis could still beat the worst of the k best finished (its
log-probability can only fall, and for alpha >= 0 the best it can reach is ``logp / lp(max_len)``) — exact, so
a beam as wide as the search space returns the best sequence of the model. ``"best"`` applies that bound to
the ``num_return`` best finished instead of the k best: the search stops as soon as what it returns can no
longer change, which is CTranslate2's rule at alpha = 0 (it exits once the top candidate is finished) and
usually takes the fewest steps; the hypotheses returned are those ``False`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .search import _ban, _ban_index, _prepare, _Session

EARLY_STOPPING = (True, False, "best")  # beam_search(early_stopping=...): see the module docstring


def check_early_stopping(early_stopping: object) -> None:
    """Raise ``ValueError`` unless ``early_stopping`` is one of :data:`EARLY_STOPPING`."""
    if not (isinstance(early_stopping, bool) or early_stopping == "best"):
        raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, got {early_stopping!r}")


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's lp(L) = ((5 + L) / 6)^alpha; alpha = 0 gives plain log-probabilities."""
    return ((5.0 + length) / 6.0) ** alpha


TOP_BLOCK = 64  # top_w's block width: measured fastest of 32-256 for V = 8,000 (2 threads; 2.7x torch.topk)


def top_w(x: Tensor, w: int) -> tuple[Tensor, Tensor]:
    """The w largest values of each row of x (r, V) and their columns, as ``x.topk(w, dim=-1)`` (values
    equal; among equal values the columns may differ), in two cheap passes instead of a partial sort of every
    row: the max of each block of ``TOP_BLOCK`` columns, then a top-w of the w blocks with the largest maxima.
    Exact: a block outside those w has a max no larger than theirs, so if it held one of the w largest
    values, the w chosen maxima would already be w values at least as large. NaN counts as the largest
    value, as in topk and amax."""
    r, v = x.shape
    nb = v // TOP_BLOCK
    if nb < 4 * w:  # too few blocks to leave most out
        return x.topk(w, dim=-1)
    blocks = x[:, : nb * TOP_BLOCK].view(r, nb, TOP_BLOCK)  # (r, nb, B)
    best = blocks.amax(-1).topk(w, dim=-1).indices  # (r, w) the blocks that can hold the w largest
    cand = blocks.gather(1, best[:, :, None].expand(r, w, TOP_BLOCK)).view(r, w * TOP_BLOCK)  # (r, w*B)
    vals, pos = cand.topk(w, dim=-1)  # (r, w)
    cols = best.gather(1, pos // TOP_BLOCK) * TOP_BLOCK + pos % TOP_BLOCK  # (r, w)
    if nb * TOP_BLOCK < v:  # the last partial block competes with what the full ones gave
        tail_vals, tail_cols = x[:, nb * TOP_BLOCK :].topk(min(w, v - nb * TOP_BLOCK), dim=-1)
        vals, order = torch.cat([vals, tail_vals], 1).topk(w, dim=-1)  # (r, w)
        cols = torch.cat([cols, tail_cols + nb * TOP_BLOCK], 1).gather(1, order)
    return vals, cols


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids (stop token included when produced)
    logprob: float  # log p(tokens | input)
    score: float  # logprob / lp(len(tokens))


@torch.no_grad()
def beam_search(model: nn.Module, *, src=None, prompt=None, beam_size: int = 4, max_new_tokens: int = 64,
                length_alpha: float = 0.6, early_stopping: bool | Literal["best"] = True, num_return: int = 1,
                bos_id: int | None = None, stop_tokens: Sequence[int] = (), pad_id: int | None = None,
                use_cache: bool = True, banned: Sequence[int] | None = None) -> list[list[Hypothesis]]:
    """The ``num_return`` best hypotheses (best first) for each input. LM prompts must share one length.

    Inputs that are done leave the batch (their rows are no longer computed); the beams of the others are
    reordered within their own input. The encoder memory and cross-attention keys/values are held once per
    input and shared by its k beams (the decoder's ``beams=k``), never copied k times — except for a model
    whose ``shares_memory_across_beams`` is False (a compiled step)."""
    k = beam_size
    if k < 1 or not 1 <= num_return <= k:
        raise ValueError(f"need beam_size >= 1 and 1 <= num_return <= beam_size, got {beam_size}, {num_return}")
    if length_alpha < 0:
        raise ValueError(f"length_alpha must be >= 0, got {length_alpha}")
    check_early_stopping(early_stopping)
    banned = [i for i in (pad_id, bos_id) if i is not None] if banned is None else list(banned)
    src_t, src_pad, prefix = _prepare(model, src, prompt, bos_id, pad_id)
    b = prefix.shape[0]
    # the first step runs one row per input (its k beams are equal until then), as CTranslate2 does on the CPU
    session = _Session(model, src_t, prefix, use_cache, src_pad)
    # a compiled step (generation.fast) keeps one graph for all batches with the memory copied per beam:
    # the folded shapes (b = k * inputs) would specialise its graph
    share = getattr(model, "shares_memory_across_beams", True)
    need = num_return if early_stopping == "best" else k  # finished hypotheses the stopping rule looks at
    beams = _Beams(b, k, set(stop_tokens), length_alpha, early_stopping is True, need, max_new_tokens)
    ban = _ban_index(banned, prefix.device)
    for step in range(max_new_tokens):
        logp = _ban(session.logits().log_softmax(-1), ban)  # (a*k, V), a = inputs still decoding; (b, V) first
        w = min(2 * k, logp.shape[-1])
        # the best 2k continuations of the whole input lie among the best 2k of each of its beams
        top_lp, top_tok = top_w(logp, w)  # (a*k, w)
        if step == 0:  # (b*k, w): beam 0 of each input holds the row, beams 1.. score -inf and add nothing
            top_lp, top_tok = top_lp.repeat_interleave(k, 0), top_tok.repeat_interleave(k, 0)
        rows, tokens = beams.advance(top_lp.cpu().double(), top_tok.cpu(), step + 1)
        if not beams.active:
            break
        rows_t = torch.tensor(rows, dtype=torch.long, device=session.tokens.device)
        if share:  # memory rows: (a',) the inputs still decoding, where some left
            sources = rows_t[::k] // k if beams.shrank else None
        else:  # memory rows: one per beam (k copies), as the rows
            sources = rows_t // k if step == 0 else (rows_t if beams.shrank else None)
        if step == 0:  # expand: every beam gets a copy of its input's row and self-attention caches
            session.reorder(rows_t // k, sources, beams=k if share else 1)
        else:
            session.reorder(rows_t, sources)
        session.append(torch.tensor(tokens, dtype=torch.long, device=session.tokens.device))
    return beams.results(num_return)


class _Beams:
    """The k live hypotheses of each input still decoding (``active``), and the finished ones."""

    def __init__(self, b: int, k: int, stops: set[int], alpha: float, heuristic: bool, need: int, max_len: int):
        """heuristic: stop at ``need`` finished (early_stopping=True); else once no live hypothesis can beat the
        ``need`` best finished."""
        self.k, self.stops, self.alpha, self.max_len = k, stops, alpha, max_len
        self.heuristic, self.need = heuristic, need
        self.active = list(range(b))  # input ids; rows [j*k, (j+1)*k) of the session belong to active[j]
        self.scores = torch.full((b, k), float("-inf"), dtype=torch.float64)  # (a, k) log-probabilities
        self.scores[:, 0] = 0.0  # one live hypothesis at the start, so the first step has no duplicates
        self.seqs: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(b)]
        self.finished: list[list[Hypothesis]] = [[] for _ in range(b)]
        self.shrank = False

    def advance(self, top_lp: Tensor, top_tok: Tensor, cur_len: int) -> tuple[list[int], list[int]]:
        """top_lp, top_tok (a*k, w): each live beam's best continuations. -> (session rows to keep, their
        next tokens) for the inputs still decoding afterwards; ``shrank`` says whether some input left."""
        a, k, w = len(self.active), self.k, top_lp.shape[-1]
        cand = (self.scores.view(a * k, 1) + top_lp).view(a, k * w)  # (a, k*w)
        top_s, top_i = cand.topk(min(2 * k, k * w), dim=1)  # (a, 2k)
        toks = top_tok.view(a, k * w).gather(1, top_i).tolist()  # (a, 2k) the candidates' token ids
        keep, rows, tokens, scores, seqs = [], [], [], [], []
        for j, (ss, flats, tks) in enumerate(zip(top_s.tolist(), top_i.tolist(), toks)):
            i, row_s, row_q, row_r, row_t = self.active[j], [], [], [], []
            for rank, (s, flat, tok) in enumerate(zip(ss, flats, tks)):
                if s == float("-inf") or len(row_s) == k:
                    break
                tokens_so_far = self.seqs[j][flat // w] + [tok]
                if tok in self.stops:
                    if rank < k:
                        self.finished[i].append(self._hyp(tokens_so_far, s))
                    continue
                row_s.append(s)
                row_q.append(tokens_so_far)
                row_r.append(j * k + flat // w)
                row_t.append(tok)
            live = row_s + [float("-inf")] * (k - len(row_s))  # (k,) the scores of the beams kept
            if _is_done(self.finished[i], live, self.need, self.heuristic, self.alpha, self.max_len, cur_len):
                continue
            pad = k - len(row_s)  # fewer than k live candidates: repeat the first row (its score is -inf)
            keep.append(i)
            scores.append(live)
            seqs.append(row_q + [[] for _ in range(pad)])
            rows += row_r + [row_r[0]] * pad
            tokens += row_t + [row_t[0]] * pad
        self.shrank = len(keep) < a
        self.active, self.seqs = keep, seqs
        self.scores = torch.tensor(scores, dtype=torch.float64) if scores else self.scores[:0]  # (a', k)
        return rows, tokens

    def _hyp(self, tokens: list[int], logprob: float) -> Hypothesis:
        return Hypothesis(tokens, logprob, logprob / length_penalty(len(tokens), self.alpha))

    def results(self, num_return: int) -> list[list[Hypothesis]]:
        """Hypotheses still alive at max length count as finished."""
        for j, i in enumerate(self.active):
            for s, tokens in zip(self.scores[j].tolist(), self.seqs[j]):
                if s > float("-inf"):
                    self.finished[i].append(self._hyp(tokens, s))
        return [sorted(f, key=lambda h: -h.score)[:num_return] for f in self.finished]


def _is_done(finished: list[Hypothesis], live_scores: list[float], need: int, heuristic: bool, alpha: float,
             max_len: int, cur_len: int) -> bool:
    best_live = max(live_scores)
    if best_live == float("-inf"):
        return True
    if len(finished) < need:
        return False
    if heuristic:
        return True
    worst_kept = sorted((h.score for h in finished), reverse=True)[need - 1]
    # the best normalised score a live hypothesis can still reach (logp <= best_live < 0, lp grows)
    bound = best_live / length_penalty(max_len if alpha > 0 else cur_len, alpha)
    return bound <= worst_kept
