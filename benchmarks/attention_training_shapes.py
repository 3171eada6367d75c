"""Calibrate "auto" for training shapes: short sequences, many (batch x head) problems, forward + backward.

    python benchmarks/attention_training_shapes.py                  # the default grid, bf16 and float32
    python benchmarks/attention_training_shapes.py --lengths 16,32,64 --problems 256,1024 --repeats 3
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/attention_training_shapes.py \
        --out /tmp/ats_avx2   # an AVX-512 machine measured as AVX2-only (results/ keeps one current result)

For each (N, b*h, dtype, mask) case it times forward and forward+backward of the backends that can serve a
training call on this CPU — "torch" (SDPA), "batched" (batched matmuls, float32 softmax), "cpu_bf16" /
"cpu_f32" (the fused C kernel, where this CPU has AVX-512) — interleaved (one repeat of each in turn), and
reports medians and the fastest. ``AUTO_MAX_LEN`` in ``selfattn/attention/batched.py`` comes from this
table. Masks: "none", "causal" (decoder self-attention), "padding" (key padding, (b, 1, 1, m), a quarter
of the rows short). Head dim 32 (the `small` preset), ``--head-dim`` to change.
Writes benchmarks/results/attention_training_shapes.{json,md} with the machine inside.
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

from train_step import machine

import selfattn
from selfattn.attention import BACKENDS
from selfattn.io import atomic_write_json, atomic_write_text

HEADS = 8


def inputs(n: int, problems: int, d: int, dtype, mask_kind: str):
    b = max(1, problems // HEADS)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, HEADS, n, d, generator=g).to(dtype).requires_grad_() for _ in range(3))
    kwargs = {}
    if mask_kind == "causal":
        kwargs["causal"] = True
    elif mask_kind == "padding":
        pad = torch.ones(b, 1, 1, n, dtype=torch.bool)
        pad[: max(1, b // 4), ..., n // 2:] = False  # a quarter of the rows half padding
        kwargs["mask"] = pad
    return q, k, v, kwargs


def time_once(backend: str, q, k, v, kwargs, backward: bool) -> float:
    t0 = time.perf_counter()
    if backward:
        out = selfattn.attention(q, k, v, backend=backend, **kwargs)
        out.backward(torch.ones_like(out))
    else:
        with torch.no_grad():
            selfattn.attention(q, k, v, backend=backend, **kwargs)
    return time.perf_counter() - t0


def run_case(n, problems, d, dtype, mask_kind, repeats) -> dict:
    q, k, v, kwargs = inputs(n, problems, d, dtype, mask_kind)
    # torch_f32: SDPA on float32 copies, what "auto" picks for bf16 where the CPU has no bf16 units
    call_names = ["torch", "batched"] + (["cpu_bf16", "torch_f32"] if dtype == torch.bfloat16 else ["cpu_f32"])
    names = []
    for name in call_names:
        try:
            time_once(name, q, k, v, kwargs, True)  # warm-up (and builds the C kernel once)
            names.append(name)
        except ValueError:
            pass
    res = {"n": n, "problems": problems, "d": d, "dtype": str(dtype).replace("torch.", ""), "mask": mask_kind}
    for mode, bwd in (("fwd", False), ("fwdbwd", True)):
        times = {name: [] for name in names}
        for _ in range(repeats):
            for name in names:  # interleaved
                q.grad = k.grad = v.grad = None
                times[name].append(time_once(name, q, k, v, kwargs, bwd))
        med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        res[mode] = med
        res[f"{mode}_fastest"] = min(med, key=med.get)
        res[f"{mode}_auto"] = selfattn.explain_backend(
            q if bwd else q.detach(), k if bwd else k.detach(), v if bwd else v.detach(), **kwargs).chosen
    return res


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"# attention_training_shapes: short sequences, many problems (head dim {res['head_dim']})", "",
        (f"Machine: {m['processor']}, {m['cores']} cores, {m['threads']} torch threads, torch {m['torch']} "
         f"({m['torch_cpu_capability']}), flags {' '.join(m.get('flags', []))}; load average at the end "
         f"{m.get('load_average')}."),
        f"Command: `python benchmarks/{res['command']}`; medians of {res['repeats']} interleaved repeats, ms.", "",
        ("| N | b*h | dtype | mask | fwd: torch / batched / C kernel (/ torch_f32 for bf16) | fastest | fwd+bwd: "
         "torch / batched / C kernel (/ torch_f32) | fastest | auto (fwd+bwd) |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(r: dict, mode: str) -> str:
        kernel = "cpu_bf16" if r["dtype"] == "bfloat16" else "cpu_f32"
        names = ("torch", "batched", kernel) + (("torch_f32",) if r["dtype"] == "bfloat16" else ())
        return " / ".join(f"{r[mode].get(name, float('nan')):.2f}" for name in names)

    for r in res["cases"]:
        lines.append(f"| {r['n']} | {r['problems']} | {r['dtype']} | {r['mask']} | {cell(r, 'fwd')} | "
                     f"{r['fwd_fastest']} | {cell(r, 'fwdbwd')} | {r['fwdbwd_fastest']} | {r['fwdbwd_auto']} |")
    return "\n".join([*lines, "", *policy_summary(res["cases"])]) + "\n"


def policy_summary(cases: list[dict]) -> list[str]:
    """Per dtype: in how many cells auto's fwd+bwd pick is within 5% of the fastest, the worst miss."""
    out = []
    for dtype in sorted({r["dtype"] for r in cases}):
        rows = [r for r in cases if r["dtype"] == dtype]
        slow = [r["fwdbwd"][r["fwdbwd_auto"]] / r["fwdbwd"][r["fwdbwd_fastest"]] for r in rows]
        out.append(f"- {dtype}, fwd+bwd: auto within 5% of the fastest in {sum(x <= 1.05 for x in slow)} of "
                   f"{len(rows)} cells; worst {max(slow):.2f}x the fastest.")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="8,16,32,64,128,256")
    ap.add_argument("--problems", default="64,256,1024,2048")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--masks", default="none,causal,padding")
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attention_training_shapes"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = []
    for dtype in (getattr(torch, s) for s in args.dtypes.split(",")):
        for mask_kind in args.masks.split(","):
            for n in (int(s) for s in args.lengths.split(",")):
                for p in (int(s) for s in args.problems.split(",")):
                    r = run_case(n, p, args.head_dim, dtype, mask_kind, args.repeats)
                    print(r, flush=True)
                    cases.append(r)
    result = {"benchmark": "attention_training_shapes", "machine": machine(), "head_dim": args.head_dim,
              "repeats": args.repeats, "backends": sorted(BACKENDS),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "cases": cases}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result, mkdir=True)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
