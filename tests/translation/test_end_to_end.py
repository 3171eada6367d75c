"""End to end on a few hundred Multi30k pairs: `selfattn train --task translate`, `translate`, `evaluate`.

Skipped when ../shared/data/multi30k is absent; never downloads.
"""

import json
import math
from pathlib import Path

import pytest

from selfattn.cli import main

MULTI30K = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "multi30k"
pytestmark = pytest.mark.skipif(not MULTI30K.is_dir(), reason="Multi30k not present beside the repository")


def head(src: Path, dst: Path, n: int) -> None:
    with open(src, encoding="utf-8") as f:
        dst.write_text("".join(next(f) for _ in range(n)), encoding="utf-8")


def test_train_translate_evaluate(tmp_path, capsys, one_thread):
    data = tmp_path / "m30k"
    data.mkdir()
    for lang in ("de", "en"):
        head(MULTI30K / f"train.{lang}", data / f"train.{lang}", 300)
        head(MULTI30K / f"val.{lang}", data / f"val.{lang}", 20)
        head(MULTI30K / f"test2016.{lang}", data / f"test2016.{lang}", 8)
    run = tmp_path / "run"
    rc = main(["train", "--task", "translate", "--data", str(data), "--preset", "tiny", "--vocab-size", "400",
               "--max-tokens", "512", "--bleu-eval-size", "2", "--steps", "16", "--run-dir", str(run),
               "--no-progress", "--set", "schedule=cosine", "--set", "lr=3e-3", "--set", "warmup_steps=4",
               "--set", "eval_every=8", "--set", "ckpt_every=8", "--set", "log_every=4"])
    assert rc == 0
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logs if "split" not in r]
    evals = [r for r in logs if r.get("split") == "val"]
    assert len(evals) == 2 and {"loss", "bleu", "bleu_lc", "chrf"} <= set(evals[-1])
    assert train[-1]["loss"] < math.log(400)  # below a uniform guess over the vocabulary: it learned
    assert evals[-1]["loss"] < evals[0]["loss"]
    capsys.readouterr()

    (tmp_path / "in.de").write_text("Ein Mann fährt Fahrrad.\n\nZwei Hunde spielen.\n", encoding="utf-8")
    rc = main(["translate", "--checkpoint", str(run), "--beam", "2", "--nbest", "2", "--average-last", "2",
               "--input", str(tmp_path / "in.de")])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" ||| ")[0] for ln in lines] == ["0", "0", "1", "2", "2"]  # an empty line stays one line

    rc = main(["evaluate", "--checkpoint", str(run), "--split", "test", "--beam", "2"])
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("BLEU ") and "case:mixed|eff:no|tok:13a" in out[0] and "case:lc" in out[1]
    result = json.loads(out[-1])
    assert result["sentences"] == 8 and 0.0 <= result["bleu"] <= 100.0

    rc = main(["evaluate", "--checkpoint", str(run), "--split", "test", "--beam", "2", "--int8"])
    assert rc == 0
    quantized = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert quantized["int8"] and quantized["sentences"] == 8 and 0.0 <= quantized["bleu"] <= 100.0
    # a damaged newest checkpoint: translate falls back to the newest intact one and says so on stderr
    (run / "checkpoints" / "step_00000016" / "rng.safetensors").write_bytes(b"\0" * 5)
    rc = main(["translate", "--checkpoint", str(run), "--beam", "1", "--input", str(tmp_path / "in.de")])
    assert rc == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("checkpoint step_00000016 is damaged (") and err.endswith("; using step_00000008")
    assert "rng.safetensors is not a readable safetensors file" in err
