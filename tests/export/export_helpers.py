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


# -- tiny translation models that learned a task (the HF / CTranslate2 export tests) --------------------
# Random weights decode into repetitions that run to the length cap; a model trained for a few hundred
# milliseconds on "reverse the source" stops with eos at varied lengths, so greedy and beam outputs (and where
# beams finish) are a real comparison.

TEXT = ["Ein Mann fährt Fahrrad.", "A man rides a bike.", "Zwei Hunde spielen im Schnee.",
        "Two dogs play in the snow.", "Eine Frau liest ein Buch.", "A woman reads a book."] * 10
BOS, EOS = 1, 2


def perturb(model, scale: float = 0.1, seed: int = 0) -> None:
    """Non-trivial norms and biases, so that every tensor's mapping matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(scale * torch.randn(p.shape, generator=g))


def reverse_batch(g: torch.Generator, vocab: int, b: int = 32):
    """Sources of 3-8 ids in [4, vocab), right-padded; targets are the reversed sources then eos."""
    lengths = torch.randint(3, 9, (b,), generator=g)
    src = torch.zeros(b, int(lengths.max()), dtype=torch.long)  # (b, m), 0 = pad
    tgt = torch.zeros(b, int(lengths.max()) + 2, dtype=torch.long)  # (b, n): bos, reversed, eos
    for i, n in enumerate(lengths.tolist()):
        s = torch.randint(4, vocab, (n,), generator=g)
        src[i, :n] = s
        tgt[i, : n + 2] = torch.cat([torch.tensor([BOS]), s.flip(0), torch.tensor([EOS])])
    return src, tgt


def trained_model(vocab: int, norm_first: bool, steps: int = 60, **overrides):
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=vocab, pad_id=0, norm_first=norm_first, **overrides)
    model = build_model(cfg)
    perturb(model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        src, tgt = reverse_batch(g, vocab)
        logits = model(src, tgt[:, :-1])  # (b, n-1, V)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), cfg
