"""The GPU check of issue #14: the Triton kernel and a CUDA training step against PyTorch's own, in one run.

    bash benchmarks/gpu_check.sh                  # on a CUDA machine: the CUDA tests, then this script (<= 8 min)
    python benchmarks/gpu_check.py                # this script alone
    python benchmarks/gpu_check.py --dry-run      # CPU, Triton's interpreter, tiny shapes: checks the script itself

1. Attention in bf16, forward and forward + backward, causal and not, head dim 64 and 128, N = 1k, 4k, 16k (batch
   16k / N, heads 2048 / d, FlashAttention's benchmark shapes): backend "triton" against SDPA pinned to its flash
   and its cuDNN kernels, in TFLOP/s (forward 4·B·H·N²·d, halved when causal; backward 2.5× the forward), median of
   CUDA-event timings. Each output is compared with SDPA's (max |difference|, recorded) so a fast wrong kernel shows.
2. One training step of the `paper-base` preset (6+6 layers, d 512, vocab 37,000; 64 pairs × 64 + 64 tokens, AdamW,
   label smoothing 0.1) against ``nn.Transformer`` of the same shape, both under ``torch.autocast(bfloat16)``,
   interleaved, medians (``train_step.Runner``).

A backend that cannot run here (no cuDNN attention, say) is recorded with its error, not skipped in silence.
Writes benchmarks/results/gpu_check.{json,md} (dry run: gpu_check_dry.{json,md}) with the machine inside.
"""

from __future__ import annotations

import os
import sys

DRY = "--dry-run" in sys.argv
if DRY:  # before anything imports triton's jit: the kernels run in the interpreter on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import machine, machine_line
from train_step import PlainTransformer, Runner, forward_flops, make_batch

import selfattn
from selfattn.io import atomic_write_json, atomic_write_text
from selfattn.models import build_model, preset

SDPA = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}


def timed_ms(fn: Callable[[], object], reps: int, cuda: bool) -> float:
    """Median milliseconds of ``fn`` over ``reps`` calls after one warm-up (CUDA events on a GPU)."""
    fn()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def _attend(name: str, q, k, v, causal: bool):
    if name == "triton":
        return selfattn.attention(q, k, v, causal=causal, backend="triton")
    with sdpa_kernel(SDPA[name]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def attention_rows(shapes: list[tuple[int, int, int, int]], reps: int, device: torch.device) -> list[dict]:
    """(B, H, N, d) shapes x causal x {forward, forward+backward} x backend: TFLOP/s and error vs SDPA."""
    rows = []
    for b, h, n, d in shapes:
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(b, h, n, d, device=device, generator=gen, dtype=torch.bfloat16) for _ in range(3))
        do = torch.randn_like(q)
        for causal in (False, True):
            flops = 4 * b * h * n * n * d * (0.5 if causal else 1.0)
            ref = None
            for name in ("sdpa-flash", "sdpa-cudnn", "triton"):
                row = {"B": b, "H": h, "N": n, "d": d, "causal": causal, "backend": name}
                try:
                    out = _attend(name, q, k, v, causal)
                    ref = out if ref is None else ref
                    row["max_abs_diff_vs_first_sdpa"] = float((out.float() - ref.float()).abs().max())
                    fwd = timed_ms(lambda: _attend(name, q, k, v, causal), reps, device.type == "cuda")
                    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
                    both = timed_ms(lambda: _attend(name, *leaves, causal).backward(do), reps, device.type == "cuda")
                    row.update(fwd_ms=fwd, fwd_bwd_ms=both, fwd_tflops=flops / fwd / 1e9,
                               fwd_bwd_tflops=3.5 * flops / both / 1e9)
                except (RuntimeError, ValueError) as exc:  # a kernel this machine lacks: say which and why
                    row["error"] = str(exc).splitlines()[0][:200]
                rows.append(row)
    return rows


def train_rows(dry: bool, steps: int, device: torch.device) -> dict:
    """paper-base (tiny in a dry run): selfattn vs nn.Transformer, bf16 autocast, interleaved steps."""
    cfg = preset("tiny", dropout=0.1) if dry else preset("paper-base")
    b, length = (4, 16) if dry else (64, 64)
    batch = tuple(t.to(device) for t in make_batch(b, length, length // 3, seed=0, vocab=cfg.vocab_size))
    torch.manual_seed(0)
    ours = build_model(cfg).to(device)
    torch.manual_seed(0)
    plain = PlainTransformer(cfg.vocab_size, cfg.d_model, cfg.num_heads, cfg.d_ff, cfg.num_encoder_layers,
                             cfg.norm_first, cfg.dropout).to(device)
    runners = [Runner("nn.Transformer bf16", plain, True, batch, True), Runner("selfattn bf16", ours, True, batch, False)]
    for r in runners:
        r.step()
    for _ in range(steps):
        for r in runners:
            r.times.append(r.step())
    flops = 3 * forward_flops(b, length, length, C=cfg.d_model, FF=cfg.d_ff, LAYERS=cfg.num_encoder_layers,
                              V=cfg.vocab_size)
    tokens = batch[0].numel() + batch[1].numel()
    out = {"preset": "tiny" if dry else "paper-base", "batch": b, "length": length, "steps": steps, "rows": []}
    for r in runners:
        med = statistics.median(r.times)
        out["rows"].append({"name": r.name, "median_s": med, "tokens_per_s": tokens / med,
                            "tflops": flops / med / 1e12, "last_loss_sum": r.losses[-1]})
    out["selfattn_vs_nn"] = out["rows"][0]["median_s"] / out["rows"][1]["median_s"]
    return out


def markdown(res: dict) -> str:
    lines = ["# GPU check: Triton attention and a CUDA training step", "", machine_line(res["machine"]), "",
             "| B | H | N | d | causal | backend | fwd TFLOP/s | fwd+bwd TFLOP/s | max abs diff vs SDPA |",
             "|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    for r in res["attention"]:
        if "error" in r:
            lines.append(f"| {r['B']} | {r['H']} | {r['N']} | {r['d']} | {r['causal']} | {r['backend']} | "
                         f"unavailable: {r['error']} | | |")
        else:
            lines.append(f"| {r['B']} | {r['H']} | {r['N']} | {r['d']} | {r['causal']} | {r['backend']} | "
                         f"{r['fwd_tflops']:.3g} | {r['fwd_bwd_tflops']:.3g} | {r['max_abs_diff_vs_first_sdpa']:.2g} |")
    t = res["train"]
    lines += ["", f"Training step, {t['preset']}, {t['batch']} pairs x {t['length']} + {t['length']} tokens, bf16 "
              f"autocast, median of {t['steps']}:", "", "| model | s/step | tokens/s | TFLOP/s |", "|---|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['median_s']:.4f} | {r['tokens_per_s']:,.0f} | {r['tflops']:.3g} |" for r in t["rows"]]
    lines += ["", f"selfattn / nn.Transformer speed: {t['selfattn_vs_nn']:.2f}x"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, Triton's interpreter, tiny shapes")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--out", default="", help="result path without suffix (default benchmarks/results/gpu_check"
                                             "[_dry])")
    args = ap.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (torch.cuda.is_available() is False); --dry-run checks the "
                         "script on CPU")
    device = torch.device("cpu" if args.dry_run else "cuda")
    shapes = ([(1, 2, 32, 16)] if args.dry_run else
              [(16384 // n, 2048 // d, n, d) for d in (64, 128) for n in (1024, 4096, 16384)])
    reps = 1 if args.dry_run else args.reps
    result = {"benchmark": "gpu_check", "dry_run": args.dry_run, "machine": machine(),
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "attention": attention_rows(shapes, reps, device),
              "train": train_rows(args.dry_run, 1 if args.dry_run else args.train_steps, device)}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / ("gpu_check_dry" if args.dry_run else
                                                                             "gpu_check")
    atomic_write_json(out.with_suffix(".json"), result, mkdir=True)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
