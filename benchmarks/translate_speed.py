"""Translation speed and BLEU side by side: selfattn eager, compiled and int8 (others can be added).

    python benchmarks/translate_speed.py --run runs/m30k                       # test2016, beam 4 and greedy, batch 32 and 1
    python benchmarks/translate_speed.py --run runs/m30k --runners selfattn-eager,selfattn-int8 --num-sentences 200

Each runner is a factory in RUNNERS: ``factory(run_dir) -> translate(sentences, beam) -> hypotheses``; it prepares
its engine once (load, quantize, compile, convert) and is then timed on the sentences, cut into length-sorted
batches of ``--batch`` sentences. A compiled runner is warmed up (compiled) on a few batches first; that time is
reported apart. Threads: ``--threads`` (default 2) for every engine. BLEU: sacreBLEU, cased, 13a.

Writes one current result, ``benchmarks/results/translate_speed.json`` and ``.md``, with the machine inside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"
Translate = Callable[[list[str], int], list[str]]


def _selfattn(int8: bool = False, compile: bool = False) -> Callable[[str], Translate]:
    def factory(run_dir: str) -> Translate:
        from selfattn.generation.fast import for_inference
        from selfattn.translation import DecodeConfig, load_translation_run, translate

        model, sp, _ = load_translation_run(run_dir)
        if int8 or compile:
            model = for_inference(model, int8=int8, compile=compile)

        def run(sentences: list[str], beam: int) -> list[str]:
            cfg = DecodeConfig(beam=beam, batch_tokens=10**9)  # the caller decides the batch
            return [h[0][0] for h in translate(model, sp, sentences, cfg)]

        return run

    return factory


# name -> factory; other engines (Hugging Face generate(), CTranslate2) add entries here
RUNNERS: dict[str, Callable[[str], Translate]] = {
    "selfattn-eager": _selfattn(),
    "selfattn-compiled": _selfattn(compile=True),
    "selfattn-int8": _selfattn(int8=True),
}
WARMUP = {"selfattn-compiled"}  # runners whose first batches compile


def machine() -> dict:
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        flags = sorted({f for f in text.split() if f.startswith(("avx512", "amx", "avx2", "fma"))})
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("sacrebleu", "transformers", "ctranslate2", "onnxruntime"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "flags": flags, "threads": torch.get_num_threads(),
            "versions": versions, "load_average": os.getloadavg()}


def batches(sentences: list[str], size: int) -> list[list[int]]:
    """Indices cut into batches of ``size``, shortest sentences first (as engines batch in practice)."""
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i].split()))
    return [order[i:i + size] for i in range(0, len(order), size)]


def measure(fn: Translate, srcs: list[str], refs: list[str], beam: int, batch: int, warmup: bool) -> dict:
    from selfattn.translation.metrics import corpus_scores

    groups = batches(srcs, batch)
    warm_s = 0.0
    if warmup:  # compile on the first batches (every shape class), then time everything
        t0 = time.perf_counter()
        for g in groups[:2] + groups[-1:]:
            fn([srcs[i] for i in g], beam)
        warm_s = time.perf_counter() - t0
    hyps: list[str | None] = [None] * len(srcs)
    times = []
    for g in groups:
        t0 = time.perf_counter()
        out = fn([srcs[i] for i in g], beam)
        times.append(time.perf_counter() - t0)
        for i, h in zip(g, out):
            hyps[i] = h
    seconds = sum(times)
    s = corpus_scores(hyps, refs)
    return {"beam": beam, "batch": batch, "sentences": len(srcs), "seconds": seconds,
            "sentences_per_s": len(srcs) / seconds, "median_batch_s": statistics.median(times),
            "warmup_s": warm_s, "bleu": s["bleu"], "bleu_signature": s["signatures"]["bleu"]}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# translate_speed: {result['data']}", "",
             f"`{result['command']}`", "",
             f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads, torch {m['versions']['torch']}; "
             f"load average at start {m['load_average'][0]:.1f} (shared machine: timings are noisy)", "",
             "| runner | beam | batch | sentences/s | BLEU | warm-up s |", "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['runner']} | {r['beam']} | {r['batch']} | error: {r['error']} | | |")
        else:
            lines.append(f"| {r['runner']} | {r['beam']} | {r['batch']} | {r['sentences_per_s']:.1f} | "
                         f"{r['bleu']:.2f} | {r['warmup_s']:.0f} |")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="translation run directory (selfattn train --task translate)")
    p.add_argument("--data", default="../shared/data/multi30k", help="directory with test2016.{de,en}")
    p.add_argument("--split", default="test2016")
    p.add_argument("--src", default="de")
    p.add_argument("--tgt", default="en")
    p.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated, of {', '.join(RUNNERS)}")
    p.add_argument("--beams", default="4,1")
    p.add_argument("--batches", default="32,1")
    p.add_argument("--num-sentences", type=int, default=0, help="only the first N sentences (default all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "translate_speed"), help="result path without suffix")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    srcs = (data / f"{args.split}.{args.src}").read_text(encoding="utf-8").splitlines()
    refs = (data / f"{args.split}.{args.tgt}").read_text(encoding="utf-8").splitlines()
    if args.num_sentences:
        srcs, refs = srcs[: args.num_sentences], refs[: args.num_sentences]
    unknown = [r for r in args.runners.split(",") if r not in RUNNERS]
    if unknown:
        p.error(f"unknown runners {unknown}; expected some of {sorted(RUNNERS)}")
    rows = []
    for name in args.runners.split(","):
        t0 = time.perf_counter()
        fn = RUNNERS[name](args.run)
        prepare_s = time.perf_counter() - t0
        for beam in (int(b) for b in args.beams.split(",")):
            for batch in (int(b) for b in args.batches.split(",")):
                try:
                    row = measure(fn, srcs, refs, beam, batch, name in WARMUP)
                except Exception as e:  # one engine failing must not lose the others' numbers
                    row = {"beam": beam, "batch": batch, "error": f"{type(e).__name__}: {e}"[:200]}
                rows.append({"runner": name, "prepare_s": prepare_s, **row})
                print(json.dumps(rows[-1]), file=sys.stderr)
    result = {"data": f"{args.data}/{args.split}.{args.src}->{args.tgt}", "run": args.run,
              "command": "python benchmarks/translate_speed.py " + " ".join(argv or sys.argv[1:]),
              "machine": machine(), "rows": rows}
    write_atomic(Path(args.out + ".json"), json.dumps(result, indent=1) + "\n")
    write_atomic(Path(args.out + ".md"), markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
