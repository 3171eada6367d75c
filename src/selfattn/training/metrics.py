"""Metrics lines appended to a JSONL file (flushed and fsynced per line) and the PNG loss curve."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from ..io import atomic_write_bytes


class MetricsLog:
    """Append one JSON object per line; ``path=None`` (non-zero DDP ranks, tests) writes nothing."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a metrics JSONL file; a torn last line (killed mid-write) is skipped."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_losses(metrics_path: str | Path, png_path: str | Path, title: str = "loss") -> Path | None:
    """Training loss and validation loss against step, written atomically as a PNG."""
    if not Path(metrics_path).is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "split" not in r and "loss" in r]
    val = [(r["step"], r["loss"]) for r in records if r.get("split") == "val" and "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train (label-smoothed)", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", lw=1.5, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())
    return Path(png_path)
