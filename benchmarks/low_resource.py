"""Good models from little data: the low-resource protocol for Multi30k de->en.

Fixed random subsets of the training pairs (``--fractions``, chosen by ``--subset-seed`` and written into the
result), the English side of the left-out pairs as monolingual text, every method trained with ``--seeds``
model seeds, scored on test2016 and val by sacreBLEU (BLEU, BLEU-lc, chrF, with signatures), mean ± std, and a
paired bootstrap test against the baseline (sacreBLEU's paired bootstrap resampling, 1000 samples; the three
seeds' outputs are concatenated so each sentence is paired with the baseline's output of the same seed).

Methods (each a set of `selfattn train` flags; see the README):
  baseline      tuned per data size (--grid runs a small grid of model size / dropout first)
  subword-src / subword-tgt / subword-both   unigram sampling alpha 0.1 on that side (Kudo 2018)
  bpe-dropout   a BPE model with dropout 0.1 on both sides (Provilkov et al. 2020)
  word-dropout / blank / switchout            0.1 / 0.1 / 0.05
  bt-beam / bt-sample   back-translation of the left-out English with a reverse model (Sennrich et al. 2016;
                sampling: Edunov et al. 2018), tagged, 1:1 with the real pairs
Writes benchmarks/results/OUT.{json,md,png} (--out, default low_resource). Hours of CPU for the whole table: never run by the tests
(they import `make_subset` and `paired_bootstrap` only).

  python benchmarks/low_resource.py --data ../shared/data/multi30k --work /tmp/lowres --fractions 0.1 \\
      --grid small narrow --methods baseline bt-sample subword-both --seeds 0 1 2 --steps 600 --jobs 2

``--grid`` trains each named baseline configuration (GRID) with the first seed and keeps the one with the best
val BLEU-lc for every method of that size (the grid and its scores are written into the result). ``--jobs``
trains that many cells at once with ``threads / jobs`` threads each (on 2 cores two 1-thread trainings get more
done than one 2-thread training of these small models). ``--one-reverse`` trains one reverse model (first seed)
and one synthetic corpus per back-translation method, shared by every seed of the forward models.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import RESULTS, machine, machine_line

from selfattn.io import atomic_write_json, atomic_write_text

METHODS = {
    "baseline": [],
    "subword-src": ["--subword-alpha", "0.1", "--subword-side", "src"],
    "subword-tgt": ["--subword-alpha", "0.1", "--subword-side", "tgt"],
    "subword-both": ["--subword-alpha", "0.1", "--subword-side", "both"],
    "bpe-dropout": ["--subword-type", "bpe", "--subword-alpha", "0.1"],
    "word-dropout": ["--word-dropout", "0.1"],
    "blank": ["--blank", "0.1"],
    "switchout": ["--switchout", "0.05"],
    "bt-beam": ["BT", "beam"],
    "bt-sample": ["BT", "sample"],
    "bt-beam-all": ["BT", "beam", "--synthetic-ratio", "0"],  # every left-out sentence, not 1:1
    "bt-topk": ["BT", "topk"],  # top-10 sampling (Edunov et al. 2018), 1:1 with the real pairs
    "bt-topk-all": ["BT", "topk", "--synthetic-ratio", "0"],  # top-10 sampling (Edunov et al. 2018), all of it
    "bt-beam-all+subword-both": ["BT", "beam", "--synthetic-ratio", "0", "--subword-alpha", "0.1",
                                 "--subword-side", "both"],
}

# Every training run: the README's Multi30k recipe (cosine schedule, peak 1.5e-3), warm-up scaled to short runs.
RECIPE = ["schedule=cosine", "lr=1.5e-3", "warmup_steps=100", "eval_every=100", "ckpt_every=100", "keep_last=3"]

# Baseline configurations for little data (--grid): --set overrides of the `small` preset. A 2,900-pair subset
# wants fewer pieces, more dropout and a narrower model than the full corpus (Sennrich & Zhang 2019).
GRID = {
    "small": [],  # the full-data recipe as it is: 3+3 layers, d 256, d_ff 1024, dropout 0.1
    "small-drop0.3": ["dropout=0.3"],
    "narrow": ["dropout=0.3", "d_ff=512", "num_heads=4"],
    "narrow-2+2": ["dropout=0.3", "d_ff=512", "num_heads=4", "num_encoder_layers=2", "num_decoder_layers=2"],
}


def make_subset(data: Path, out: Path, *, fraction: float, seed: int, src: str = "de", tgt: str = "en") -> dict:
    """Write ``fraction`` of ``data``'s training pairs (a seeded choice) to ``out`` with the val/test splits
    and ``mono.TGT``: the target side of the left-out pairs. Returns the record of the choice."""
    s_lines = (data / f"train.{src}").read_text(encoding="utf-8").splitlines()
    t_lines = (data / f"train.{tgt}").read_text(encoding="utf-8").splitlines()
    if len(s_lines) != len(t_lines):
        raise ValueError(f"{data}: train.{src} and train.{tgt} differ in length")
    k = round(fraction * len(s_lines))
    perm = torch.randperm(len(s_lines), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen, rest = sorted(perm[:k]), sorted(perm[k:])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"train.{src}", "".join(s_lines[i] + "\n" for i in chosen))
    atomic_write_text(out / f"train.{tgt}", "".join(t_lines[i] + "\n" for i in chosen))
    atomic_write_text(out / f"mono.{tgt}", "".join(t_lines[i] + "\n" for i in rest))
    for f in data.iterdir():
        if f.name.split(".")[0] in ("val", "valid", "dev", "test", "test2016") and f.is_file():
            shutil.copyfile(f, out / f.name)
    return {"fraction": fraction, "seed": seed, "pairs": k, "indices": chosen, "mono_indices": rest}


def paired_bootstrap(refs: list[str], systems: dict[str, list[str]], samples: int = 1000) -> dict:
    """sacreBLEU's paired bootstrap resampling of every system against the first (the baseline)."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    test = PairedTest(list(systems.items()), {"BLEU": BLEU()}, [refs], test_type="bs", n_samples=samples)
    signatures, scores = test()
    return {name: {"bleu": r.score, "p_value": r.p_value, "signature": str(signatures["BLEU"])}
            for name, r in zip(scores["System"], scores["BLEU"])}


def _selfattn(*args: str, threads: int) -> str:
    proc = subprocess.run([sys.executable, "-m", "selfattn", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode:
        raise SystemExit(f"selfattn {args[0]} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


def _train_seconds(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return max(r.get("time", 0.0) for r in rows)


def _train(subset: Path, run: Path, flags: list[str], args, seed: int, src="de", tgt="en") -> float:
    """Train one model unless a finished run is there (the protocol resumes where it stopped); its seconds."""
    if not (run / "done").exists():
        shutil.rmtree(run, ignore_errors=True)  # an unfinished run from an interrupted protocol starts over
        _selfattn("train", "--task", "translate", "--data", str(subset), "--src", src, "--tgt", tgt,
                  "--preset", args.preset, "--steps", str(args.steps), "--seed", str(seed),
                  "--max-tokens", "4096", "--vocab-size", str(args.vocab_size), "--bleu-eval-size", "0",
                  "--no-progress", "--run-dir", str(run), *flags,
                  *[x for kv in RECIPE + args.set for x in ("--set", kv)], threads=args.threads)
        (run / "done").write_text("")
    return _train_seconds(run)


def _score(run: Path, args, splits=("test", "val")) -> dict:
    """Beam-4 hypotheses and sacreBLEU scores of a trained run on each split."""
    out = {}
    for split in splits:
        hyp, scores = run / f"{split}.hyp", run / f"{split}-avg{args.average_last}.json"
        if not scores.exists():  # scored before: a re-run of the protocol reuses it
            line = _selfattn("evaluate", "--checkpoint", str(run), "--split", split, "--beam", "4",
                             "--average-last", str(args.average_last), "--hyp-out", str(hyp),
                             threads=args.threads).strip().splitlines()[-1]
            atomic_write_text(scores, line + "\n")
        out[split] = {**json.loads(scores.read_text()), "hyps": hyp.read_text(encoding="utf-8").splitlines()}
    return out


_LOCKS: dict[Path, threading.Lock] = {}


def _synthetic(subset: Path, runs: Path, bt: str, seed: int, args) -> Path:
    """The reverse (en->de) model of ``seed`` and its ``bt`` translation of the left-out English (made once:
    cells that need it while another cell makes it wait)."""
    with _LOCKS.setdefault(runs / f"{bt}-s{seed}", threading.Lock()):
        return _make_synthetic(subset, runs, bt, seed, args)


def _make_synthetic(subset: Path, runs: Path, bt: str, seed: int, args) -> Path:
    reverse = runs / f"reverse-s{seed}"
    _train(subset, reverse, [], args, seed, src="en", tgt="de")
    synth = runs / f"synth-{bt}-s{seed}.de"
    if not synth.exists():
        _selfattn("backtranslate", "--checkpoint", str(reverse), "--input", str(subset / "mono.en"),
                  "--output", str(synth), "--method", bt, "--seed", str(seed), threads=args.threads)
    return synth


def run_cell(subset: Path, runs: Path, method: str, seed: int, args) -> dict:
    """Train one (method, seed) on a subset (back-translation: after its synthetic corpus); scores, seconds."""
    flags = METHODS[method]
    if flags[:1] == ["BT"]:
        synth = _synthetic(subset, runs, flags[1], args.seeds[0] if args.one_reverse else seed, args)
        flags = ["--synthetic", str(synth), str(subset / "mono.en"), *flags[2:]]
    work = runs / f"{method}-s{seed}"
    seconds = _train(subset, work, flags, args, seed)
    return {**_score(work, args), "train_seconds": seconds}


def tune_baseline(subset: Path, args, pool) -> tuple[str, dict]:
    """The --grid: each configuration trained with the first seed; the best val BLEU-lc wins (a grid of one
    is that configuration, chosen before: its first-seed cell trains beside the others, not alone)."""
    if len(args.grid) == 1:
        return args.grid[0], {}
    def one(name: str) -> float:
        run = subset / "runs" / name / f"baseline-s{args.seeds[0]}"
        base = args.set
        cfg = argparse.Namespace(**{**vars(args), "set": base + GRID[name]})
        _train(subset, run, [], cfg, args.seeds[0])
        return _score(run, cfg, splits=("val",))["val"]["bleu_lc"]

    scores = dict(zip(args.grid, pool.map(one, args.grid)))
    return max(scores, key=scores.__getitem__), scores


def summarise(cells: dict, refs: dict) -> dict:
    """mean ± std over seeds per method, and the paired bootstrap p-value against the baseline."""
    table = {}
    for split in ("test", "val"):
        concat = {m: [h for s in sorted(c) for h in c[s][split]["hyps"]] for m, c in cells.items()}
        n_seeds = len(next(iter(cells.values())))
        sig = paired_bootstrap(refs[split] * n_seeds, {"baseline": concat["baseline"],
                                                       **{m: h for m, h in concat.items() if m != "baseline"}})
        for m, c in cells.items():
            row = table.setdefault(m, {})
            for key in ("bleu", "bleu_lc", "chrf"):
                vals = [c[s][split][key] for s in sorted(c)]
                row[f"{split}_{key}"] = [statistics.mean(vals), statistics.pstdev(vals) if len(vals) > 1 else 0.0]
            row[f"{split}_p_value"] = sig[m]["p_value"]
    return table


def plot(result: dict, path: Path) -> None:
    """test2016 BLEU-lc per method and data size: mean ± std over seeds as bars with error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(result["sizes"].items())
    methods = list(dict.fromkeys(m for _, size in sizes for m in size["table"]))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 + 0.6 * len(sizes) * len(methods)), 3.6))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        xs = [i + j * width for i, (_, size) in enumerate(sizes) if m in size["table"]]
        vals = [size["table"][m]["test_bleu_lc"] for _, size in sizes if m in size["table"]]
        ax.bar(xs, [v[0] for v in vals], width, yerr=[v[1] for v in vals], capsize=3, label=m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))])
    ax.set_xticklabels([f"{size['pairs']} pairs ({frac})" for frac, size in sizes])
    ax.set_ylabel("test2016 BLEU-lc (beam 4)")
    ax.set_title("Low-resource Multi30k de->en (mean ± std over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="Multi30k directory (train/val/test2016 .de/.en)")
    ap.add_argument("--work", type=Path, required=True, help="scratch directory for subsets, runs, outputs")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    ap.add_argument("--subset-seed", type=int, default=1234, help="the subset choice (written into the result)")
    ap.add_argument("--methods", nargs="+", default=["baseline", "bt-beam"], choices=sorted(METHODS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--grid", nargs="+", default=[], choices=sorted(GRID), help="baseline configurations to tune")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--vocab-size", type=int, default=4000, help="joint SentencePiece pieces (full data: 8000)")
    ap.add_argument("--average-last", type=int, default=1, help="evaluate the average of the last K checkpoints")
    ap.add_argument("--jobs", type=int, default=1, help="cells trained at once (threads split between them)")
    ap.add_argument("--one-reverse", action="store_true", help="one reverse model and synthetic corpus for all seeds")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every train")
    ap.add_argument("--out", default="low_resource", help="result name: benchmarks/results/OUT.{json,md}")
    args = ap.parse_args(argv)
    if "baseline" not in args.methods:
        args.methods.insert(0, "baseline")
    args.threads = max(1, torch.get_num_threads() // args.jobs)
    result = {"machine": machine(), "protocol": vars(args) | {"data": str(args.data), "work": str(args.work)},
              "sizes": {}}
    with ThreadPoolExecutor(args.jobs) as pool:
        for frac in args.fractions:
            subset = args.work / f"frac{frac:g}"
            record = make_subset(args.data, subset, fraction=frac, seed=args.subset_seed)
            refs = {s: (subset / f"{'test2016' if s == 'test' else s}.en").read_text().splitlines()
                    for s in ("test", "val")}
            chosen, grid = tune_baseline(subset, args, pool) if args.grid else ("small", {})
            cfg = argparse.Namespace(**{**vars(args), "set": args.set + GRID[chosen]})
            runs = subset / "runs" / chosen
            # cells that make a synthetic corpus first, then those that need none, then those that wait for one
            first = {m: args.seeds[0] if args.one_reverse else None for m in args.methods if METHODS[m][:1] == ["BT"]}
            keys = sorted(((m, s) for m in args.methods for s in args.seeds),
                          key=lambda ms: 0 if ms[0] in first and first[ms[0]] in (None, ms[1]) else
                          1 if ms[0] not in first else 2)
            done = dict(zip(keys, pool.map(lambda ms: run_cell(subset, runs, ms[0], ms[1], cfg), keys)))
            cells = {m: {s: done[(m, s)] for s in args.seeds} for m in args.methods}
            result["sizes"][f"{frac:g}"] = {
                "pairs": record["pairs"], "subset_seed": args.subset_seed, "baseline_config": chosen,
                "baseline_overrides": GRID[chosen], "grid_val_bleu_lc": grid,
                "train_seconds": {m: [c[s]["train_seconds"] for s in args.seeds] for m, c in cells.items()},
                "table": summarise(cells, refs)}
            atomic_write_json(RESULTS / f"{args.out}.json", result)
    lines = ["**Low-resource Multi30k de->en** (beam 4; mean ± std over seeds; p: paired bootstrap vs baseline)",
             "", machine_line(result["machine"]), "",
             "| pairs | method | test BLEU-lc | test BLEU | test chrF | p (test) | val BLEU-lc |",
             "|---|---|---|---|---|---|---|"]
    for frac, size in result["sizes"].items():
        for m, r in size["table"].items():
            cell = {k: f"{v[0]:.2f} ± {v[1]:.2f}" for k, v in r.items() if isinstance(v, list)}
            p = "—" if m == "baseline" else f"{r['test_p_value']:.3f}"
            lines.append(f"| {size['pairs']} ({frac}) | {m} | {cell['test_bleu_lc']} | {cell['test_bleu']} | "
                         f"{cell['test_chrf']} | {p} | {cell['val_bleu_lc']} |")
    for size in result["sizes"].values():
        grid = ", ".join(f"{k} {v:.2f}" for k, v in size["grid_val_bleu_lc"].items()) or "not run"
        secs = ", ".join(f"{m} {statistics.median(v):.0f}" for m, v in size["train_seconds"].items())
        lines += ["", f"{size['pairs']} pairs: baseline `{size['baseline_config']}` "
                      f"(--set {' '.join(size['baseline_overrides']) or 'nothing'}); grid val BLEU-lc: {grid}; "
                      f"median training seconds per cell ({args.threads} thread(s), {args.jobs} at once): {secs}"]
    atomic_write_text(RESULTS / f"{args.out}.md", "\n".join(lines) + "\n")
    plot(result, RESULTS / f"{args.out}.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
