"""Decoding: greedy, sampling (temperature, top-k, top-p) and beam search, with a key/value cache.

Legend: b batch, k beam size, t tokens so far, V vocabulary.

Works for the encoder–decoder :class:`~selfattn.models.Transformer` (give ``src``; decoding starts from
``bos_id``) and the decoder-only :class:`~selfattn.models.TransformerLM` (give ``prompt``). With the cache
(``use_cache=True``), each step feeds only the new token: self-attention keys/values are appended
(bottom-right causal alignment needs no special case) and cross-attention keys/values are computed once
per source. ``use_cache=False`` re-runs the full forward each step (the reference and the benchmark).

Outputs are lists of generated ids per input, including the stop token when one was produced.
Batched inputs of different lengths: sources are padded with ``pad_id`` (masked, True = real token);
LM prompts are grouped by length (each group decoded as one batch) so positions stay exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class _Session:
    """Next-token logits for a batch of partial outputs, with or without the KV cache."""

    def __init__(self, model: nn.Module, src: Tensor | None, prefix: Tensor, use_cache: bool,
                 src_padding: Tensor | None = None):
        self.model, self.use_cache = model, use_cache
        self.encdec = src is not None
        self.memory = self.mask = None
        if self.encdec:
            self.memory, self.mask, _ = model.encode(src, src_padding)  # (b, m, c), (b, 1, 1, m)
            # no padding (one sentence, say): every step's cross-attention is then unmasked, sparing its mask
            # handling (~15 ops a step) — not for a compiled step, which would compile a second graph for it
            if self.mask is not None and not getattr(model, "compiled", False) and bool(self.mask.all()):
                self.mask = None
        self.cache = model.new_cache() if use_cache else None
        self.tokens = prefix  # (b, t) everything fed so far
        self.pending = prefix  # tokens not yet fed through the cache
        self.beams = 1  # rows per source: memory, its mask and the cross caches hold b / beams rows
        cfg = getattr(model, "cfg", None)
        # a learned position table ends at max_len: past it, crop the context to the last max_len tokens and
        # recompute without the cache (nanoGPT's sliding context); other encodings extend to any length
        self.window = cfg.max_len if cfg is not None and cfg.positional == "learned" else None

    def _forward(self, x: Tensor) -> Tensor:
        # without the cache x is the whole output so far, which has no padding: a generated pad id (when not
        # banned) is a token here, as it is for the cache — the model would otherwise mask it as padding
        real = None if self.cache is not None else torch.ones_like(x, dtype=torch.bool)  # (b, t)
        if self.encdec:
            return self.model.decode(x, self.memory, self.mask, cache=self.cache, beams=self.beams,
                                     tgt_padding=real)[0]
        return self.model(x, real, cache=self.cache)

    def logits(self) -> Tensor:
        """(b, V) logits for the next position."""
        if self.window is not None and self.tokens.shape[1] > self.window:
            self.use_cache, self.cache = False, None
            x = self.tokens[:, -self.window :]  # (b, window)
        else:
            x = self.pending if self.use_cache else self.tokens
        out = self._forward(x)[:, -1]  # (b, V)
        return out if out.dtype == torch.float64 else out.float()

    def append(self, new: Tensor) -> None:
        """new (b,) token ids chosen for the next position."""
        self.tokens = torch.cat([self.tokens, new[:, None]], dim=1)  # (b, t+1)
        self.pending = new[:, None]  # (b, 1)

    def reorder(self, index: Tensor, sources: Tensor | None, *, beams: int | None = None) -> None:
        """Keep rows ``index`` of the outputs (tokens, self-attention caches) and rows ``sources`` of what is
        held once per source (encoder memory, its mask, cross-attention keys/values); ``sources=None`` keeps
        those as they are. ``beams``: rows per source from now on (beam search after its first step)."""
        self.tokens = self.tokens.index_select(0, index)
        self.pending = self.pending.index_select(0, index)
        if self.encdec and sources is not None:
            self.memory = self.memory.index_select(0, sources)
            self.mask = self.mask.index_select(0, sources) if self.mask is not None else None
        if self.cache is not None:
            self.cache.reorder(index, cross=False if sources is None else sources)
        self.beams = self.beams if beams is None else beams


def _prepare(model, src, prompt, bos_id, pad_id):
    """-> (src tensor or None, src padding or None, prefix (b, t))."""
    if (src is None) == (prompt is None):
        raise ValueError("give exactly one of src (encoder–decoder) or prompt (decoder LM)")
    if src is not None:
        if bos_id is None:
            raise ValueError("encoder–decoder decoding needs bos_id (the first decoder input)")
        src, padding = _pad(src, pad_id)
        return src, padding, torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)
    prompt = torch.as_tensor(prompt, dtype=torch.long) if not isinstance(prompt, Tensor) else prompt
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be (B, T) ids with T >= 1, got shape {tuple(prompt.shape)}")
    return None, None, prompt


def _pad(src, pad_id) -> tuple[Tensor, Tensor | None]:
    if isinstance(src, Tensor):
        if src.dim() != 2:
            raise ValueError(f"src must be (B, M) token ids, got shape {tuple(src.shape)}")
        return src, None
    if not src or any(len(s) == 0 for s in src):
        raise ValueError("src must be a non-empty list of non-empty id lists")
    if pad_id is None:
        raise ValueError("sources of different lengths need pad_id")
    m = max(len(s) for s in src)
    out = torch.full((len(src), m), pad_id, dtype=torch.long)  # (b, m)
    padding = torch.zeros((len(src), m), dtype=torch.bool)  # True = real token
    for i, s in enumerate(src):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        padding[i, : len(s)] = True
    return out, padding


def _ban(logp: Tensor, banned: Tensor) -> Tensor:
    """logp (b, V) with the columns of ``banned`` ((n,) ids, :func:`_ban_index`) set to -inf, in place."""
    return logp.index_fill_(1, banned, float("-inf")) if banned.numel() else logp


def _ban_index(banned: Sequence[int], device: torch.device) -> Tensor:
    """The banned ids as one (n,) tensor, made once per search (not per step)."""
    return torch.tensor(list(banned), dtype=torch.long, device=device)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Keep the ``top_k`` largest logits and the smallest set whose probability reaches ``top_p``
    (nucleus sampling, Holtzman et al. 2020); the rest become -inf. logits (b, V)."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (b, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (b, V)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass strictly before each token
        drop = before >= top_p  # the first token is always kept
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


@torch.no_grad()
def _decode_loop(model, src, prompt, *, max_new_tokens, bos_id, stop_tokens, pad_id, use_cache, choose,
                 banned) -> list[list[int]]:
    """One token per step for every input still decoding; an input that produced a stop token leaves the
    batch (its rows are no longer computed)."""
    src_t, src_pad, prefix = _prepare(model, src, prompt, bos_id, pad_id)
    session = _Session(model, src_t, prefix, use_cache, src_pad)
    active = list(range(prefix.shape[0]))  # session row j decodes input active[j]
    stops, ban = set(stop_tokens), _ban_index(banned, prefix.device)
    outputs: list[list[int]] = [[] for _ in active]
    for _ in range(max_new_tokens):
        new = choose(_ban(session.logits(), ban))  # (a,)
        keep = []
        for j, tok in enumerate(new.tolist()):
            outputs[active[j]].append(tok)
            if tok not in stops:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(active):
            rows = torch.tensor(keep, dtype=torch.long, device=new.device)
            session.reorder(rows, rows)
            new, active = new.index_select(0, rows), [active[j] for j in keep]
        session.append(new)
    return outputs


def _group_prompts(fn, prompt, **kw) -> list[list[int]]:
    """Run ``fn`` on groups of equal-length prompts (list of id lists) and restore the order."""
    if isinstance(prompt, Tensor) or prompt is None:
        return fn(prompt=prompt, **kw)
    if not prompt or any(len(p) == 0 for p in prompt):
        raise ValueError("prompt must be a non-empty list of non-empty id lists")
    out: list[list[int] | None] = [None] * len(prompt)
    for length in sorted({len(p) for p in prompt}):
        idx = [i for i, p in enumerate(prompt) if len(p) == length]
        res = fn(prompt=torch.tensor([prompt[i] for i in idx], dtype=torch.long), **kw)
        for i, r in zip(idx, res):
            out[i] = r
    return out  # type: ignore[return-value]


def greedy(model: nn.Module, *, src=None, prompt=None, max_new_tokens: int = 64, bos_id: int | None = None,
           stop_tokens: Sequence[int] = (), pad_id: int | None = None, use_cache: bool = True,
           banned: Sequence[int] | None = None) -> list[list[int]]:
    """Argmax decoding. ``banned`` ids never get chosen (default: pad and bos)."""
    banned = [i for i in (pad_id, bos_id) if i is not None] if banned is None else banned
    kw = dict(max_new_tokens=max_new_tokens, bos_id=bos_id, stop_tokens=tuple(stop_tokens), pad_id=pad_id,
              use_cache=use_cache, choose=lambda lg: lg.argmax(-1), banned=banned)
    if src is not None:
        return _decode_loop(model, src, None, **kw)
    return _group_prompts(lambda prompt, **k: _decode_loop(model, None, prompt, **k), prompt, **kw)


def sample(model: nn.Module, *, src=None, prompt=None, max_new_tokens: int = 64, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, bos_id: int | None = None, stop_tokens: Sequence[int] = (),
           pad_id: int | None = None, use_cache: bool = True, generator: torch.Generator | None = None,
           banned: Sequence[int] | None = None) -> list[list[int]]:
    """Ancestral sampling from softmax(logits / temperature), optionally top-k / top-p filtered."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use greedy for 0), got {temperature}")
    if not 0.0 < top_p <= 1.0 or top_k < 0:
        raise ValueError(f"need 0 < top_p <= 1 and top_k >= 0, got top_p={top_p}, top_k={top_k}")
    banned = [i for i in (pad_id, bos_id) if i is not None] if banned is None else banned

    def choose(logits: Tensor) -> Tensor:
        probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)  # (b, V)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (b,)

    kw = dict(max_new_tokens=max_new_tokens, bos_id=bos_id, stop_tokens=tuple(stop_tokens), pad_id=pad_id,
              use_cache=use_cache, choose=choose, banned=banned)
    if src is not None:
        return _decode_loop(model, src, None, **kw)
    return _group_prompts(lambda prompt, **k: _decode_loop(model, None, prompt, **k), prompt, **kw)
