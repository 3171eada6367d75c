"""Metrics lines appended to a JSONL file (flushed and fsynced per line) and the PNG loss curve."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from ..io import atomic_write_bytes


class MetricsLog:
    """Append one JSON object per line; ``path=None`` (non-zero DDP ranks, tests) writes nothing.

    ``tensorboard_dir`` also writes every numeric field as a TensorBoard scalar (tag ``train/loss``,
    ``val/bleu``, ...) with ``torch.utils.tensorboard`` — it needs the optional ``tensorboard`` package."""

    def __init__(self, path: str | Path | None, tensorboard_dir: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.tb = None
        if tensorboard_dir is not None and self.path is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard=true needs the tensorboard package "
                                 "(pip install 'selfattn[tensorboard]'), which is not installed") from None
            self.tb = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            group = record.get("split", "train")
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{group}/{key}", value, record["step"])
            self.tb.flush()

    def truncate_after(self, step: int) -> list[dict]:
        """Drop the records of steps after ``step`` (logged after the checkpoint a resume starts from) and any
        torn line, rewriting the file atomically; returns the kept records."""
        if self.path is None or not self.path.is_file():
            return []
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        return kept

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


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
