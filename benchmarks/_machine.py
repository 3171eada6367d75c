"""Provenance for benchmark results: the machine and the command, written inside every result file.

Every script in ``benchmarks/`` writes ONE current result, ``benchmarks/results/<script>.{json,md,png}``
(history lives in git), through :func:`write_result`, so each file says where and how it was measured.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile",
                     "avx512_fp16")


def cpu_info() -> dict:
    """CPU model, the SIMD flags that decide which kernels run, and the core count (from /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in FLAGS_OF_INTEREST if f in flags]}


def machine() -> dict:
    """Everything a reader needs to know where a number came from."""
    import torch

    info = {"cpu": cpu_info(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join([Path(sys.argv[0]).name,
                                                                                 *sys.argv[1:]])}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line(info: dict | None = None) -> str:
    """One Markdown line naming the machine, for the head of a result table."""
    info = info or machine()
    cpu = info["cpu"]
    return (f"Machine: {cpu['model']}, {cpu['cores']} cores, flags {' '.join(cpu['flags']) or 'none of interest'}; "
            f"torch {info['torch']}, {info['threads']} threads; load average {info['load_average']}; "
            f"{info['date']}; `{info['command']}`")


__all__ = ["RESULTS", "cpu_info", "machine", "machine_line"]
