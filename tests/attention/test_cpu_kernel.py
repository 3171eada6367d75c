"""Building and loading the C kernel (attention/cpu_kernel.py) and its typed call wrapper (kernel_abi.py).

Failure points are forced, never timed: a fake compiler (a shell script that records each run, writes
its -o file, or fails like a gcc without OpenMP), a cache path under a regular file (unwritable even
for root), a library whose version symbol disagrees. Nothing here compiles at collection time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

import selfattn
from selfattn.attention import BACKENDS, cpu_kernel
from selfattn.cli import main as cli_main

LOGGER = "selfattn.attention.cpu_kernel"


def fake_compiler(tmp_path, *, fail: str | None = None, delay: float = 0.0):
    """A 'C compiler' that appends one line to tmp_path/cc.log per run and writes its -o file (or fails)."""
    script = tmp_path / "fake-cc"
    body = f'echo "{fail}" >&2; exit 1' if fail else textwrap.dedent("""\
        while [ $# -gt 0 ]; do if [ "$1" = "-o" ]; then out="$2"; fi; shift; done
        echo not-a-library > "$out\"""")
    script.write_text(f'#!/bin/sh\necho run >> "{tmp_path / "cc.log"}"\nsleep {delay}\n{body}\n')
    script.chmod(0o755)
    return str(script)


def runs(tmp_path) -> int:
    log = tmp_path / "cc.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and no remembered builds or failures; decisions forgotten before and after."""
    monkeypatch.setenv("SELFATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_kernel, "_LOADED", {})
    monkeypatch.setattr(cpu_kernel, "_FAILED", {})
    BACKENDS.forget_decisions()
    yield tmp_path
    BACKENDS.forget_decisions()


def test_supports_and_explain_never_compile(fresh, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise AssertionError(f"a compiler ran during supports/explain: {args}")

    monkeypatch.setattr(cpu_kernel.subprocess, "run", no_compiler)
    q = torch.empty(1, 2, 256, 64, dtype=torch.bfloat16)
    for dtype in (torch.bfloat16, torch.float32):
        selfattn.explain_backend(q.to(dtype), q.to(dtype), q.to(dtype), causal=True)
    assert cpu_kernel.unavailable_reason("bf16") == cpu_kernel.cpu_reason("bf16")  # None here: builds on first use
    assert not (fresh / "cache").exists()  # nothing written either


def test_two_builders_compile_once_the_other_waits_on_the_lock(fresh):
    """Two threads stand in for two DDP ranks: each opens build.lock itself, and flock locks conflict
    between open files even within one process, so the second waits exactly as another process would."""
    cc = fake_compiler(fresh, delay=1.0)  # long enough that both reach the build together
    paths, errors = [], []

    def builder():
        try:
            paths.append(cpu_kernel.build("f32", cc=cc))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=builder) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and paths == [cpu_kernel.library_path("f32", cc)] * 2
    assert runs(fresh) == 1  # one compiled; the other waited on build.lock, then found the library


def test_builds_of_other_configurations_are_never_deleted(fresh):
    cache = fresh / "cache"
    cache.mkdir()
    older = cache / "flash_f32-0123456789abcdef.so"  # the pre-lock layout, another venv's build
    other = cache / "flash_cpu-f32-fedcba9876543210" / "flash_cpu.so"  # another CC / source version
    other.parent.mkdir()
    for p in (older, other):
        p.write_text("someone else's build")
    first = cpu_kernel.build("f32", cc=fake_compiler(fresh))
    second_cc = fresh / "other-cc"
    os.symlink(fake_compiler(fresh), second_cc)
    second = cpu_kernel.build("f32", cc=str(second_cc))
    assert first != second and first.parent.parent == second.parent.parent == cache
    for p in (older, other, first, second):
        assert p.exists(), p
    assert cpu_kernel.build("f32", cc=str(second_cc)) == second and runs(fresh) == 2  # cached: no third run


def _bf16_call():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, 128, 64, generator=gen).bfloat16() for _ in range(3)]


@pytest.mark.skipif(cpu_kernel.cpu_reason("bf16") is not None, reason=str(cpu_kernel.cpu_reason("bf16")))
def test_unwritable_cache_warns_once_then_falls_back(fresh, monkeypatch, caplog):
    (fresh / "a-file").write_text("")
    monkeypatch.setenv("SELFATTN_CACHE", str(fresh / "a-file" / "cache"))  # unwritable even for root
    q, k, v = _bf16_call()
    assert selfattn.explain_backend(q, k, v, causal=True).chosen == "cpu_bf16"  # it could, as far as it knows
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = selfattn.attention(q, k, v, causal=True)
        again = selfattn.attention(q, k, v, causal=True)
    warned = [r for r in caplog.records if r.name == LOGGER]
    assert len(warned) == 1 and "cannot write the kernel cache" in warned[0].getMessage()
    choice = selfattn.explain_backend(q, k, v, causal=True)
    assert choice.chosen != "cpu_bf16" and "cannot write the kernel cache" in choice.reasons["cpu_bf16"]
    want = selfattn.attention(q, k, v, causal=True, backend=choice.chosen)
    assert torch.equal(out, want) and torch.equal(again, want)


def test_compiler_without_openmp_is_one_warning_with_the_reason(fresh, monkeypatch, caplog):
    monkeypatch.setenv("CC", fake_compiler(fresh, fail="flash_cpu.c:31:10: fatal error: omp.h: No such file"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            with pytest.raises(cpu_kernel.KernelUnavailable, match="no OpenMP"):
                cpu_kernel.kernel("f32")
    assert runs(fresh) == 1 and len([r for r in caplog.records if r.name == LOGGER]) == 1
    if cpu_kernel.cpu_reason("f32") is None:
        assert "omp.h" in cpu_kernel.unavailable_reason("f32")


@pytest.mark.skipif(cpu_kernel.cpu_reason("f32") is not None, reason=str(cpu_kernel.cpu_reason("f32")))
def test_library_with_another_version_symbol_is_rejected(fresh, monkeypatch, caplog):
    path = cpu_kernel.build("f32")  # the real gcc build
    monkeypatch.setattr(cpu_kernel, "KERNEL_VERSION", cpu_kernel.KERNEL_VERSION + 1)  # what a newer module expects
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(cpu_kernel.KernelUnavailable) as info:
        cpu_kernel.kernel("f32")
    assert f"kernel version {cpu_kernel.KERNEL_VERSION - 1}" in str(info.value) and str(path) in str(info.value)
    assert len(caplog.records) == 1


@pytest.mark.skipif(cpu_kernel.cpu_reason("f32") is not None, reason=str(cpu_kernel.cpu_reason("f32")))
def test_the_typed_wrapper_checks_every_argument():
    kern = cpu_kernel.kernel("f32")
    b, h, g, n, m, d, e = 1, 2, 1, 3, 5, 32, 32
    args = dict(q=torch.zeros(b, h, 64, d), kp=torch.zeros(b, g, 64, d), vp=torch.zeros(b, g, 64, e), kpm=None,
                kpm_bstride=0, kpm_all=None, slopes=None, qseg=None, kseg=None, mask=None, bias=None, msb=0, msh=0,
                msn=0, out=torch.empty(b, h, 64, e),
                lse=torch.empty(b, h, 64),
                b=b, h=h, g=g, n=n, m=m, n_pad=64, m_pad=64, d=d, e=e, scale=0.5, left=1 << 40, right=1 << 40,
                nthreads=1)
    kern.forward(**args)
    assert torch.equal(args["out"][:, :, :n], torch.zeros(b, h, n, e))  # zero values: mean of zeros
    bad = [({"q": torch.zeros(b, h, 64, d, dtype=torch.float64)}, "expected a contiguous CPU torch.float32"),
           ({"kp": torch.zeros(b, g, 32, d)}, "kp: expected 2048 elements, got 1024"),
           ({"q": torch.zeros(b, h, d, 64).transpose(2, 3)}, "contiguous=False"),
           ({"n_pad": 60}, "n_pad: expected a multiple of 64"), ({"out": None}, "out: expected a tensor"),
           ({"qseg": torch.zeros(b, 64, dtype=torch.int32)}, "qseg, kseg: expected both or neither"),
           ({"qseg": torch.zeros(b, 64), "kseg": torch.zeros(b, 64, dtype=torch.int32)}, "CPU torch.int32"),
           ({"qseg": torch.zeros(b, 60, dtype=torch.int32), "kseg": torch.zeros(b, 64, dtype=torch.int32)},
            "qseg: expected 64 elements, got 60"),
           ({"mask": torch.ones(n * m - 1, dtype=torch.uint8), "msn": m}, "mask: expected 15 elements, got 14"),
           ({"mask": torch.ones(n * m, dtype=torch.uint8), "bias": torch.zeros(n * m), "msn": m},
            "mask, bias: expected at most one, got both"),
           ({"msn": -1}, "msn: expected a stride >= 0")]
    for change, words in bad:
        with pytest.raises(ValueError, match=words.replace("(", r"\(")):
            kern.forward(**{**args, **change})
    kern.forward(**{**args, "mask": torch.zeros(n, m, dtype=torch.uint8), "msn": m})  # a general mask: none allowed
    assert torch.equal(args["out"][:, :, :n], torch.zeros(b, h, n, e)) and bool(args["lse"][:, :, :n].isinf().all())
    with pytest.raises(ValueError, match=r"missing \['nthreads'\]"):
        kern.forward(**{a: x for a, x in args.items() if a != "nthreads"})


def test_build_kernels_command(fresh, monkeypatch, capsys):
    cc = fake_compiler(fresh)
    assert cli_main(["build-kernels", "--variant", "f32", "--cc", cc]) == 0
    out = capsys.readouterr().out
    assert str(cpu_kernel.library_path("f32", cc)) in out and runs(fresh) == 1
    failing = fake_compiler(fresh / "cache", fail="boom")  # another script, same log dir layout
    assert cli_main(["build-kernels", "--variant", "bf16", "--cc", failing]) == 2
    assert "bf16: building flash_cpu.c with" in capsys.readouterr().err


@pytest.mark.skipif(cpu_kernel.cpu_reason("f32") is not None, reason=str(cpu_kernel.cpu_reason("f32")))
def test_segment_ids_outside_int32_are_renumbered_not_truncated():
    """Only equality of ids matters, and the kernel reads int32: large ids give the output of small ones,
    and an id that int32 would truncate onto another segment's (2**32 -> 0) does not merge the two."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 100, 32, generator=gen) for _ in range(3))
    seg = torch.arange(100).div(30, rounding_mode="floor").expand(2, 100)  # (b, n) ids 0..3
    far = torch.where(seg % 2 == 1, seg + 2**40, seg)  # ids 0, 2**40 + 1, 2, 2**40 + 3
    near = selfattn.attention(q, k, v, segment_ids=(seg, seg), backend="cpu_f32")
    assert torch.equal(selfattn.attention(q, k, v, segment_ids=(far, far), backend="cpu_f32"), near)
    clash = torch.where(seg == 1, torch.full_like(seg, 2**32), seg)  # 2**32 truncates to 0, segment 0's id
    assert torch.equal(selfattn.attention(q, k, v, segment_ids=(clash, clash), backend="cpu_f32"), near)


def test_isa_caps_in_the_environment_rule_out_flags():
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA below AVX-512 make an AVX-512 machine an AVX2 one for selfattn."""
    flags = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"})
    assert cpu_kernel.usable_flags(flags, {}) == flags
    assert cpu_kernel.usable_flags(flags, {"ATEN_CPU_CAPABILITY": "avx512"}) == flags
    avx2 = frozenset({"avx2", "fma"})
    assert cpu_kernel.usable_flags(flags, {"ATEN_CPU_CAPABILITY": "AVX2"}) == avx2
    assert cpu_kernel.usable_flags(flags, {"ONEDNN_MAX_CPU_ISA": "avx2"}) == avx2
    assert cpu_kernel.usable_flags(flags, {"DNNL_MAX_CPU_ISA": "AVX2_VNNI"}) == avx2
    assert cpu_kernel.usable_flags(flags, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}) == avx2 | {"avx512f", "avx512bw"}
    assert cpu_kernel.usable_flags(flags, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}) == flags - {
        "avx512_fp16", "amx_bf16", "amx_tile"}


def test_an_avx2_capped_process_trains_in_fp32_without_the_kernel(tmp_path):
    """In a subprocess capped to AVX2: amp "auto" resolves to fp32, the C kernel says why it cannot run and
    Muon's Newton–Schulz runs in float32 — on every machine, whatever its CPU."""
    code = textwrap.dedent("""
        import torch
        from selfattn.attention import cpu_kernel
        from selfattn.training.forward import resolve_amp
        from selfattn.training.optim import default_ns_dtype
        print(resolve_amp("auto", torch.device("cpu"))[0], default_ns_dtype(torch.device("cpu")),
              cpu_kernel.cpu_reason("bf16") is not None, sorted(cpu_kernel.cpu_flags() & {"avx512f"}))
    """)
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["none", "torch.float32", "True", "[]"]
