"""``selfattn demo``: the main job on an embedded default (no data to download).

For now: the attention mechanism walked through on the sequence ``1 2 3 4 5`` with a tiny random
model, printed as small labelled tables.
"""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table


def _table(title: str, rows: torch.Tensor, row_labels: list[str], col_prefix: str = "") -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("")
    for j in range(rows.shape[1]):
        t.add_column(f"{col_prefix}{j}", justify="right")
    for label, row in zip(row_labels, rows.tolist()):
        t.add_row(label, *(f"{x:+.2f}" for x in row))
    return t


def walkthrough(text: str = "1 2 3 4 5", d_model: int = 8, seed: int = 0, console: Console | None = None) -> torch.Tensor:
    """Print every step of one attention head on ``text``; returns the head's output (n, d)."""
    from ..positional import sinusoidal_table

    console = console or Console()
    torch.manual_seed(seed)
    tokens = text.split()
    vocab = {t: i for i, t in enumerate(sorted(set(tokens)))}
    ids = torch.tensor([vocab[t] for t in tokens])
    n, d = len(tokens), d_model
    emb = torch.nn.Embedding(len(vocab), d).weight.detach()[ids]  # (n, d)
    pe = sinusoidal_table(n, d)  # (n, d)
    x = emb + pe
    wq, wk, wv = (torch.randn(d, d) / d**0.5 for _ in range(3))
    q, k, v = x @ wq, x @ wk, x @ wv  # (n, d) each
    scores = q @ k.T / d**0.5  # (n, n)
    weights = torch.softmax(scores, dim=-1)
    out = weights @ v  # (n, d)
    steps = [
        ("1. token embeddings", emb, "each token id looks up a learned vector", "e"),
        ("2. + positional encoding", pe, "sin/cos of position at many frequencies: attention alone ignores order", "e"),
        ("3. queries Q = x·W_Q", q, "what each position is looking for", "d"),
        ("4. keys K = x·W_K", k, "what each position offers to be found by", "d"),
        ("5. values V = x·W_V", v, "what each position passes on when attended", "d"),
        ("6. scores QKᵀ/√d_k", scores, "similarity of every query with every key, scaled to keep softmax soft", "k"),
        ("7. softmax weights", weights, "each row sums to 1: how much each query attends each key", "k"),
        ("8. output = weights·V", out, "each position becomes a weighted average of the values", "d"),
        ("9. residual x + output", x + out, "the sublayer adds to its input (then LayerNorm in the paper)", "d"),
    ]
    console.print(f"[bold]Self-attention on[/bold] {text!r}: {n} tokens, d_model = d_k = {d}, one head")
    for title, mat, why, prefix in steps:
        console.print(_table(f"{title} — {why}", mat, tokens, prefix))
    return out


def run(args) -> int:
    walkthrough(args.text, d_model=args.dim, seed=args.seed)
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job on an embedded default: attention walked through on '1 2 3 4 5'")
    p.add_argument("--text", default="1 2 3 4 5", help="space-separated tokens (default: '1 2 3 4 5')")
    p.add_argument("--dim", type=int, default=8, help="model width of the toy head (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
