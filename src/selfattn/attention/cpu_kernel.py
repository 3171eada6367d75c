"""Build and load the C attention kernel (``csrc/flash_cpu.c``) for x86 CPUs with AVX-512.

The kernel is plain C with AVX-512 intrinsics and OpenMP, compiled in two variants: ``"bf16"``
(bfloat16 operands on the AVX-512 BF16 dot-product units) and ``"f32"`` (float32 operands, FMAs;
AVX-512F). A variant is built with the system's C compiler (seconds; ``selfattn build-kernels``
does it ahead of time) and called through ctypes: no PyTorch headers (``torch.utils.cpp_extension``
was measured ~40x slower to build, see :data:`BUILD_NOTE`; the lock and per-configuration directories
it would bring are done here with ``filelock``), no build step at install time. It
links libgomp by soname, so inside a PyTorch process it shares PyTorch's OpenMP runtime.

The build, safe under concurrency:
  * each configuration (variant, compiler name, flags, source, :data:`KERNEL_VERSION`) has its own
    directory ``<cache>/flash_cpu-<variant>-<digest>/``, and no build ever deletes another's;
  * a file lock in that directory: one process (one DDP rank) compiles, the others wait and load;
  * the library is compiled to a temporary name and renamed into place (atomic);
  * at load the library must report this module's :data:`KERNEL_VERSION`, element size and blocks.

:func:`unavailable_reason` says, without compiling or writing anything, why a variant cannot run here
(CPU features, no compiler, an earlier failure); it is what the backends' ``supports`` report. When a
build or load fails (unwritable cache, a compiler without OpenMP, a compile error, a wrong library),
:func:`kernel` logs one warning with the reason, remembers it, and raises :class:`KernelUnavailable`.

Environment: ``SELFATTN_CACHE`` (default ``~/.cache/selfattn``) holds the built libraries;
``CC`` picks the compiler (default ``gcc``); ``SELFATTN_BUILD_LOCK_TIMEOUT`` (seconds, default 600)
bounds the wait for another process's build.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import filelock

from .kernel_abi import ABI, Kernel

SOURCE = Path(__file__).with_name("csrc") / "flash_cpu.c"
KERNEL_VERSION = 4  # must equal SELFATTN_KERNEL_VERSION in csrc/flash_cpu.c
BLOCKS = (64, 64)  # (query rows, keys) per block: QB, KB in csrc/flash_cpu.c, checked at load
ELEM_BYTES = {"bf16": 2, "f32": 4}
_COMMON = ["-O3", "-std=c11", "-fPIC", "-shared", "-fopenmp", "-mfma", "-mavx512f"]
FLAGS = {  # variant -> compiler flags
    "bf16": [*_COMMON, "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16"],
    "f32": [*_COMMON, "-DSELFATTN_F32"],
}
REQUIRED_FLAGS = {  # variant -> /proc/cpuinfo flags the built code needs
    "bf16": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "fma"),
    "f32": ("avx512f", "fma"),
}
BUILD_NOTE = ("benchmarks/kernel_build.py, 2 shared cores (load average ~15-19): a cold gcc + ctypes build took "
              "5.1 s (bf16) / 5.5 s (f32); torch.utils.cpp_extension.load_inline of a one-operator "
              "TORCH_LIBRARY stub alone (torch headers, ninja), without the kernel, 221 s")

log = logging.getLogger(__name__)


class KernelUnavailable(RuntimeError):
    """The kernel cannot be built or loaded here; the message says why."""


def cpu_flags() -> set[str]:
    """The CPU feature flags this process may use (Linux /proc/cpuinfo; empty elsewhere), less those that
    ``ATEN_CPU_CAPABILITY`` or ``ONEDNN_MAX_CPU_ISA`` rule out (see :func:`usable_flags`)."""
    return set(_cpu_flags())


BF16_UNIT_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # either one: bf16 matmuls run at full speed


def cpu_has_bf16_units() -> bool:
    """One of ``BF16_UNIT_FLAGS`` among the usable flags. Without them (AVX2 CPUs, AVX-512 CPUs before Cooper
    Lake) bf16 products are emulated and several times slower than fp32."""
    return not BF16_UNIT_FLAGS.isdisjoint(_cpu_flags())  # the cached set: this runs on every batched call


# ONEDNN_MAX_CPU_ISA values (oneDNN's names) -> the flag families they leave out
_ONEDNN_CAPS = {"SSE41": ("avx512", "amx"), "AVX": ("avx512", "amx"), "AVX2": ("avx512", "amx"),
                "AVX2_VNNI": ("avx512", "amx"), "AVX2_VNNI_2": ("avx512", "amx"),
                "AVX512_CORE": ("avx512_bf16", "avx512_fp16", "amx"),
                "AVX512_CORE_VNNI": ("avx512_bf16", "avx512_fp16", "amx"),
                "AVX512_CORE_BF16": ("avx512_fp16", "amx"), "AVX512_CORE_FP16": ("amx",)}


def usable_flags(flags: frozenset[str], env: dict[str, str]) -> frozenset[str]:
    """``flags`` less what the process is told not to use: ``ATEN_CPU_CAPABILITY=default|avx2`` (PyTorch's own
    kernels) or ``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA`` below AVX-512 (its matmuls). An AVX-512 machine
    capped so behaves as an AVX2 one here too: no C kernel, fp32 where bf16 matmuls would be slow — and that
    is how the AVX2 policy can be measured on an AVX-512 machine (benchmarks/train_step.py --isa avx2)."""
    drop: tuple[str, ...] = ()
    if env.get("ATEN_CPU_CAPABILITY", "").lower() in ("default", "avx2"):
        drop += ("avx512", "amx")
    isa = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").upper()
    drop += _ONEDNN_CAPS.get(isa, ())
    return frozenset(f for f in flags if not f.startswith(drop)) if drop else flags


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:  # read once: ATen and oneDNN read their caps once too
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return usable_flags(frozenset(line.split(":", 1)[1].split()), dict(os.environ))
    return frozenset()


@functools.cache
def cpu_reason(variant: str) -> str | None:
    """Why this machine's CPU cannot run a variant, or None (the CPU does not change: cached)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the C kernel is written for x86-64 with AVX-512; this machine is {platform.machine()}"
    missing = [f for f in REQUIRED_FLAGS[variant] if f not in _cpu_flags()]
    if missing:
        return (f"this CPU lacks {', '.join(missing)} (/proc/cpuinfo, less ISA caps in the environment), which "
                f"the {variant} kernel's instructions need")
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("SELFATTN_CACHE", Path.home() / ".cache" / "selfattn"))


def compiler() -> str:
    return os.environ.get("CC", "gcc")


@functools.cache
def _digest(variant: str, cc: str) -> str:
    config = " ".join([cc, *FLAGS[variant], f"version={KERNEL_VERSION}"]).encode()
    return hashlib.sha256(SOURCE.read_bytes() + b"\0" + config).hexdigest()[:16]


def library_path(variant: str, cc: str | None = None) -> Path:
    """Where this configuration's library lives (whether built yet or not)."""
    return _library_path(variant, cc or compiler(), os.environ.get("SELFATTN_CACHE"))


@functools.lru_cache(maxsize=64)
def _library_path(variant: str, cc: str, cache: str | None) -> Path:  # on every call: keep it a lookup
    return cache_dir() / f"flash_cpu-{variant}-{_digest(variant, cc)}" / "flash_cpu.so"


@functools.lru_cache(maxsize=64)
def _on_path(cc: str, path_env: str | None) -> bool:
    return shutil.which(cc) is not None


def _lock_timeout() -> float:
    raw = os.environ.get("SELFATTN_BUILD_LOCK_TIMEOUT", "600")
    try:
        return float(raw)
    except ValueError:
        raise KernelUnavailable(f"SELFATTN_BUILD_LOCK_TIMEOUT must be a number of seconds, got {raw!r}") from None


def build(variant: str = "bf16", cc: str | None = None) -> Path:
    """Compile a variant unless its configuration is built; return the library's path.

    One process compiles while the others wait on the directory's file lock. Raises
    :class:`KernelUnavailable` with the reason (no compiler, unwritable cache, a failed compile)."""
    if variant not in FLAGS:
        raise ValueError(f"kernel variant must be one of {sorted(FLAGS)}, got {variant!r}")
    cc = cc or compiler()
    path = library_path(variant, cc)
    if path.exists():  # built (maybe ahead of time into a read-only cache): nothing to lock
        return path
    if shutil.which(cc) is None:
        raise KernelUnavailable(f"no C compiler {cc!r} on PATH (set CC) to build the {variant} attention kernel")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(path.parent / "build.lock", timeout=_lock_timeout())
        with lock:
            if not path.exists():  # another process may have built it while this one waited
                _compile(variant, cc, path)
    except filelock.Timeout:
        raise KernelUnavailable(f"another process has held the build lock {path.parent / 'build.lock'} "
                                f"for {_lock_timeout():.0f} s") from None
    except OSError as exc:
        raise KernelUnavailable(f"cannot write the kernel cache {path.parent} ({exc}); set SELFATTN_CACHE "
                                "to a writable directory") from None
    return path


def _compile(variant: str, cc: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=path.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *FLAGS[variant], str(SOURCE), "-o", tmp, "-lm"], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            err = proc.stderr.strip()
            hint = (" (the compiler has no OpenMP: install libgomp / its omp.h, or set CC)"
                    if "omp" in err.lower() else "")
            raise KernelUnavailable(f"building {SOURCE.name} with {cc} failed{hint}: {err[-1500:]}")
        os.replace(tmp, path)  # atomic: a concurrent reader or a killed build never sees half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _open(variant: str, path: Path) -> Kernel:
    """Load a built library and check that it is this module's kernel; KernelUnavailable if not."""
    try:
        lib = ctypes.CDLL(str(path))
        version, elem = lib.selfattn_kernel_version(), lib.selfattn_elem_bytes()
    except (OSError, AttributeError) as exc:
        raise KernelUnavailable(f"cannot load {path}: {exc}") from None
    if version != KERNEL_VERSION or elem != ELEM_BYTES[variant]:
        raise KernelUnavailable(f"{path} is kernel version {version} with {elem}-byte elements; expected "
                                f"version {KERNEL_VERSION} with {ELEM_BYTES[variant]}-byte ({variant}) elements")
    qb, kb = ctypes.c_int64(), ctypes.c_int64()
    lib.selfattn_block_sizes(ctypes.byref(qb), ctypes.byref(kb))
    if (qb.value, kb.value) != BLOCKS:
        raise KernelUnavailable(f"{path} uses blocks {(qb.value, kb.value)}; expected {BLOCKS}")
    return Kernel(variant, path, lib, ABI[variant], *BLOCKS)


_LOADED: dict[Path, Kernel] = {}
_FAILED: dict[Path, str] = {}  # library path -> why it could not be built or loaded (warned once)
_LOADING = threading.Lock()


def unavailable_reason(variant: str) -> str | None:
    """Why a variant ("bf16" or "f32") cannot run here, or None. Pure: compiles and writes nothing
    (a variant that is not built yet but can be is built by the first :func:`kernel` call)."""
    why = cpu_reason(variant)
    if why is not None:
        return why
    path = library_path(variant)
    if path in _FAILED:
        return _FAILED[path]
    if path not in _LOADED and not _on_path(compiler(), os.environ.get("PATH")) and not path.exists():
        return f"no C compiler {compiler()!r} on PATH (set CC) to build the {variant} attention kernel"
    return None


def kernel(variant: str) -> Kernel:
    """The loaded kernel, building it first if needed. On failure: one warning, then KernelUnavailable."""
    path = library_path(variant)
    got = _LOADED.get(path)
    if got is not None:
        return got
    with _LOADING:
        if path in _LOADED:
            return _LOADED[path]
        why = _FAILED.get(path) or cpu_reason(variant)
        if why is None:
            try:
                _LOADED[path] = _open(variant, build(variant))
                return _LOADED[path]
            except KernelUnavailable as exc:
                why = f"the {variant} C attention kernel is unavailable: {exc}"
                _FAILED[path] = why
                log.warning("%s; attention falls back to another backend", why)
        raise KernelUnavailable(why)


def block_sizes(variant: str) -> tuple[int, int]:
    """(query rows, keys) per block of the kernel (a constant; every loaded library is checked)."""
    return BLOCKS


__all__ = ["BF16_UNIT_FLAGS", "BLOCKS", "KERNEL_VERSION", "KernelUnavailable", "block_sizes", "build", "cache_dir",
           "cpu_flags", "cpu_has_bf16_units", "cpu_reason", "kernel", "library_path", "unavailable_reason"]
