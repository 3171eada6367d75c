"""Which data augmentation helps on small data? Multi30k de->en BLEU with and without each, same budget.

    python benchmarks/translation_ablation.py --minutes 20            # each variant gets 20 min of training
    python benchmarks/translation_ablation.py --steps 2000 --variants none,switchout

Every variant trains the same model (preset "small": 3+3 layers, d 256) from the same seed, with the same
joint SentencePiece model (trained once), the same token budget per batch and the same number of
optimizer steps (``--steps``) or wall-clock minutes (``--minutes``: the step count of the baseline's
first 20 steps' speed, so all variants get the same steps). Each is scored on test2016 with beam 4
(cased sacreBLEU 13a, lowercased BLEU, chrF). Writes benchmarks/results/translation_ablation.{json,md}.
Variants (rates from the papers cited in selfattn.data.augment):
none, subword (unigram sampling alpha 0.1 / BPE-dropout 0.1), word_dropout 0.1, blank 0.1, switchout 0.05.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "multi30k"
VARIANTS = {
    "none": {},
    "subword": {"subword_alpha": 0.1},
    "word_dropout": {"word_dropout": 0.1},
    "blank": {"blank": 0.1},
    "switchout": {"switchout": 0.05},
}


def run_variant(name: str, base_task, steps: int, args, out_dir: Path) -> dict:
    from selfattn.models import build_model, preset
    from selfattn.training import TrainConfig, Trainer
    from selfattn.translation import DecodeConfig, TranslationTask, corpus_scores, translate

    spec = {**base_task.spec(), "augment": VARIANTS[name], "bleu_eval_size": 0}
    task = TranslationTask.from_spec(spec)  # same subword model and batches, different noise
    torch.manual_seed(args.seed)
    model = build_model(preset("small", **task.model_overrides()))
    cfg = TrainConfig(steps=steps, schedule="cosine", lr=args.lr, warmup_steps=max(1, steps // 10),
                      eval_every=0, ckpt_every=0, keep_last=1, progress=False, seed=args.seed)
    t0 = time.perf_counter()
    result = Trainer(model, task, cfg, out_dir / name).fit()
    srcs, refs, _ = task.eval_pairs("test")
    hyps = [h[0][0] for h in translate(model, task.subword, srcs, DecodeConfig(beam=args.beam))]
    scores = corpus_scores(hyps, refs)
    return {"variant": name, "augment": VARIANTS[name], "steps": result.step, "train_seconds": result.seconds,
            "total_seconds": time.perf_counter() - t0, "bleu": scores["bleu"], "bleu_lc": scores["bleu_lc"],
            "chrf": scores["chrf"], "signature": scores["signatures"]["bleu"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA), help="directory with {train,val,test2016}.{de,en}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    p.add_argument("--steps", type=int, default=0, help="optimizer steps per variant")
    p.add_argument("--minutes", type=float, default=0.0, help="or: training minutes per variant (sets --steps)")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or not (args.steps or args.minutes):
        p.error(f"unknown variants {unknown}" if unknown else "give --steps or --minutes")
    from selfattn.translation import TranslateConfig, TranslationTask

    base = TranslationTask(TranslateConfig(data=args.data, max_tokens=args.max_tokens, seed=args.seed),
                           verbose=True)
    steps = args.steps
    if not steps:  # time 20 baseline steps, then give every variant the same step count
        from selfattn.models import build_model, preset
        from selfattn.training import TrainConfig, Trainer

        probe = Trainer(build_model(preset("small", **base.model_overrides())), base,
                        TrainConfig(steps=20, eval_every=0, ckpt_every=0, progress=False))
        t0 = time.perf_counter()
        probe.fit()
        steps = max(1, int(args.minutes * 60 / ((time.perf_counter() - t0) / 20)))
        print(f"{args.minutes} min per variant = {steps} steps at the measured speed")
    out = Path(args.out)
    runs = ROOT / "runs" / "translation_ablation"  # checkpoints stay out of git (runs/ is ignored)
    rows = []
    for name in names:
        rows.append(run_variant(name, base, steps, args, runs))
        print(json.dumps(rows[-1]))
    from selfattn.io import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "translation_ablation.json", (json.dumps(rows, indent=1) + "\n").encode())
    lines = ["| variant | steps | train s | BLEU | BLEU lc | chrF |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['steps']} | {r['train_seconds']:.0f} | {r['bleu']:.2f} | {r['bleu_lc']:.2f} "
              f"| {r['chrf']:.2f} |" for r in rows]
    lines.append(f"\nMulti30k test2016 de->en, beam {args.beam}; signature {rows[0]['signature']}")
    atomic_write_bytes(out / "translation_ablation.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
