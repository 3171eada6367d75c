"""Training curves from a run's ``metrics.jsonl``: loss, learning rate and BLEU against step.

The file has one JSON object per line (see :mod:`selfattn.training.metrics`): training lines
``{"step", "loss", "lr", ...}`` and evaluation lines ``{"step", "split": "val", "loss", "bleu", ...}``;
a ``val_loss`` key is read as validation loss too. A torn last line (a run killed mid-write) is
skipped. Panels appear only for what the file holds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .files import save_figure


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a JSONL file; undecodable lines (a torn tail) are skipped."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def series(records: list[dict], x: str = "step") -> dict[str, list[tuple[float, float]]]:
    """(x, value) pairs per curve: train loss, val loss, lr, bleu (val and test). ``x`` is "step" or
    "time" (the training seconds each line records; lines without it are left out)."""
    if x not in ("step", "time"):
        raise ValueError(f"x must be 'step' or 'time', got {x!r}")
    names = ("train loss", "val loss", "lr", "val bleu", "test bleu")
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for r in records:
        if not _num(r.get(x)):
            continue
        step = float(r[x])
        split = r.get("split", "train")
        if _num(r.get("loss")):
            out.setdefault(f"{split} loss", []).append((step, r["loss"]))
        if _num(r.get("val_loss")):
            out["val loss"].append((step, r["val_loss"]))
        if _num(r.get("lr")):
            out["lr"].append((step, r["lr"]))
        if _num(r.get("bleu")):
            key = "test bleu" if split == "test" else "val bleu"
            out[key].append((step, r["bleu"]))
    return {k: sorted(v) for k, v in out.items() if v}


def metrics_path(run: str | Path) -> Path:
    """RUN may be a run directory (holding metrics.jsonl) or the JSONL file itself."""
    run = Path(run)
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {str(path)!r} (expected a run directory with metrics.jsonl)")
    return path


def plot_curves(run: str | Path, out: str | Path | None = None, title: str | None = None, x: str = "step") -> Path:
    """Draw loss (train/val), learning rate and BLEU panels against ``x`` ("step" or "time") to ``out``
    (default RUN/curves.png)."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    path = metrics_path(run)
    s = series(read_jsonl(path), x)
    panels = [p for p in (("loss", [k for k in s if k.endswith("loss")]),
                          ("learning rate", ["lr"] if "lr" in s else []),
                          ("BLEU", [k for k in s if k.endswith("bleu")])) if p[1]]
    if not panels:
        raise ValueError(f"{str(path)!r} has no {x}-indexed loss, lr or bleu values to plot")
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels) + 0.6), sharex=True, squeeze=False,
                             layout="constrained")
    for ax, (name, keys) in zip(axes[:, 0], panels):
        for key in keys:
            steps, values = zip(*s[key])
            dense = len(steps) > 40  # markers only where points are sparse (evaluations)
            ax.plot(steps, values, "-" if dense else "o-", lw=1.2, ms=3, label=key)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if len(keys) > 1 or name != "learning rate":
            ax.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("step" if x == "step" else "training time (s)")
    fig.suptitle(title or f"training curves: {path.parent.name if path.name == 'metrics.jsonl' else path.name}")
    target = Path(out) if out is not None else path.parent / "curves.png"
    return save_figure(fig, target)
