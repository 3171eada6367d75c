"""Decoding speed: tokens/s generating 512 tokens with and without the KV cache, side by side with
Hugging Face transformers' ``GPT2LMHeadModel.generate()`` on a GPT-2-shaped model of the same size
(random weights; same layers, width, heads, vocabulary, context, GELU, pre-norm, learned positions).

    python benchmarks/decode.py                  # batch 1, prompt 16, 512 new tokens, median of 3
    python benchmarks/decode.py --d-model 256 --layers 6

Writes benchmarks/results/decode.json. Greedy and sampling (top-k 50) are both measured; every run
generates exactly 512 tokens (no stop token).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import selfattn
from selfattn.generation import greedy, sample

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decode.json"))
    args = ap.parse_args()
    from transformers import GPT2Config, GPT2LMHeadModel

    if args.threads:
        torch.set_num_threads(args.threads)

    n_ctx = args.prompt + args.new_tokens
    torch.manual_seed(0)
    cfg = selfattn.ModelConfig(kind="decoder", vocab_size=args.vocab, d_model=args.d_model, num_heads=args.heads,
                               d_ff=4 * args.d_model, num_encoder_layers=0, num_decoder_layers=args.layers,
                               dropout=0.0, activation="gelu_tanh", norm_first=True, positional="learned",
                               max_len=n_ctx, pad_id=None, scale_embeddings=False)
    ours = selfattn.build_model(cfg).eval()
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=args.vocab, n_positions=n_ctx, n_embd=args.d_model,
                                    n_layer=args.layers, n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0,
                                    attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)).eval()
    prompt = torch.randint(0, args.vocab, (args.batch, args.prompt))
    n = args.new_tokens
    tok = args.batch * n

    def run_ours(cache: bool, sampling: bool):
        g = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            if sampling:
                return sample(ours, prompt=prompt, max_new_tokens=n, top_k=50, use_cache=cache, generator=g)
            return greedy(ours, prompt=prompt, max_new_tokens=n, use_cache=cache)

    def run_hf(sampling: bool):
        with torch.inference_mode():
            return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                               do_sample=sampling, top_k=50 if sampling else None, pad_token_id=0,
                               eos_token_id=None)

    rows = {}
    rows["selfattn greedy, cache"] = timed(lambda: run_ours(True, False), args.repeats)
    rows["selfattn greedy, no cache"] = timed(lambda: run_ours(False, False), 1)
    rows["HF generate greedy (cache)"] = timed(lambda: run_hf(False), args.repeats)
    rows["selfattn sampling top-k 50, cache"] = timed(lambda: run_ours(True, True), args.repeats)
    rows["HF generate sampling top-k 50 (cache)"] = timed(lambda: run_hf(True), args.repeats)
    table = {k: {"seconds": round(v, 3), "tokens_per_s": round(tok / v, 1)} for k, v in rows.items()}
    result = {
        "model": {"d_model": args.d_model, "layers": args.layers, "heads": args.heads, "vocab": args.vocab,
                  "params_selfattn": ours.num_parameters(),
                  "params_hf": sum(p.numel() for p in hf.parameters())},
        "batch": args.batch, "prompt": args.prompt, "new_tokens": n, "results": table,
        "cache_speedup": round(rows["selfattn greedy, no cache"] / rows["selfattn greedy, cache"], 2),
        "vs_hf_greedy": round(rows["HF generate greedy (cache)"] / rows["selfattn greedy, cache"], 2),
        "vs_hf_sampling": round(rows["HF generate sampling top-k 50 (cache)"]
                                / rows["selfattn sampling top-k 50, cache"], 2),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
        "note": "2 shared CPU cores with other jobs running: medians, still noisy",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for k, v in table.items():
        print(f"{k:40s} {v['tokens_per_s']:10.1f} tok/s  ({v['seconds']:.2f} s)")
    print(json.dumps({k: result[k] for k in ("cache_speedup", "vs_hf_greedy", "vs_hf_sampling")}))


if __name__ == "__main__":
    main()
