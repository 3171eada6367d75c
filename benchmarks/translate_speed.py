"""Translation speed and BLEU side by side: selfattn, Hugging Face ``generate()`` on the exported model,
CTranslate2 float32 and int8 — the same trained run, the same sentences, batches and length caps.

    python benchmarks/translate_speed.py --run runs/m30k                # test2016, beam 4 and greedy, batch 32
    python benchmarks/translate_speed.py --run runs/m30k --batches 32,1 # and batch 1 on the first 200 sentences

Every runner is a function in ``RUNNERS`` (name -> fn(context, chunk of source id lists, setting) -> output
id lists); add one there. Sources are sorted by length and cut into batches of ``--batches`` sentences, each
decoded with the cap ``1.5 m + 10`` tokens (m = the batch's longest source), pad and bos never generated.
Beams are ranked by plain log-probability by default (``--alpha 0``): selfattn's GNMT penalty ((5+L)/6)^a,
HF's L^a and CTranslate2's are different functions, so only alpha = 0 ranks hypotheses alike in all engines.
The engines also stop a beam differently: HF (and ``selfattn``) once k hypotheses are finished, CTranslate2 at
alpha 0 once the best candidate is finished — ``selfattn-best`` (``early_stopping="best"``) stops by the latter
rule, so HF rows are compared with ``selfattn`` and CTranslate2 rows with ``selfattn-best``.
Each runner runs in a process of its own, in rounds of alternating order (see ``measure``). Writes benchmarks/results/translate_speed.{json,md}
(machine, versions and the command inside).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _machine import machine, machine_line

DATA = ROOT.parent / "shared" / "data" / "multi30k"


@dataclass
class Setting:
    beam: int
    batch: int
    alpha: float = 0.0


@dataclass
class Context:
    """The run and lazily built exports, shared by all runners."""

    run: Path
    threads: int
    work: Path
    model: torch.nn.Module = None
    sp: object = None
    cfg: object = None
    cache: dict = field(default_factory=dict)

    def export(self, fmt: str, quantization: str | None = None) -> Path:
        key = f"{fmt}-{quantization or 'f32'}"
        if key not in self.cache:
            from selfattn.export.ctranslate2 import save_ctranslate2
            from selfattn.export.hf import save_hf

            out = self.work / key
            if (out / "done").exists():  # exported by an earlier worker of this run
                self.cache[key] = out
                return out
            if fmt == "hf":
                save_hf(self.model, self.cfg, out, self.sp)
            else:
                save_ctranslate2(self.model, self.cfg, self.sp, out, quantization=quantization)
            (out / "done").touch()
            self.cache[key] = out
        return self.cache[key]


def cap(chunk: list[list[int]]) -> int:
    return int(1.5 * max(len(s) for s in chunk)) + 10  # selfattn's DecodeConfig max_len_a, max_len_b


def _selfattn(int8: bool = False, compile: bool = False, early_stopping: bool | str = True):
    """selfattn's own batched search: eager, with int8 dynamic-quantized linears, or a compiled decoder step;
    beams stop by HF's rule (k finished) or, ``early_stopping="best"``, by CTranslate2's at alpha 0."""
    def run(ctx: Context, chunk: list[list[int]], s: Setting) -> list[list[int]]:
        from selfattn.generation.fast import for_inference
        from selfattn.translation.translate import DecodeConfig, translate_ids

        key = f"selfattn-int8={int8}-compile={compile}"
        if key not in ctx.cache:
            ctx.cache[key] = for_inference(ctx.model, int8=int8, compile=compile)  # as `selfattn translate` does
        cfg = DecodeConfig(beam=s.beam, alpha=s.alpha, batch_tokens=10**9,  # one batch: the chunk
                           early_stopping=early_stopping)
        return [h[0][0] for h in translate_ids(ctx.cache[key], chunk, ctx.sp, cfg)]
    return run


def run_hf(ctx: Context, chunk: list[list[int]], s: Setting) -> list[list[int]]:
    if "hf_model" not in ctx.cache:
        import transformers

        ctx.cache["hf_model"] = transformers.AutoModelForSeq2SeqLM.from_pretrained(ctx.export("hf")).eval()
    hf = ctx.cache["hf_model"]
    src = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)  # (b, m), 0 = pad
    for i, ids in enumerate(chunk):
        src[i, : len(ids)] = torch.tensor(ids)
    with torch.no_grad():
        out = hf.generate(input_ids=src, attention_mask=src != 0, num_beams=s.beam, do_sample=False,
                          length_penalty=s.alpha, early_stopping=True, max_new_tokens=cap(chunk),
                          suppress_tokens=[0, 1])
    rows = out[:, 1:].tolist()  # drop the decoder start token
    return [r[: r.index(2)] if 2 in r else [t for t in r if t != 0] for r in rows]


def _ct2(quantization: str | None):
    def run(ctx: Context, chunk: list[list[int]], s: Setting) -> list[list[int]]:
        import ctranslate2

        from selfattn.export.ctranslate2 import ct2_translate_ids

        key = f"ct2-translator-{quantization}"
        if key not in ctx.cache:
            ctx.cache[key] = ctranslate2.Translator(str(ctx.export("ctranslate2", quantization)), device="cpu",
                                                    compute_type=quantization or "float32", inter_threads=1,
                                                    intra_threads=ctx.threads)
        return ct2_translate_ids(None, chunk, ctx.sp, beam=s.beam, alpha=s.alpha, batch_size=len(chunk),
                                 translator=ctx.cache[key])
    return run


RUNNERS: dict[str, Callable[[Context, list[list[int]], Setting], list[list[int]]]] = {
    "selfattn": _selfattn(),
    "selfattn-int8": _selfattn(int8=True),
    "selfattn-compiled": _selfattn(compile=True),
    "selfattn-best": _selfattn(early_stopping="best"),  # the beam stop rule CTranslate2 uses at alpha 0
    "hf": run_hf,
    "ctranslate2": _ct2(None),
    "ctranslate2-int8": _ct2("int8"),
}


def settings(args) -> list[tuple[Setting, int]]:
    """(setting, how many sentences) for every batch size x beam asked for."""
    out = []
    for batch in map(int, args.batches.split(",")):
        n = args.batch1_sentences if batch == 1 and args.batch1_sentences else 0
        out += [(Setting(beam, batch, args.alpha), n) for beam in map(int, args.beams.split(","))]
    return out


def worker(args) -> None:
    """One runner, every setting, in this process alone: warm up on the first batch, then one timed pass."""
    from selfattn.translation.translate import load_translation_run

    torch.set_num_threads(args.threads)
    model, sp, _ = load_translation_run(args.run)
    src = Path(args.data, f"test2016.{args.src}").read_text(encoding="utf-8").splitlines()
    if args.sentences:
        src = src[: args.sentences]
    all_sources = [ids[:256] or [sp.unk_id] for ids in sp.encode_batch(src)]
    ctx = Context(Path(args.run), args.threads, Path(args.work), model, sp, model.cfg)
    rows = []
    for s, n in settings(args):
        sources = all_sources[: n or len(all_sources)]
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        chunks = [order[i : i + s.batch] for i in range(0, len(order), s.batch)]
        RUNNERS[args.worker](ctx, [sources[i] for i in chunks[0]], s)  # loading, exporting, compiling
        outputs: list[list[int]] = [[] for _ in sources]
        t0 = time.perf_counter()
        for idx in chunks:
            for i, out in zip(idx, RUNNERS[args.worker](ctx, [sources[i] for i in idx], s)):
                outputs[i] = out
        rows.append({"setting": asdict(s), "seconds": time.perf_counter() - t0, "outputs": outputs})
    Path(args.worker_out).write_text(json.dumps(rows), encoding="utf-8")


def measure(args, names: list[str], work: str) -> list[dict]:
    """Each runner in a process of its own (switching engines batch by batch in one process slowed PyTorch's
    decoding 3-4x here: both OpenMP pools spin on 2 cores), ``--repeats`` rounds in alternating order (A B C, then C B
    A) so that this machine's drift (+-30%) falls on all alike; a runner's time is the median of its rounds."""
    from selfattn.translation.metrics import corpus_scores
    from selfattn.translation.translate import load_translation_run

    _, sp, _ = load_translation_run(args.run)
    refs = Path(args.data, f"test2016.{args.tgt}").read_text(encoding="utf-8").splitlines()
    rounds: dict[str, list[list[dict]]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            out = Path(work, f"{name}-{r}.json")
            cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", name, "--worker-out", str(out), "--work", work]
            subprocess.run(cmd, check=True)
            rounds[name].append(json.loads(out.read_text(encoding="utf-8")))
            print(f"round {r} {name}: " + ", ".join(f"{x['seconds']:.2f}s" for x in rounds[name][-1]), flush=True)
    rows = []
    for name in names:
        for j, (s, _n) in enumerate(settings(args)):
            outputs = rounds[name][0][j]["outputs"]
            times = [rnd[j]["seconds"] for rnd in rounds[name]]
            seconds = statistics.median(times)
            scores = corpus_scores([sp.decode(o) for o in outputs], refs[: len(outputs)])
            rows.append({"runner": name, **asdict(s), "sentences": len(outputs), "seconds": round(seconds, 2),
                         "seconds_per_round": [round(x, 2) for x in times],
                         "sentences_per_s": round(len(outputs) / seconds, 2), "bleu": round(scores["bleu"], 2),
                         "bleu_lc": round(scores["bleu_lc"], 2), "outputs": outputs})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="translation run directory (selfattn train --task translate)")
    ap.add_argument("--data", default=str(DATA), help="directory with test2016.{src,tgt}")
    ap.add_argument("--src", default="de")
    ap.add_argument("--tgt", default="en")
    ap.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated, of {sorted(RUNNERS)}")
    ap.add_argument("--beams", default="4,1", help="comma-separated beam sizes (1 = greedy)")
    ap.add_argument("--batches", default="32", help="comma-separated batch sizes (sentences per batch)")
    ap.add_argument("--batch1-sentences", type=int, default=200,
                    help="batch size 1 decodes only the first N sentences (0 = all): one at a time is slow")
    ap.add_argument("--alpha", type=float, default=0.0, help="length penalty exponent (see the docstring)")
    ap.add_argument("--sentences", type=int, default=0, help="first N test sentences (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds per runner, in alternating order")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "translate_speed"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one runner in this process
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)  # exports shared by the workers
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    unknown = set(args.runners.split(",")) - set(RUNNERS)
    if unknown:
        raise SystemExit(f"unknown runners {sorted(unknown)}; expected some of {sorted(RUNNERS)}")
    with tempfile.TemporaryDirectory() as work:
        rows = measure(args, args.runners.split(","), work)
    for row in rows:
        print({k: v for k, v in row.items() if k != "outputs"}, flush=True)
    write(args, rows)


def write(args, rows: list[dict]) -> None:
    from selfattn.io import atomic_write_bytes

    for row in rows:  # agreement with selfattn's own outputs (HF's stop rule, CTranslate2's), sentence by sentence
        for name in ("selfattn", "selfattn-best"):
            ref = next((r for r in rows if r["runner"] == name and (r["beam"], r["batch"]) == (row["beam"], row["batch"])),
                       None)
            same = sum(a == b for a, b in zip(row["outputs"], ref["outputs"])) if ref else None
            row[f"same_as_{name.replace('-', '_')}"] = None if same is None else same / row["sentences"]
    doc = {"machine": machine(), "run": str(args.run), "threads": args.threads,
           "results": [{k: v for k, v in r.items() if k != "outputs"} for r in rows]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out + ".json", (json.dumps(doc, indent=1) + "\n").encode())
    lines = ["**translate_speed**", "", machine_line(doc["machine"]), "",
             "| runner | beam | batch | sentences | sentences/s | BLEU | BLEU-lc | same output as selfattn "
             "| same as selfattn-best |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        same = ["" if r[c] is None else f"{100 * r[c]:.1f}%" for c in ("same_as_selfattn", "same_as_selfattn_best")]
        lines.append(f"| {r['runner']} | {r['beam']} | {r['batch']} | {r['sentences']} | {r['sentences_per_s']} | {r['bleu']} | "
                     f"{r['bleu_lc']} | {same[0]} | {same[1]} |")
    atomic_write_bytes(args.out + ".md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
