"""Quality parity of bf16 training: validation loss at equal steps, a bf16 run against an fp32 run of one recipe.

    python benchmarks/bf16_parity.py --fp32 benchmarks/results/translation_m30k_60min.metrics.jsonl \
        --bf16 runs/m30k-bf16/metrics.jsonl

Both files are a run's metrics.jsonl (``selfattn train`` writes one; its "split": "val" lines hold the whole
validation split's loss). The target (issue #14): bf16's val loss within 1% of fp32's at every shared step.
Writes benchmarks/results/bf16_parity.{json,md}; the machine that trained each run is not known to this
script, so the command line and the files are recorded and the README names the machines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def val_points(path: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["step"]: r for r in rows if r.get("split") == "val"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp32", required=True, type=Path, help="metrics.jsonl of the fp32 run")
    ap.add_argument("--bf16", required=True, type=Path, help="metrics.jsonl of the bf16 run")
    ap.add_argument("--tolerance", type=float, default=0.01, help="relative val-loss difference allowed")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bf16_parity"))
    args = ap.parse_args()
    from selfattn.io import atomic_write_bytes

    a, b = val_points(args.fp32), val_points(args.bf16)
    steps = sorted(set(a) & set(b))
    if not steps:
        raise SystemExit(f"no shared validation steps: fp32 has {sorted(a)}, bf16 has {sorted(b)}")
    rows = [{"step": s, "fp32_val_loss": round(a[s]["loss"], 4), "bf16_val_loss": round(b[s]["loss"], 4),
             "relative_difference": round(b[s]["loss"] / a[s]["loss"] - 1, 4),
             "fp32_bleu_lc": round(a[s].get("bleu_lc", float("nan")), 2),
             "bf16_bleu_lc": round(b[s].get("bleu_lc", float("nan")), 2)} for s in steps]
    worst = max(abs(r["relative_difference"]) for r in rows)
    worse = max(r["relative_difference"] for r in rows)  # bf16's loss above fp32's: the direction that hurts
    doc = {"fp32": str(args.fp32), "bf16": str(args.bf16), "tolerance": args.tolerance,
           "worst_relative_difference": worst, "within_tolerance": worst <= args.tolerance,
           "worst_bf16_above_fp32": worse, "rows": rows,
           "command": " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out + ".json", (json.dumps(doc, indent=1) + "\n").encode())
    lines = ["**bf16_parity**", "", f"`{doc['command']}`", "",
             "| step | fp32 val loss | bf16 val loss | bf16 / fp32 - 1 | fp32 val BLEU-lc* | bf16 val BLEU-lc* |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['step']} | {r['fp32_val_loss']} | {r['bf16_val_loss']} | {100 * r['relative_difference']:+.2f}% "
              f"| {r['fp32_bleu_lc']} | {r['bf16_bleu_lc']} |" for r in rows]
    lines += ["", f"Largest difference either way {100 * worst:.2f}% (target within {100 * args.tolerance:.0f}%: "
              f"{'met' if doc['within_tolerance'] else 'not met'}); bf16's loss is at most {100 * worse:+.2f}% above "
              "fp32's. One run each (different dropout draws): run-to-run noise is not separated. *BLEU-lc of the training-time evaluation (`--bleu-eval-size 100`: 100 val sentences)."]
    atomic_write_bytes(args.out + ".md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
