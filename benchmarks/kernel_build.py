"""How long a cold build of the C attention kernel takes: gcc + ctypes (what cpu_kernel.py does) versus
PyTorch's extension machinery (``torch.utils.cpp_extension``, ninja, a build lock, per-config dirs).

    python benchmarks/kernel_build.py            # needs gcc; the second way needs `pip install ninja`

Each way builds into a fresh temporary directory (median of ``--repeats`` / ``--ext-repeats`` builds). The cpp_extension way
compiles the smallest torch extension that could host the kernel: a ``TORCH_LIBRARY`` registration of
one operator (``torch/library.h``), *without* the kernel itself, so its time is a lower bound for that
route. Writes benchmarks/results/kernel_build.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from selfattn.attention import cpu_kernel

ROOT = Path(__file__).resolve().parents[1]
OP_SOURCE = """
#include <torch/library.h>
at::Tensor twice(const at::Tensor& x) { return x * 2; }
TORCH_LIBRARY(selfattn_build_probe_NUMBER, m) { m.def("twice(Tensor x) -> Tensor", &twice); }
"""  # one namespace per build: a process may register a TORCH_LIBRARY namespace only once


def gcc_build(variant: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        os.environ["SELFATTN_CACHE"] = d
        t0 = time.perf_counter()
        cpu_kernel.build(variant)
        return time.perf_counter() - t0


def cpp_extension_build(i: int) -> float:
    from torch.utils import cpp_extension

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        cpp_extension.load_inline(f"selfattn_build_probe_{i}", cpp_sources=OP_SOURCE.replace("NUMBER", str(i)), build_directory=d,
                                  is_python_module=False, verbose=False)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="gcc builds to take the median of")
    ap.add_argument("--ext-repeats", type=int, default=1, help="cpp_extension builds (minutes each on 2 cores)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kernel_build"))
    args = ap.parse_args()
    rows = {f"gcc + ctypes, {v} kernel (cpu_kernel.build)": statistics.median(gcc_build(v) for _ in range(args.repeats))
            for v in ("bf16", "f32")}
    try:
        rows["torch.utils.cpp_extension.load_inline, a 1-op TORCH_LIBRARY stub (no kernel)"] = statistics.median(
            cpp_extension_build(i) for i in range(args.ext_repeats))
    except Exception as exc:  # no ninja / no compiler: say so in the result
        rows[f"torch.utils.cpp_extension: failed ({type(exc).__name__}: {str(exc)[:200]})"] = float("nan")
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "flags": " ".join(sorted(f for f in cpu_kernel.cpu_flags() if f.startswith(("avx", "fma")))),
                          "gcc": subprocess.run([cpu_kernel.compiler(), "--version"], capture_output=True,
                                                text=True).stdout.split("\n")[0],
                          "torch": torch.__version__, "python": platform.python_version(),
                          "load_average": [round(x, 2) for x in os.getloadavg()],
                          "note": "2 shared cores, other jobs running: medians of cold builds"},
              "seconds": {k: round(v, 2) for k, v in rows.items()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(result, indent=1) + "\n"),
                         (".md", "\n".join([f"# {__doc__.splitlines()[0]}", "", f"`{result['command']}` on "
                                            f"{result['machine']}", "", "| build | seconds |", "|---|---:|",
                                            *(f"| {k} | {v:.2f} |" for k, v in result["seconds"].items())]) + "\n")):
        tmp = out.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out.with_suffix(suffix))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
