"""Sentence embeddings as a sentence-transformers checkpoint describes them (Reimers & Gurevych, 2019).

Legend: b batch, n tokens, c model dim, c' embedding dim (c times the number of pooling modes).

A sentence-transformers directory lists its pipeline in ``modules.json``: a ``Transformer`` (the HF
checkpoint, at ``path``), a ``Pooling`` (``<path>/config.json``: which of cls / max / mean /
mean-sqrt-len, concatenated in that order) and optionally ``Normalize`` (unit L2 norm).
``sentence_bert_config.json`` gives ``max_seq_length`` (truncation, counting [CLS]/[SEP]).
Any other module (Dense, ...) is refused with a ValueError naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

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
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read sentence-transformers file {path}: {e}") from None


def read_sentence_config(path: Path) -> tuple[SentenceConfig | None, Path]:
    """-> (settings or None without modules.json, directory of the HF transformer checkpoint)."""
    if not (path / "modules.json").is_file():
        return None, path
    modules = _json(path / "modules.json")
    cfg, hf_dir, seen = SentenceConfig(), path, []
    for m in modules:
        kind = str(m.get("type", ""))
        sub = path / m.get("path", "")
        seen.append(kind)
        if kind == ST + "Transformer":
            hf_dir = sub
            for name in ("sentence_bert_config.json",):
                if (sub / name).is_file():
                    msl = _json(sub / name).get("max_seq_length")
                    if msl is not None:
                        cfg.max_seq_length = int(msl)
        elif kind == ST + "Pooling":
            pc = _json(sub / "config.json")
            unsupported = [k for k in ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken") if pc.get(k)]
            if unsupported:
                raise ValueError(f"pooling modes {unsupported} in {sub} are not supported; "
                                 f"supported: {list(POOLING_MODES)}")
            modes = tuple(p for p in POOLING_MODES if pc.get(f"pooling_mode_{p}_token" if p == "cls"
                                                               else f"pooling_mode_{p}_tokens"))
            if not modes:
                raise ValueError(f"{sub / 'config.json'} enables no pooling mode; expected one of {list(POOLING_MODES)}")
            cfg.pooling = modes
        elif kind == ST + "Normalize":
            cfg.normalize = True
        else:
            raise ValueError(f"unsupported sentence-transformers module {kind!r} in {path / 'modules.json'}; "
                             f"supported: Transformer, Pooling, Normalize")
    if ST + "Transformer" not in seen:
        raise ValueError(f"{path / 'modules.json'} has no sentence_transformers.models.Transformer module")
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
