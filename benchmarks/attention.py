"""Attention benchmark: naive math vs PyTorch SDPA vs the selfattn backends (not part of the tests).

For each (N, dtype, case, implementation, mode) it runs one fresh subprocess, which builds
q, k, v of shape (B=1, H=8, N, D=64), times the call (median of ``--repeats``) and reports
peak memory: on CPU the rise of ``ru_maxrss`` (resource.getrusage) over the baseline taken after
the inputs exist, on CUDA ``torch.cuda.max_memory_allocated`` minus the inputs.

Cases (mask convention: True = may attend; causal is bottom-right aligned):
    none     full attention
    causal   causal
    window   causal sliding window of ``--window`` keys to the left (capped at N/4 for small N)
    padding  causal + key padding (last 10% of keys padded): SDPA needs an N x N mask for it

Modes: ``fwd`` (forward only, no grad) and ``fwdbwd`` (forward + backward of sum(out * g)).
GFLOP/s counts matmul FLOPs of the allowed (query, key) pairs: 4·D per pair forward,
2.5x that for the backward (FlashAttention's convention).

Writes the one current result ``benchmarks/results/attention.{json,md,png}`` (atomically; ``--tag T`` writes a
scratch ``attention-T.*`` instead), the machine — CPU flags, cores, torch — inside. Example (a few minutes on a 2-core CPU)::

    python benchmarks/attention.py --n 512 1024 2048 4096 --dtypes float32 bfloat16 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import RESULTS, machine, machine_line

from selfattn.io import atomic_write_text

CASES = ("none", "causal", "window", "padding")
CPU_IMPLS = ("naive", "sdpa", "math", "torch", "flash", "cpu_bf16", "cpu_f32", "auto")
ONLY_DTYPE = {"cpu_bf16": "bfloat16", "cpu_f32": "float32"}  # backends that serve one dtype
CUDA_IMPLS = ("sdpa_flash", "sdpa_cudnn", "triton")


# ---------------------------------------------------------------------------------------- worker
def _inputs(n, dtype, device, case, window, grad):
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, 8, n, 64, generator=g).to(device=device, dtype=dtype).requires_grad_(grad)
               for _ in range(3))  # (b, h, n, d)
    kw = {"causal": case != "none"}
    if case == "window":
        kw["window"] = (_window(n, window), 0)
    if case == "padding":
        pad = torch.ones(1, 1, 1, n, dtype=torch.bool, device=device)  # (b, 1, 1, m)
        pad[..., n - n // 10:] = False
        kw["mask"] = pad
    return q, k, v, kw


def _window(n, window):
    return min(window, max(1, n // 4))


def _dense_mask(n, kw, device):
    """The (1, 1, n, n) boolean mask SDPA / naive need for window/padding cases."""
    from selfattn.attention.structure import structural_mask

    allowed = structural_mask(n, n, causal=kw["causal"], window=kw.get("window"), device=device)
    if "mask" in kw:
        allowed = allowed & kw["mask"]
    return allowed.view(1, 1, n, n)


def _fn(impl, q, k, v, kw):
    import torch
    import torch.nn.functional as F

    import selfattn

    n = q.shape[2]
    simple = "window" not in kw and "mask" not in kw
    if impl == "naive":  # op by op, float32 softmax on an explicit n x n score matrix
        mask = None if simple and not kw["causal"] else _dense_mask(n, kw, q.device)

        def run():
            s = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5  # (b, h, n, n)
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            return torch.softmax(s, dim=-1).to(v.dtype) @ v
        return run
    if impl.startswith("sdpa"):
        mask = None if simple else _dense_mask(n, kw, q.device)
        causal = kw["causal"] and simple

        def call():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        if impl == "sdpa":
            return call
        from torch.nn.attention import SDPBackend, sdpa_kernel
        kind = SDPBackend.FLASH_ATTENTION if impl == "sdpa_flash" else SDPBackend.CUDNN_ATTENTION

        def run():
            with sdpa_kernel(kind):
                return call()
        return run
    backend = "auto" if impl == "auto" else impl
    return lambda: selfattn.attention(q, k, v, backend=backend, **kw)


def _maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def worker(spec: dict) -> dict:
    import torch

    dtype = getattr(torch, spec["dtype"])
    device = spec["device"]
    grad = spec["mode"] == "fwdbwd"
    q, k, v, kw = _inputs(spec["n"], dtype, device, spec["case"], spec["window"], grad)
    fn = _fn(spec["impl"], q, k, v, kw)
    gout = torch.randn(1, 8, spec["n"], 64, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        if grad:
            out = fn()
            torch.autograd.grad(out, (q, k, v), gout)
        else:
            with torch.no_grad():
                fn()
        sync()

    import selfattn
    chosen = None
    if spec["impl"] == "auto":
        chosen = selfattn.explain_backend(q, k, v, **kw).chosen
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _maxrss_bytes()
    times = []
    warmup = spec["repeats"] > 0  # --repeats 0: one cold call, timed (for the slowest long cases)
    for i in range(spec["repeats"] + 1):  # the first call is warm-up
        t0 = time.perf_counter()
        step()
        if i or not warmup:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _maxrss_bytes()) - base
    return {"time_s": statistics.median(times), "times_s": times, "peak_bytes": max(0, peak),
            "chosen": chosen}


# ------------------------------------------------------------------------------------- driver
def flops(n, case, window, mode):
    """Matmul FLOPs for the allowed pairs (B=1, H=8, D=64)."""
    if case == "none":
        pairs = n * n
    elif case == "window":
        w = _window(n, window)
        pairs = sum(min(i, w) + 1 for i in range(n))
    else:
        pairs = n * (n + 1) // 2
    f = 4 * 64 * 8 * pairs
    return f * (3.5 if mode == "fwdbwd" else 1.0)


def run_case(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timeout > {timeout:.0f}s"}
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
        return {**spec, "error": f"rc {p.returncode}: {tail[:200]}"}
    return {**spec, **json.loads(p.stdout.strip().splitlines()[-1])}


def write_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text, mkdir=True)


def table(rows: list[dict], title: str) -> str:
    """Markdown table; "vs SDPA" = SDPA's median time / this one's for the same case (>1 = faster)."""
    sdpa = {(r["n"], r["dtype"], r["case"], r["mode"]): r["time_s"] for r in rows
            if r["impl"] == "sdpa" and "error" not in r}
    out = [f"**{title}**", "",
           "| N | dtype | case | mode | impl | median ms | GFLOP/s | peak MiB | vs SDPA |",
           "|---:|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        impl = r["impl"] + (f" ({r['chosen']})" if r.get("chosen") else "")
        if "error" in r:
            out.append(f"| {r['n']} | {r['dtype']} | {r['case']} | {r['mode']} | {impl} | "
                       f"{r['error']} | | | |")
            continue
        ref = sdpa.get((r["n"], r["dtype"], r["case"], r["mode"]))
        ratio = f"{ref / r['time_s']:.2f}x" if ref else ""
        out.append(f"| {r['n']} | {r['dtype']} | {r['case']} | {r['mode']} | {impl} | "
                   f"{r['time_s'] * 1e3:.1f} | {r['gflops']:.1f} | {r['peak_bytes'] / 2**20:.0f} | {ratio} |")
    return "\n".join(out) + "\n"


def summary(rows: list[dict]) -> str:
    """One line per (N, dtype, case): SDPA's median vs "auto"'s (and the backend auto chose), forward and
    forward+backward, with the ratio (>1 = auto faster) and the peak memory of each."""
    by = {(r["n"], r["dtype"], r["case"], r["mode"], r["impl"]): r for r in rows if "error" not in r}
    keys = sorted({(r["n"], r["dtype"], r["case"]) for r in rows}, key=lambda k: (k[1], k[0], CASES.index(k[2])))
    out = ["| N | dtype | case | fwd SDPA → auto | fwd+bwd SDPA → auto | fwd+bwd peak MiB SDPA / auto |",
           "|---:|---|---|---:|---:|---:|"]
    for n, dt, case in keys:
        cells, mem = [], "—"
        for mode in ("fwd", "fwdbwd"):
            s, a = by.get((n, dt, case, mode, "sdpa")), by.get((n, dt, case, mode, "auto"))
            if a is None:
                cells.append("—")
                continue
            auto = f"{a['time_s'] * 1e3:.1f} ms ({a.get('chosen', '?')})"
            if s is None:
                cells.append(f"SDPA skipped (N×N mask) → {auto}")
            else:
                cells.append(f"{s['time_s'] * 1e3:.1f} → {auto}: **{s['time_s'] / a['time_s']:.2f}×**")
            if mode == "fwdbwd":
                mem = f"{s['peak_bytes'] / 2**20:.0f} / {a['peak_bytes'] / 2**20:.0f}" if s else \
                    f"— / {a['peak_bytes'] / 2**20:.0f}"
        out.append(f"| {n} | {dt} | {case} | {cells[0]} | {cells[1]} | {mem} |")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["dtype"], r["mode"]) for r in rows})
    cases = [c for c in CASES if any(r["case"] == c for r in rows)]
    fig, axes = plt.subplots(len(groups), len(cases), figsize=(4 * len(cases), 3 * len(groups)),
                             squeeze=False)
    for gi, (dt, mode) in enumerate(groups):
        for ci, case in enumerate(cases):
            ax = axes[gi][ci]
            sel = [r for r in rows if r["dtype"] == dt and r["mode"] == mode and r["case"] == case
                   and "error" not in r]
            for impl in sorted({r["impl"] for r in sel}):
                pts = sorted((r["n"], r["gflops"]) for r in sel if r["impl"] == impl)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{case}, {dt}, {mode}", fontsize=9)
            ax.set_xlabel("N")
            ax.set_ylabel("GFLOP/s")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def accuracy(n: int = 1024, seeds: int = 3) -> list[dict]:
    """Relative L2 error of sliding-window and linear attention against full causal softmax attention.

    Inputs: q, k ~ N(0, 1) times a temperature (larger = peakier softmax, as trained models tend
    to be), v ~ N(0, 1); B=1, H=8, D=64. An output-level proxy, not a task metric.
    """
    import torch

    import selfattn
    from selfattn.attention.linear import linear_attention

    rows = []
    for temp in (0.5, 1.0, 2.0):
        errs: dict[str, list[float]] = {}
        for seed in range(seeds):
            g = torch.Generator().manual_seed(seed)
            q, k = (torch.randn(1, 8, n, 64, generator=g) * temp**0.5 for _ in range(2))
            v = torch.randn(1, 8, n, 64, generator=g)
            full = selfattn.attention(q, k, v, causal=True)
            outs = {f"sliding w={w}": selfattn.attention(q, k, v, causal=True, window=(w, 0))
                    for w in (32, 128, 512)}
            outs["linear (elu+1)"] = linear_attention(q, k, v, causal=True)
            for name, out in outs.items():
                errs.setdefault(name, []).append(((out - full).norm() / full.norm()).item())
        rows += [{"temperature": temp, "type": k, "rel_l2_error": statistics.median(e)}
                 for k, e in errs.items()]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384, 32768, 65536],
                    help="sequence lengths (default 512 ... 65536)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="input dtypes")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--impls", nargs="+", default=None,
                    help=f"implementations (default {CPU_IMPLS} plus {CUDA_IMPLS} on CUDA)")
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    ap.add_argument("--window", type=int, default=4096, help="sliding window (keys to the left)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per case after a warm-up call (median reported); 0 = one cold call")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per case before giving up")
    ap.add_argument("--max-nn-gib", type=float, default=6.0,
                    help="skip impls that form an N x N float32 tensor per head above this size")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--tag", default=None, help="scratch results attention-TAG.* (default: the one current result, attention.*)")
    ap.add_argument("--accuracy", action="store_true",
                    help="only measure sliding-window and linear attention against full attention")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.accuracy:
        rows = accuracy()
        text = "| q·k temperature | attention type | relative L2 error vs full causal |\n|---:|---|---:|\n"
        text += "".join(f"| {r['temperature']} | {r['type']} | {r['rel_l2_error']:.3f} |\n" for r in rows)
        write_atomic(RESULTS / "attention-accuracy.md", text)
        print(text)
        return 0

    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    impls = args.impls or list(CPU_IMPLS) + (list(CUDA_IMPLS) if device == "cuda" else [])
    dense = {"naive", "math"}
    rows: list[dict] = []
    for n in args.n:
        for dt in args.dtypes:
            for case in args.cases:
                for mode in args.modes:
                    for impl in impls:
                        spec = {"n": n, "dtype": dt, "case": case, "mode": mode, "impl": impl,
                                "device": device, "window": args.window, "repeats": args.repeats}
                        nn_gib = 8 * n * n * 4 / 2**30  # (1, 8, n, n) float32 scores
                        needs_nn = impl in dense or (impl.startswith("sdpa") and case in ("window", "padding"))
                        if ONLY_DTYPE.get(impl, dt) != dt:
                            continue
                        if needs_nn and nn_gib > args.max_nn_gib:
                            r = {**spec, "error": f"skipped: N x N tensors {nn_gib:.0f} GiB"}
                        else:
                            r = run_case(spec, args.timeout)
                        if "error" not in r:
                            r["gflops"] = flops(n, case, args.window, mode) / r["time_s"] / 1e9
                        rows.append(r)
                        msg = r.get("error") or f"{r['time_s'] * 1e3:9.1f} ms {r['gflops']:7.1f} GFLOP/s " \
                                                f"{r['peak_bytes'] / 2**20:8.0f} MiB {r.get('chosen') or ''}"
                        print(f"N={n:6d} {dt:8s} {case:7s} {mode:6s} {impl:10s} {msg}", flush=True)
    stem = f"attention-{args.tag}" if args.tag else "attention"
    info = machine()
    doc = {"machine": info, "argv": sys.argv[1:], "rows": rows}
    write_atomic(RESULTS / f"{stem}.json", json.dumps(doc, indent=1))
    write_atomic(RESULTS / f"{stem}.md", table(rows, "Attention") + "\n\n" + machine_line(info) + "\n\n"
                 + summary(rows))
    plot(rows, RESULTS / f"{stem}.png")
    print(f"wrote {RESULTS}/{stem}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
