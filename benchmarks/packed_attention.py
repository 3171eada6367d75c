"""Packed rows with segment ids vs padded batches: attention forward + backward on one thread.

    python benchmarks/packed_attention.py                 # 4 packed rows of 256, 8 heads, head dim 32
    python benchmarks/packed_attention.py --rows 2 --repeats 5

Sentences of 16-40 tokens (8 per row) are packed into rows of 256 tokens; the rest of a row is padding with
its own segment id. Cases, all float32, forward + backward (a fixed upstream gradient):

* packed, "flash" with native segment ids (it skips the key blocks of other documents; ``--block`` sets
  its block sizes, 64 by default so a 256-token row holds several blocks);
* packed, "cpu_f32" (the fused C kernel) with native segment ids, skipping its 64 x 64 block pairs whose
  ids never meet;
* packed, "auto" (its choice: the C kernel where the CPU has AVX-512, natively);
* packed, "math" / "torch" / "batched" given the same segment ids, which the registry turns into the
  equivalent (b, 1, 256, 256) boolean mask before the call (the mask construction is timed too);
* unpacked: the same sentences as one padded batch (each sentence a row of the longest length, a key
  padding mask (b, 1, 1, 40)), on "torch", "batched", "flash" and "auto".

Timings are interleaved (one repeat of each case in turn) and medians reported. torch.set_num_threads(1).
Writes benchmarks/results/packed_attention.{json,md} with the machine inside.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import machine, machine_line

import selfattn
from selfattn.attention import BackendUnavailable
from selfattn.attention.flash import FlashConfig, flash_attention
from selfattn.io import atomic_write_json, atomic_write_text

ROW, PER_ROW, SHORTEST, LONGEST = 256, 8, 16, 40


def sentence_lengths(rows: int, gen: torch.Generator) -> list[list[int]]:
    """PER_ROW lengths in [SHORTEST, LONGEST] per row, redrawn until they fit in ROW tokens."""
    out = []
    while len(out) < rows:
        lengths = torch.randint(SHORTEST, LONGEST + 1, (PER_ROW,), generator=gen).tolist()
        if sum(lengths) <= ROW:
            out.append(lengths)
    return out


def packed_ids(lengths: list[list[int]]) -> torch.Tensor:
    """(rows, ROW) segment ids: sentence s of a row has id s, the padding tail id PER_ROW."""
    ids = torch.full((len(lengths), ROW), PER_ROW, dtype=torch.int64)
    for r, row in enumerate(lengths):
        starts = [sum(row[:s]) for s in range(len(row))]
        for s, (a, n) in enumerate(zip(starts, row)):
            ids[r, a:a + n] = s
    return ids


def cases(lengths, heads: int, d: int, block: int, gen: torch.Generator) -> dict:
    """name -> (callable(q, k, v) -> out, (q, k, v) leaf tensors)."""
    rows = len(lengths)
    seg = packed_ids(lengths)
    segs = (seg, seg)
    flat = [n for row in lengths for n in row]
    pad = torch.zeros(len(flat), 1, 1, LONGEST, dtype=torch.bool)  # (sentences, 1, 1, LONGEST)
    for i, n in enumerate(flat):
        pad[i, ..., :n] = True

    def qkv(b, n):
        return tuple(torch.randn(b, heads, n, d, generator=gen).requires_grad_() for _ in range(3))

    cfg = FlashConfig(block, block)
    packed, unpacked = qkv(rows, ROW), qkv(len(flat), LONGEST)
    out = {"packed flash (native segment ids)":
           (lambda q, k, v: flash_attention(q, k, v, segment_ids=segs, config=cfg)[0], packed)}
    out["packed cpu_f32 (native segment ids)"] = (  # the C kernel: skips block pairs whose ids never meet
        lambda q, k, v: selfattn.attention(q, k, v, segment_ids=segs, backend="cpu_f32"), packed)
    out["packed auto (segment ids as its choice takes them)"] = (
        lambda q, k, v: selfattn.attention(q, k, v, segment_ids=segs), packed)
    for name in ("math", "torch", "batched"):
        out[f"packed {name} (segment ids as bool mask)"] = (
            lambda q, k, v, name=name: selfattn.attention(q, k, v, segment_ids=segs, backend=name), packed)
    for name in ("torch", "batched", "flash", "auto"):
        out[f"unpacked {name} (padded to {LONGEST}, key padding mask)"] = (
            lambda q, k, v, name=name: selfattn.attention(q, k, v, mask=pad, backend=name), unpacked)
    return out


def time_once(fn, tensors) -> float:
    for t in tensors:
        t.grad = None
    t0 = time.perf_counter()
    out = fn(*tensors)
    out.backward(torch.ones_like(out))
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    lengths = sentence_lengths(args.rows, gen)
    table = cases(lengths, args.heads, args.head_dim, args.block, gen)
    times: dict[str, list[float]] = {name: [] for name in table}
    errors: dict[str, str] = {}
    for name, (fn, ts) in table.items():  # warm-up, and backends that decline are recorded
        try:
            time_once(fn, ts)
        except (ValueError, BackendUnavailable) as exc:  # e.g. cpu_f32 on a CPU without AVX-512
            errors[name] = str(exc)
            del times[name]
    for _ in range(args.repeats):
        for name in times:
            times[name].append(time_once(*table[name]))
    tokens = sum(map(sum, lengths))
    result = {"benchmark": "packed_attention", "machine": machine(), "rows": args.rows, "row_length": ROW,
              "sentences": sum(map(len, lengths)), "real_tokens": tokens, "heads": args.heads,
              "head_dim": args.head_dim, "flash_block": args.block, "repeats": args.repeats,
              "median_ms": {k: round(1e3 * statistics.median(v), 3) for k, v in times.items()},
              "declined": errors}
    out = ROOT / "benchmarks" / "results" / "packed_attention"
    atomic_write_json(out.with_suffix(".json"), result, mkdir=True)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))


def markdown(res: dict) -> str:
    lines = ["# Packed rows (segment ids) vs padded batches, attention forward + backward", "",
             machine_line(res["machine"]), "",
             "The machine is shared with other jobs (see the load average): timings are indicative.", "",
             f"{res['rows']} rows of {res['row_length']} tokens holding {res['sentences']} sentences of "
             f"{SHORTEST}-{LONGEST} tokens ({res['real_tokens']} real tokens); {res['heads']} heads, head dim "
             f"{res['head_dim']}, float32, flash blocks {res['flash_block']}; median of {res['repeats']} "
             "interleaved repeats, 1 thread.", "", "| case | fwd+bwd ms |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in sorted(res["median_ms"].items(), key=lambda kv: kv[1])]
    lines += [f"| {k} | declined: {v} |" for k, v in res["declined"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
