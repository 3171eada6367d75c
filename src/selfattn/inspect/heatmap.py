"""PNG heatmaps of attention weights (matplotlib): a layer × head grid, and single heads.

Legend: L layers, h heads, n queries (rows, y axis), m keys (columns, x axis).
Row i of a map is how query token i distributes its attention over the keys (it sums to 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .files import save_figure

MAX_TICKS = 40  # label every token up to this many; beyond, every k-th so labels stay legible
CMAP = "viridis"  # perceptually uniform: equal steps of weight look like equal steps of colour
SQRT_ABOVE = 16  # longer inputs spread weights ~1/n: a sqrt colour scale keeps the small ones visible


def _norm(vmax: float, n_keys: int):
    """Linear colours for short inputs; sqrt (PowerNorm 0.5) beyond SQRT_ABOVE keys."""
    from matplotlib.colors import Normalize, PowerNorm

    if n_keys > SQRT_ABOVE:
        return PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax), "weight (sqrt colour scale)"
    return Normalize(vmin=0.0, vmax=vmax), "weight"


def _figure(*args, **kw):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kw)


def _ticks(ax, labels: Sequence[str], axis: str, fontsize: float) -> None:
    step = max(1, -(-len(labels) // MAX_TICKS))  # ceil(n / MAX_TICKS)
    pos = list(range(0, len(labels), step))
    text = [labels[i] if step == 1 else f"{labels[i]} ({i})" for i in pos]
    if axis == "x":
        ax.set_xticks(pos, text, rotation=90, fontsize=fontsize)
    else:
        ax.set_yticks(pos, text, fontsize=fontsize)


def _positions(size: int) -> list[int]:
    """About five round tick positions in [0, size)."""
    step = max(1, size // 5)
    step = int(10 ** np.floor(np.log10(step))) * max(1, int(str(step)[0]))  # 1, 2, ... x 10^k
    return list(range(0, size, step))


def _check(weights: np.ndarray, q_labels: Sequence[str], k_labels: Sequence[str]) -> None:
    if weights.shape[-2:] != (len(q_labels), len(k_labels)):
        raise ValueError(f"weights end in (n, m) = {weights.shape[-2:]}, but got {len(q_labels)} query and "
                         f"{len(k_labels)} key labels")


def plot_head(weights, q_labels: Sequence[str], k_labels: Sequence[str], path: str | Path, *,
              title: str = "attention weights") -> Path:
    """One (n, m) map with every token labelled (or every k-th beyond 40) and a colour bar."""
    w = np.asarray(weights, dtype=np.float32)
    _check(w, q_labels, k_labels)
    n, m = w.shape
    size = min(14.0, max(4.0, 0.28 * max(n, m) + 2.5))
    fig, ax = _figure(figsize=(size + 1.2, size))
    norm, label = _norm(max(float(w.max()), 1e-9), m)
    im = ax.imshow(w, cmap=CMAP, norm=norm, aspect="auto", interpolation="nearest")
    fs = 9 if max(n, m) <= 25 else 7
    _ticks(ax, list(k_labels), "x", fs)
    _ticks(ax, list(q_labels), "y", fs)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
    return save_figure(fig, path)


def plot_grid(weights, q_labels: Sequence[str], k_labels: Sequence[str], path: str | Path, *,
              layers: Sequence[int], heads: Sequence[int], title: str = "attention") -> Path:
    """An L × h grid of maps (rows = layers, columns = heads) sharing one colour scale and bar."""
    w = np.asarray(weights, dtype=np.float32)  # (L, h, n, m)
    if w.ndim != 4 or w.shape[:2] != (len(layers), len(heads)):
        raise ValueError(f"weights must be (layers, heads, n, m) = ({len(layers)}, {len(heads)}, n, m), got {w.shape}")
    _check(w, q_labels, k_labels)
    L, h, n, m = w.shape
    cell = 2.6 if max(n, m) <= 12 else 3.4
    fig, axes = _figure(L, h, figsize=(cell * h + 1.5, cell * L + 0.8), squeeze=False, layout="constrained")
    norm, label = _norm(max(float(w.max()), 1e-9), m)
    few = max(n, m) <= 16  # token labels on the outer axes while legible, else positions
    im = None
    for i in range(L):
        for j in range(h):
            ax = axes[i][j]
            im = ax.imshow(w[i, j], cmap=CMAP, norm=norm, aspect="auto", interpolation="nearest")
            ax.set_title(f"layer {layers[i]} · head {heads[j]}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == L - 1:
                _ticks(ax, list(k_labels), "x", 7) if few else ax.tick_params(labelsize=7)
                if not few:
                    ax.set_xticks(_positions(m))
            if j == 0:
                _ticks(ax, list(q_labels), "y", 7) if few else ax.tick_params(labelsize=7)
                if not few:
                    ax.set_yticks(_positions(n))
    fig.suptitle(f"{title}  (rows: queries, columns: keys)")
    fig.colorbar(im, ax=axes, shrink=0.9, aspect=30, label=label)  # one bar for the whole grid
    return save_figure(fig, path)
