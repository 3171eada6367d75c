"""Training curves: the series read from metrics.jsonl, the PNG written, and the errors."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import pytest

from selfattn.inspect.curves import plot_curves, read_jsonl, series


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_series_split_by_kind_and_torn_tail_skipped(tmp_path):
    recs = [{"step": s, "loss": 10.0 / s, "lr": 1e-4 * s, "tok_s": 5.0} for s in (3, 1, 2)]
    recs += [{"step": 2, "split": "val", "loss": 4.5, "bleu": 11.0}, {"step": 3, "val_loss": 4.0},
             {"step": 3, "split": "test", "bleu": 12.5}, {"note": "no step"}, {"step": 4, "loss": float("nan")}]
    path = _write(tmp_path / "metrics.jsonl", recs, tail='{"step": 5, "lo')
    assert len(read_jsonl(path)) == len(recs)
    s = series(read_jsonl(path))
    assert s["train loss"] == [(1, 10.0), (2, 5.0), (3, 10.0 / 3)]  # sorted by step; NaN dropped
    assert s["val loss"] == [(2, 4.5), (3, 4.0)]
    assert s["lr"] == [(k, 1e-4 * k) for k in (1, 2, 3)]
    assert s["val bleu"] == [(2, 11.0)] and s["test bleu"] == [(3, 12.5)]


def test_series_against_training_time(tmp_path):
    recs = [{"step": 10, "loss": 3.0, "time": 20.5}, {"step": 20, "split": "val", "bleu": 9.0, "time": 41.0},
            {"step": 30, "loss": 2.0}]  # no time: left out of the time axis
    s = series(recs, "time")
    assert s["train loss"] == [(20.5, 3.0)] and s["val bleu"] == [(41.0, 9.0)]
    with pytest.raises(ValueError, match="'step' or 'time'"):
        series(recs, "epoch")


def test_plot_writes_a_png_beside_the_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _write(run / "metrics.jsonl", [{"step": s, "loss": 1.0 / s, "lr": 0.1} for s in range(1, 60)])
    out = plot_curves(run)
    assert out == run / "curves.png"
    img = mpimg.imread(out)
    assert img.shape[0] > 200 and img.shape[1] > 200
    assert (img[..., :3].std() > 0.05)  # not a blank canvas


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_curves(tmp_path)
    _write(tmp_path / "metrics.jsonl", [{"step": 1, "tok_s": 3.0}])
    with pytest.raises(ValueError, match="no step-indexed loss, lr or bleu"):
        plot_curves(tmp_path)
