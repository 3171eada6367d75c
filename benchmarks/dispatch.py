"""Per-call overhead of ``selfattn.attention``: what the dispatch (validation + backend choice) costs on a
decode-size call, where the attention itself is a few microseconds, and in a tiny model's decoding loop.

    python benchmarks/dispatch.py                          # this checkout
    python benchmarks/dispatch.py --before before.json     # also show a run of older code (same script)

Cases: B=1, H=8, N=1 (one decoding step), M=128, D=64, float32 and bfloat16, backend "auto"; the same
call with the backend named; ``explain_backend`` (reasons built); the C kernel on N=64 (its custom-op
call overhead, where the CPU has it); and greedy decoding of 256 tokens with
the "tiny" decoder-only preset (KV cache). Median of many repeats; the 2-core machine is shared with other
jobs, so read ratios, not absolute values. Writes benchmarks/results/dispatch.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import selfattn
from selfattn.attention.spec import validate_call
from selfattn.generation import greedy

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "dispatch"


def per_call_us(fn, calls: int = 2000, rounds: int = 15) -> float:
    """Median over ``rounds`` of the mean microseconds per call of ``calls`` calls (after a warm-up)."""
    for _ in range(200):
        fn()
    means = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        means.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(means)


def machine() -> dict:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = " ".join(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma")))
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "flags": flags,
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "commit": commit.stdout.strip(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def measure() -> dict:
    rows = {}
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            q = torch.randn(1, 8, 1, 64, dtype=dtype)
            k, v = torch.randn(1, 8, 128, 64, dtype=dtype), torch.randn(1, 8, 128, 64, dtype=dtype)
            name = str(dtype).removeprefix("torch.")
            chosen = selfattn.explain_backend(q, k, v, causal=True).chosen
            rows[f"attention auto, {name}"] = per_call_us(lambda: selfattn.attention(q, k, v, causal=True))
            rows[f"attention backend={chosen!r}, {name}"] = per_call_us(
                lambda: selfattn.attention(q, k, v, causal=True, backend=chosen))
            rows[f"explain_backend, {name}"] = per_call_us(lambda: selfattn.explain_backend(q, k, v, causal=True),
                                                           calls=500)
            if hasattr(selfattn.BACKENDS, "decide"):  # the dispatch alone, this code: a cached decision vs the walk
                rows[f"dispatch only: validate_call + cached decide, {name}"] = per_call_us(
                    lambda: selfattn.BACKENDS.decide(validate_call(q, k, v, mask=None, causal=True, scale=None,
                                                                   dropout_p=0.0, window=None, alibi_slopes=None,
                                                                   return_weights=False), "auto"))
                rows[f"dispatch only: validate_call + the uncached walk with reasons (explain), {name}"] = (
                    per_call_us(lambda: selfattn.BACKENDS.explain(validate_call(
                        q, k, v, mask=None, causal=True, scale=None, dropout_p=0.0, window=None, alibi_slopes=None,
                        return_weights=False), "auto"), calls=500))
        q, k = torch.randn(1, 8, 64, 64, dtype=torch.bfloat16), torch.randn(1, 8, 128, 64, dtype=torch.bfloat16)
        if selfattn.explain_backend(q, k, k, causal=True).chosen == "cpu_bf16":  # the C kernel's call overhead
            rows["attention auto = 'cpu_bf16', bfloat16, N=64"] = per_call_us(
                lambda: selfattn.attention(q, k, k, causal=True), calls=200)
        cfg = selfattn.models.config.preset("tiny", kind="decoder", num_encoder_layers=0, max_len=512,
                                            dropout=0.0, pad_id=None)
        torch.manual_seed(0)
        model = selfattn.build_model(cfg).eval()
        prompt = torch.randint(0, cfg.vocab_size, (1, 8))
        greedy(model, prompt=prompt, max_new_tokens=16, use_cache=True)
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            greedy(model, prompt=prompt, max_new_tokens=256, use_cache=True)
            times.append(time.perf_counter() - t0)
        rows["tiny decoder, greedy 256 tokens (ms per token)"] = statistics.median(times) / 256 * 1e3
    return {k: round(v, 2) for k, v in rows.items()}


def _fastest(runs: list[dict]) -> dict:
    """Per case, the fastest of the runs: on a shared machine the least disturbed estimate."""
    return {case: min(r[case] for r in runs) for case in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="a JSON written by this script on older code, shown beside this run")
    ap.add_argument("--out", default=str(OUT), help="output path without suffix (.json and .md are written)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the dispatch is single-threaded)")
    ap.add_argument("--runs", type=int, default=3, help="repeat every case; keep each case's fastest run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": machine(),
              "unit": "microseconds per call (median of 15 rounds; fastest of --runs), except the decoding row",
              "runs": args.runs, "results": _fastest([measure() for _ in range(args.runs)])}
    if args.before:
        before = json.loads(Path(args.before).read_text())
        result["before"] = {"machine": before["machine"], "results": before["results"]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out.with_suffix(".json"))
    lines = [f"# {__doc__.splitlines()[0]}", "", f"`{result['command']}` on {result['machine']}", "",
             "| case | before | now | now / before |" if args.before else "| case | now |",
             "|---|---:|---:|---:|" if args.before else "|---|---:|"]
    for case, now in result["results"].items():
        if args.before:
            was = result["before"]["results"].get(case.replace("'", "'"))
            ratio = f"{now / was:.2f}" if was else "-"
            lines.append(f"| {case} | {was if was is not None else '-'} | {now} | {ratio} |")
        else:
            lines.append(f"| {case} | {now} |")
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out.with_suffix(".md"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
