"""One training step of the `small` preset: selfattn vs a plain ``nn.Transformer``, fp32 and bf16 autocast.

    python benchmarks/train_step.py                    # 128 pairs x 32 + 32 tokens, 3 warm-up + 7 timed steps
    python benchmarks/train_step.py --steps 3 --warmup 1   # a quick look on a busy machine

Both models have the `small` shape (3+3 layers, d 256, 8 heads, d_ff 1024, vocab 8000, pre-norm, dropout
0.1, tied embeddings, sinusoidal positions); the plain one is ``nn.Transformer(batch_first=True,
norm_first=True)`` with an embedding, positions and a tied output projection around it — what a user would
write. Both train on the same batches (random ids, source/target lengths drawn per pair in
[``--min-len``, 32], padded to 32, key-padding masks on both sides), AdamW, label smoothing 0.1, gradient
clipping 1.0. A step = forward, loss, backward, clip, optimizer step, zero_grad. The plain loop (and the
``--baseline-src`` code) uses ``torch.optim.AdamW`` with its defaults; selfattn's runners use the optimizer
its Trainer builds (``build_optimizer``: PyTorch's fused AdamW).

The four configurations run **interleaved** (one step of each in turn, several rounds) so that load from
other processes on a shared machine hits all of them alike; reported are medians over the timed rounds,
tokens/s (source + target tokens, padding included, as the Trainer counts them), model GFLOP/s (matmul FLOPs
of forward + backward, counted analytically, 3x the forward) and ratios against the plain loop in bf16.
Writes benchmarks/results/train_step.{json,md} with the machine (CPU flags, cores, versions) inside.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from selfattn.io import atomic_write_json, atomic_write_text
from selfattn.models import build_model, preset
from selfattn.positional import sinusoidal_table
from selfattn.training import TrainConfig, build_optimizer
from selfattn.training.forward import resolve_amp
from selfattn.training.loss import smoothed_cross_entropy

V, C, HEADS, FF, LAYERS = 8000, 256, 8, 1024, 3
REFS = ("nn.Transformer fp32", "nn.Transformer bf16", "selfattn fp32", "selfattn@base fp32")  # ratio columns


class PlainTransformer(nn.Module):
    """``nn.Transformer`` with embeddings, sinusoidal positions, tied output; the `small` shape by default
    (``benchmarks/gpu_check.py`` builds the `paper-base` one)."""

    def __init__(self, vocab: int = V, d: int = C, heads: int = HEADS, ff: int = FF, layers: int = LAYERS,
                 norm_first: bool = True, dropout: float = 0.1):
        super().__init__()
        import warnings

        warnings.filterwarnings("ignore", message="enable_nested_tensor is True")  # norm_first: nn says so itself
        self.d = d
        self.embed = nn.Embedding(vocab, d)
        nn.init.normal_(self.embed.weight, 0.0, d**-0.5)
        self.register_buffer("pe", sinusoidal_table(512, d), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.core = nn.Transformer(d, heads, layers, layers, ff, dropout=dropout, batch_first=True,
                                   norm_first=norm_first)

    def forward(self, src, tgt, src_pad, tgt_pad):
        """src (b, m), tgt (b, n); *_pad (b, len) True = padding (nn's convention) -> logits (b, n, V)."""
        n = tgt.shape[1]
        xs = self.drop(self.embed(src) * self.d**0.5 + self.pe[: src.shape[1]])  # (b, m, c)
        xt = self.drop(self.embed(tgt) * self.d**0.5 + self.pe[:n])  # (b, n, c)
        causal = torch.ones(n, n, dtype=torch.bool, device=src.device).triu(1)  # (n, n) True = masked (nn's)
        h = self.core(xs, xt, tgt_mask=causal, src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad,
                      memory_key_padding_mask=src_pad, tgt_is_causal=True)  # (b, n, c)
        return h @ self.embed.weight.t()  # (b, n, V)


def make_batch(b: int, length: int, min_len: int, seed: int, vocab: int = V):
    """Random pairs padded to ``length``: src, tgt_in, tgt_out (b, length) ids, pad id 0, IGNORE = -100."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (b, length), generator=g)
    tgt = torch.randint(4, vocab, (b, length + 1), generator=g)
    src_len = torch.randint(min_len, length + 1, (b,), generator=g)
    tgt_len = torch.randint(min_len, length + 1, (b,), generator=g)
    pos = torch.arange(length + 1)
    src = src.masked_fill(pos[None, :length] >= src_len[:, None], 0)
    tgt = tgt.masked_fill(pos[None, :] > tgt_len[:, None], 0)  # tgt_in keeps one more id than tgt_out
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:].masked_fill(tgt[:, 1:] == 0, -100)
    return src, tgt_in, tgt_out


def forward_flops(b: int, m: int, n: int, *, C: int = C, FF: int = FF, LAYERS: int = LAYERS,
                  V: int = V) -> float:
    """Matmul FLOPs of one forward (2 per multiply-add): projections, FFNs, attention scores/values, output."""
    enc = LAYERS * b * m * (2 * 4 * C * C + 2 * 2 * C * FF) + LAYERS * b * 2 * 2 * m * m * C
    dec_self = LAYERS * b * n * (2 * 4 * C * C) + LAYERS * b * 2 * 2 * n * n * C
    dec_cross = LAYERS * (b * n * 2 * 2 * C * C + b * m * 2 * 2 * C * C) + LAYERS * b * 2 * 2 * n * m * C
    dec_ff = LAYERS * b * n * 2 * 2 * C * FF
    return float(enc + dec_self + dec_cross + dec_ff + b * n * 2 * C * V)


def load_baseline(src: Path):
    """Another checkout's ``selfattn`` (e.g. ``git archive <commit> src | tar -x -C DIR``) as package
    ``selfattn_base``, beside this one, so old and new code run interleaved in one process."""
    import importlib.util

    init = src / "selfattn" / "__init__.py"
    spec = importlib.util.spec_from_file_location("selfattn_base", init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["selfattn_base"] = module
    spec.loader.exec_module(module)
    import selfattn_base.training.loss as base_loss

    return module, base_loss.smoothed_cross_entropy


class Runner:
    """One model + optimizer + dtype policy; ``step()`` runs one training step and returns its seconds."""

    def __init__(self, name: str, model: nn.Module, amp: bool, batch, plain: bool, loss_fn=smoothed_cross_entropy,
                 optimizer=None):
        """``optimizer``: selfattn's own (``build_optimizer``, as its Trainer builds it) for selfattn's runners;
        None = ``torch.optim.AdamW`` with its defaults, what a hand-written loop uses."""
        self.name, self.model, self.amp, self.plain, self.loss_fn = name, model, amp, plain, loss_fn
        self.opt = optimizer or torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
        for group in self.opt.param_groups:
            group["lr"] = 1e-4
        self.src, self.tgt_in, self.tgt_out = batch
        self.times: list[float] = []
        self.losses: list[float] = []

    def logits(self):
        if self.plain:
            return self.model(self.src, self.tgt_in, self.src == 0, self.tgt_in == 0)
        return self.model(self.src, self.tgt_in)

    def step(self) -> float:
        cuda = self.src.is_cuda
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(self.src.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.logits()  # (b, n, V)
        if self.plain:  # what one writes by hand: cross_entropy on the flattened logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), self.tgt_out.flatten(), ignore_index=-100,
                                   label_smoothing=0.1, reduction="sum")
        else:
            loss = self.loss_fn(logits, self.tgt_out, 0.1)
        (loss / (self.tgt_out != -100).sum()).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(float(loss.detach()))  # a host sync on CUDA, as a logging loop has
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def machine() -> dict:
    info = {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "isa_caps": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
            "amp_auto": resolve_amp("auto", torch.device("cpu"))[1]}  # what the Trainer picks on this machine
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                info["flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
                break
    except OSError:
        pass
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--min-len", type=int, default=10, help="shortest pair before padding to --length")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=7, help="timed rounds (each runs every configuration once)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default); 1 on a busy shared machine")
    ap.add_argument("--baseline-src", default="", help="a src/ directory of older selfattn code to time too "
                    "(configurations 'selfattn@base fp32/bf16')")
    ap.add_argument("--only", default="", help="comma-separated configuration names (default: all four)")
    ap.add_argument("--isa", choices=("avx2",), default=None,
                    help="cap PyTorch and oneDNN to this ISA (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA; the process "
                         "re-executes itself with them): an AVX-512 machine measured as an AVX2-only one")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_step"))
    args = ap.parse_args()
    if args.isa and os.environ.get("ATEN_CPU_CAPABILITY") != args.isa:  # the caps are read once, at first use
        env = {**os.environ, "ATEN_CPU_CAPABILITY": args.isa, "ONEDNN_MAX_CPU_ISA": args.isa.upper()}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = make_batch(args.batch, args.length, args.min_len, seed=0)
    cfg = preset("small")

    def ours():
        torch.manual_seed(0)
        return build_model(cfg)

    def plain():
        torch.manual_seed(0)
        return PlainTransformer()

    runners = [Runner("nn.Transformer fp32", plain(), False, batch, True),
               Runner("nn.Transformer bf16", plain(), True, batch, True),
               *(Runner(name, model, amp, batch, False, optimizer=build_optimizer(model, TrainConfig()))
                 for name, model, amp in (("selfattn fp32", ours(), False), ("selfattn bf16", ours(), True)))]
    if args.baseline_src:
        base, base_loss = load_baseline(Path(args.baseline_src))

        def old():
            torch.manual_seed(0)
            return base.build_model(base.preset("small"))

        runners += [Runner("selfattn@base fp32", old(), False, batch, False, base_loss),
                    Runner("selfattn@base bf16", old(), True, batch, False, base_loss)]
    if args.only:
        keep = set(args.only.split(","))
        runners = [r for r in runners if r.name in keep]
    for r in runners:
        for _ in range(args.warmup):
            r.step()
    for _ in range(args.steps):  # interleaved: one step of each configuration per round
        for r in runners:
            r.times.append(r.step())

    tokens = batch[0].numel() + batch[1].numel()
    flops = 3 * forward_flops(args.batch, args.length, args.length)
    rows = []
    for r in runners:
        med = statistics.median(r.times)
        rows.append({"name": r.name, "median_s": med, "times_s": r.times, "tokens_per_s": tokens / med,
                     "gflops_per_s": flops / med / 1e9, "last_loss_sum": r.losses[-1]})
    by = {row["name"]: row for row in rows}
    for row in rows:
        for ref in REFS:
            if ref in by:
                row[f"vs {ref}"] = by[ref]["median_s"] / row["median_s"]
    result = {"benchmark": "train_step", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "machine": machine(), "batch": args.batch, "length": args.length, "min_len": args.min_len,
              "tokens_per_step": tokens, "gflop_per_step": flops / 1e9, "warmup": args.warmup,
              "rounds": args.steps, "baseline_src": args.baseline_src or None, "rows": rows}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result, mkdir=True)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        (f"# train_step: one training step of `small` ({res['batch']} pairs x {res['length']} + "
         f"{res['length']} tokens, lengths {res['min_len']}-{res['length']} padded)"), "",
        (f"Machine: {m['processor']}, {m['cores']} cores, torch {m['torch']} ({m['torch_cpu_capability']}), "
         f"{m['threads']} torch threads, flags {' '.join(m.get('flags', []))}; load average at the end "
         f"{m.get('load_average')}. Trainer default here: {m.get('amp_auto', 'not recorded')}."
         + (f" **ISA capped** by {m['isa_caps']}: the CPU behaves as an AVX2-only one." if m.get("isa_caps") else "")),
        (f"Command: `python benchmarks/{res['command']}`; medians of {res['rounds']} interleaved rounds "
         f"after {res['warmup']} warm-up steps; {res['gflop_per_step']:.0f} GFLOP of matmuls per step."), "",
    ]
    refs = [ref for ref in REFS if any(r["name"] == ref for r in res["rows"])]  # only the columns this run has
    lines += ["| configuration | median step s | tokens/s | GFLOP/s | " + " | ".join(f"vs {ref}" for ref in refs) + " |",
              "|---|---|---|---|" + "---|" * len(refs)]
    for r in res["rows"]:
        ratios = " | ".join(f"{r[f'vs {ref}']:.2f}x" for ref in refs)
        lines.append(f"| {r['name']} | {r['median_s']:.3f} | {r['tokens_per_s']:,.0f} | {r['gflops_per_s']:.0f} | "
                     f"{ratios} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
