"""Shared by the export tests: tiny models and padded id batches."""

import torch

from selfattn.models.architectures import build_model
from selfattn.models.config import preset


def tiny_model(kind: str, **kw):
    torch.manual_seed(0)
    return build_model(preset("tiny", kind=kind, **kw)).eval()


def padded_batch(b: int, n: int, *, pad_rows=(0,), seed=1):
    """ids (b, n) in [1, 32), padding (b, n) True = real token; rows ``pad_rows`` end in padding (id 0)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 32, (b, n), generator=gen)  # (b, n)
    padding = torch.ones(b, n, dtype=torch.bool)
    for r in pad_rows:
        padding[r, n - 1 - r % max(n - 1, 1):] = False
    ids[~padding] = 0
    return ids, padding


def empty_cache(model, b: int):
    """Zero-length stacked caches (L, b, g, 0, d) for a first decoder step."""
    cfg = model.cfg
    shape = (cfg.num_decoder_layers, b, cfg.num_kv_heads or cfg.num_heads, 0, cfg.head_dim)
    return torch.zeros(shape), torch.zeros(shape)
