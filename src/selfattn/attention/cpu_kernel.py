"""Build and load the C attention kernel (``csrc/flash_cpu.c``) for x86 CPUs with AVX-512.

The kernel is plain C with AVX-512 intrinsics and OpenMP, compiled in two variants: ``"bf16"``
(bfloat16 operands on the AVX-512 BF16 dot-product units) and ``"f32"`` (float32 operands, FMAs;
AVX-512F). Each is built with the system's C compiler the first time it is needed (about a second)
into a per-user cache, keyed by a hash of the source and the flags, written atomically (build to a
temporary name, then rename), and called through ctypes: no PyTorch headers, no build step at
install time. It links libgomp by soname, so inside a PyTorch process it shares PyTorch's OpenMP
runtime. :func:`kernel_unavailable` says why a variant cannot be used here (missing CPU features,
no compiler, a failed build), so backends decline with a reason instead of crashing with an
illegal instruction.

Environment: ``SELFATTN_CACHE`` (default ``~/.cache/selfattn``) holds the built library;
``CC`` picks the compiler (default ``gcc``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("csrc") / "flash_cpu.c"
_COMMON = ["-O3", "-std=c11", "-fPIC", "-shared", "-fopenmp", "-mfma", "-mavx512f"]
FLAGS = {  # variant -> compiler flags
    "bf16": _COMMON + ["-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16"],
    "f32": _COMMON + ["-DSELFATTN_F32"],
}
REQUIRED_FLAGS = {  # variant -> /proc/cpuinfo flags the built code needs
    "bf16": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "fma"),
    "f32": ("avx512f", "fma"),
}


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel needs to know about (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpu_reason(variant: str) -> str | None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the C kernel is written for x86-64 with AVX-512; this machine is {platform.machine()}"
    missing = [f for f in REQUIRED_FLAGS[variant] if f not in cpu_flags()]
    if missing:
        return (f"this CPU lacks {', '.join(missing)} (from /proc/cpuinfo), which the {variant} "
                "kernel's instructions need")
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("SELFATTN_CACHE", Path.home() / ".cache" / "selfattn"))


def _library_path(variant: str, cc: str) -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *FLAGS[variant]]).encode()).hexdigest()[:16]
    return cache_dir() / f"flash_{variant}-{digest}.so"


def build(variant: str = "bf16", cc: str | None = None) -> Path:
    """Compile a variant if the cache lacks it; return the library's path. Raises RuntimeError."""
    cc = cc or os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler {cc!r} on PATH (set CC) to build the {variant} attention kernel")
    path = _library_path(variant, cc)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *FLAGS[variant], str(SOURCE), "-o", tmp, "-lm"], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building {SOURCE.name} with {cc} failed:\n{proc.stderr[-2000:]}")
        os.replace(tmp, path)  # atomic: a concurrent build or a killed one never leaves half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in path.parent.glob(f"flash_{variant}-*.so"):  # builds of earlier sources or flags
        if old != path:
            old.unlink(missing_ok=True)
    return path


@functools.lru_cache(maxsize=None)
def _load(variant: str) -> tuple[ctypes.CDLL | None, str | None]:
    why = _cpu_reason(variant)
    if why is not None:
        return None, why
    try:
        lib = ctypes.CDLL(str(build(variant)))
    except (RuntimeError, OSError) as exc:
        return None, f"the {variant} C attention kernel is unavailable: {exc}"
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.selfattn_flash_fwd.restype = ctypes.c_int
    lib.selfattn_flash_fwd.argtypes = [ptr, ptr, ptr, ptr, i64, ptr, ptr, ptr, ptr] + [i64] * 9 + [
        ctypes.c_float, i64, i64, ctypes.c_int]
    lib.selfattn_flash_bwd.restype = ctypes.c_int
    lib.selfattn_flash_bwd.argtypes = [ptr] * 10 + [i64, ptr, ptr, ptr, ptr, ptr] + [i64] * 9 + [
        ctypes.c_float, i64, i64, ctypes.c_int]
    lib.selfattn_block_sizes.argtypes = [ctypes.POINTER(i64), ctypes.POINTER(i64)]
    return lib, None


def kernel_unavailable(variant: str) -> str | None:
    """Why a variant ("bf16" or "f32") cannot run here, or None (building it on first call)."""
    return _load(variant)[1]


def kernel(variant: str) -> ctypes.CDLL:
    lib, why = _load(variant)
    if lib is None:
        raise RuntimeError(why)
    return lib


@functools.lru_cache(maxsize=None)
def block_sizes(variant: str) -> tuple[int, int]:
    """(query rows, keys) per block of the compiled kernel."""
    qb, kb = ctypes.c_int64(), ctypes.c_int64()
    kernel(variant).selfattn_block_sizes(ctypes.byref(qb), ctypes.byref(kb))
    return qb.value, kb.value


__all__ = ["block_sizes", "build", "cache_dir", "cpu_flags", "kernel", "kernel_unavailable"]
