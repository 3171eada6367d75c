"""Sentence embeddings as a sentence-transformers checkpoint describes them (Reimers & Gurevych, 2019).

Legend: b batch, n tokens, c model dim, c' embedding dim (c times the number of pooling modes).

A sentence-transformers directory lists its pipeline in ``modules.json``: a ``Transformer`` (the HF
checkpoint, at ``path``), a ``Pooling`` (``<path>/config.json``: which of cls / max / mean /
mean-sqrt-len, concatenated in that order) and optionally ``Normalize`` (unit L2 norm).
``sentence_bert_config.json`` gives ``max_seq_length`` (truncation, counting [CLS]/[SEP]).
Any other module (Dense, ...) is refused with a ValueError naming it, and so is a module ``path``
that leaves the checkpoint directory (``../x``, an absolute path, a symlink pointing outside).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..io import confined_path

ST = "sentence_transformers.models."
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")  # sentence-transformers' concatenation order


@dataclass
class SentenceConfig:
    pooling: tuple[str, ...] = ("mean",)  # mean pooling: the sentence-transformers default
    normalize: bool = False  # only with a Normalize module
    max_seq_length: int = 512  # BERT's position table; sentence_bert_config.json usually lowers it

    def dimension(self, d_model: int) -> int:
        return d_model * len(self.pooling)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read sentence-transformers file {path}: {e}") from None


def _max_seq_length(path: Path) -> int | None:
    msl = _json(path).get("max_seq_length")
    if msl is not None and (not isinstance(msl, int) or isinstance(msl, bool) or msl < 1):
        raise ValueError(f"{path}: max_seq_length must be a positive int, got {msl!r}")
    return msl


def read_sentence_config(path: Path, *, within: Path | None = None) -> tuple[SentenceConfig | None, Path]:
    """-> (settings or None without modules.json, directory of the HF transformer checkpoint).

    Every module ``path`` in modules.json must stay inside ``path`` (or ``within``), symlinks resolved."""
    listing = path / "modules.json"
    if not listing.is_file():
        return None, path
    modules = _json(listing)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ValueError(f"{listing}: expected a JSON list of module objects, got {modules!s:.80}")
    cfg, hf_dir, seen = SentenceConfig(), path, []
    for m in modules:
        kind = str(m.get("type", ""))
        sub = confined_path(path, m.get("path", ""), source=listing, within=within)
        seen.append(kind)
        if kind == ST + "Transformer":
            hf_dir = sub
            if (sub / "sentence_bert_config.json").is_file():
                msl = _max_seq_length(sub / "sentence_bert_config.json")
                if msl is not None:
                    cfg.max_seq_length = msl
        elif kind == ST + "Pooling":
            pc = _json(sub / "config.json")
            if not isinstance(pc, dict):
                raise ValueError(f"{sub / 'config.json'}: expected a JSON object, got {type(pc).__name__}")
            unsupported = [k for k in ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken") if pc.get(k)]
            if unsupported:
                raise ValueError(f"pooling modes {unsupported} in {sub} are not supported; "
                                 f"supported: {list(POOLING_MODES)}")
            modes = tuple(p for p in POOLING_MODES if pc.get(f"pooling_mode_{p}_token" if p == "cls"
                                                               else f"pooling_mode_{p}_tokens"))
            if not modes:
                raise ValueError(f"{sub / 'config.json'} enables no pooling mode; "
                                 f"expected one of {list(POOLING_MODES)}")
            cfg.pooling = modes
        elif kind == ST + "Normalize":
            cfg.normalize = True
        else:
            raise ValueError(f"unsupported sentence-transformers module {kind!r} in {listing}; "
                             f"supported: Transformer, Pooling, Normalize")
    if ST + "Transformer" not in seen:
        raise ValueError(f"{listing} has no sentence_transformers.models.Transformer module")
    return cfg, hf_dir


def pool(hidden: Tensor, real: Tensor, cfg: SentenceConfig, *, normalize: bool | None = None) -> Tensor:
    """hidden (b, n, c), real (b, n) True = real token -> (b, c') pooled (and maybe unit-normalised)."""
    m = real.unsqueeze(-1).to(hidden.dtype)  # (b, n, 1)
    count = m.sum(dim=1).clamp(min=1e-9)  # (b, 1) as sentence-transformers clamps
    parts = []
    for mode in cfg.pooling:
        if mode == "cls":
            parts.append(hidden[:, 0])  # (b, c)
        elif mode == "max":
            parts.append(hidden.masked_fill(~real.unsqueeze(-1), -1e9).max(dim=1).values)  # (b, c)
        elif mode == "mean":
            parts.append((hidden * m).sum(dim=1) / count)  # (b, c)
        else:  # mean_sqrt_len
            parts.append((hidden * m).sum(dim=1) / count.sqrt())
    out = torch.cat(parts, dim=-1)  # (b, c')
    if cfg.normalize if normalize is None else normalize:
        out = torch.nn.functional.normalize(out, p=2, dim=-1)
    return out
