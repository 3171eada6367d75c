"""Atomic file writes for everything selfattn.inspect produces (PNG, HTML), through :mod:`selfattn.io`."""

from __future__ import annotations

import io
from pathlib import Path

from ..io import atomic_write_bytes


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (str: UTF-8) to ``path`` atomically, creating the parent directory. Returns the path."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return atomic_write_bytes(path, raw, mkdir=True)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Render a matplotlib figure to PNG in memory, then write it atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, buf.getvalue())
