"""Backend "triton": interpreter run against the math backend, honest declines, GPU compilation.

There is no GPU in CI. Three kinds of check:
1. ``triton_interp_cases.py`` runs in a fresh subprocess with ``TRITON_INTERPRET=1`` (it must be
   set before Triton decorates the kernels, and must not leak into this process): forward and
   gradients of the kernels on CPU against the math backend in float64, derived tolerances.
2. ``triton_supports`` declines with a reason for every call the kernel cannot serve, and "auto"
   never picks it for CPU tensors without the interpreter.
3. The kernels compile ahead of time to a CUDA binary (sm_90, bf16) — no GPU needed for that.
4. On a machine with a CUDA GPU, the compiled kernels against the math backend (skipped here).

Legend: b batch, h query heads, g kv heads, n queries, m keys, d head dim.
Mask convention: True = may attend; causal bottom-right aligned.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from triton_checks import check, pad_mask

import selfattn
from selfattn.attention import explain_backend, triton_backend
from selfattn.attention.spec import validate_call

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(
    not HAS_TRITON, reason="triton is not installed (pip install 'selfattn[gpu]')"
)
on_cuda = pytest.mark.skipif(
    not (HAS_TRITON and torch.cuda.is_available()), reason="needs a CUDA GPU and triton"
)
HERE = Path(__file__).parent


@needs_triton
def test_kernels_under_interpreter_match_math_backend():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-ra", "-p", "no:cacheprovider", "-x",
           str(HERE / "triton_interp_cases.py")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=HERE.parents[1])
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, report


def _call(**overrides):
    """An AttentionCall from real CPU tensors, then moved (on paper) to CUDA."""
    q = torch.randn(1, 4, 8, 64, dtype=torch.bfloat16)
    kv = torch.randn(1, 2, 8, 64, dtype=torch.bfloat16)
    kwargs = dict(mask=None, causal=True, scale=None, dropout_p=0.0, window=None,
                  alibi_slopes=None, return_weights=False)
    tensors = {k: overrides.pop(k) for k in ("q", "k", "v") if k in overrides}
    kwargs.update(overrides)
    call = validate_call(tensors.get("q", q), tensors.get("k", kv), tensors.get("v", kv), **kwargs)
    return dataclasses.replace(call, device_type="cuda")


@pytest.fixture
def compiled_mode(monkeypatch):
    """Pretend Triton is installed and the kernels are compiled (not interpreted)."""
    monkeypatch.setattr(triton_backend, "triton_available", lambda: True)
    monkeypatch.setattr(triton_backend, "interpreting", lambda: False)


def test_supports_cuda_bf16_gqa_causal_window_padding(compiled_mode):
    pad = torch.ones(1, 1, 1, 8, dtype=torch.bool)
    assert triton_backend.triton_supports(_call()) is None
    assert triton_backend.triton_supports(_call(mask=pad, window=(3, 0))) is None
    for mask in (torch.ones(1, 4, 8, 8, dtype=torch.bool), torch.zeros(1, 1, 8, 8)):  # general, float: in place
        assert triton_backend.triton_supports(_call(mask=mask)) is None
    seg = torch.zeros(1, 8, dtype=torch.long)  # segment ids natively
    assert triton_backend.triton_supports(_call(segment_ids=(seg, seg))) is None
    assert triton_backend.triton_supports(_call(q=torch.randn(1, 4, 8, 48, dtype=torch.float16),
                                                k=torch.randn(1, 1, 8, 48, dtype=torch.float16),
                                                v=torch.randn(1, 1, 8, 48, dtype=torch.float16))) is None


@pytest.mark.parametrize("overrides, words", [
    (dict(return_weights=True), "weights"),
    (dict(dropout_p=0.1), "dropout"),
    (dict(mask=torch.zeros(1, 1, 8, 8, requires_grad=True)), "additive mask requires a gradient"),
    (dict(alibi_slopes=torch.ones(4)), "ALiBi"),
    (dict(q=torch.randn(1, 4, 8, 8), k=torch.randn(1, 2, 8, 8), v=torch.randn(1, 2, 8, 8)), "float32"),
    (dict(q=torch.randn(1, 4, 8, 512, dtype=torch.half), k=torch.randn(1, 2, 8, 512, dtype=torch.half),
          v=torch.randn(1, 2, 8, 512, dtype=torch.half)), "head dims"),
    (dict(q=torch.randn(8193, 8, 1, 16, dtype=torch.half), k=torch.randn(8193, 8, 1, 16, dtype=torch.half),
          v=torch.randn(8193, 8, 1, 16, dtype=torch.half)), "grid limit"),
])
def test_declines_with_a_reason(compiled_mode, overrides, words):
    why = triton_backend.triton_supports(_call(**overrides))
    assert why is not None and words in why


def test_declines_when_triton_is_missing(monkeypatch):
    monkeypatch.setattr(triton_backend, "triton_available", lambda: False)
    assert "not installed" in triton_backend.triton_supports(_call())


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"), reason="interpreter is on here")
def test_auto_never_picks_triton_for_cpu_tensors_without_interpreter():
    q = torch.randn(1, 2, 5, 16)
    choice = explain_backend(q, q, q, causal=True)
    assert choice.chosen != "triton"
    if HAS_TRITON:
        assert "interpreter is off" in choice.reasons["triton"]
    with pytest.raises(ValueError, match="triton"):
        selfattn.attention(q, q, q, backend="triton")


@pytest.mark.parametrize("d, e", [(16, 16), (64, 64), (128, 128), (24, 40), (256, 256)])
def test_tile_configs_are_valid(d, e):
    for backward in (False, True):
        cfg = triton_backend.tile_config(d, e, backward=backward, interpret=False)
        for size in (cfg.block_m, cfg.block_n):
            assert size >= 16 and size & (size - 1) == 0  # tl.dot: powers of two >= 16
    assert triton_backend._pow2(d) >= max(16, d)


@needs_triton
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"), reason="interpreter is on here")
def test_kernels_compile_for_sm90_without_a_gpu():
    """Lower every kernel, all mask features on, to PTX and a cubin for an H100 (bf16, d = 64)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from selfattn.attention import triton_kernels as tk

    def signature(fn, consts):
        ptr = {"LSE": "*fp32", "DELTA": "*fp32", "PAD": "*i8", "QSEG": "*i32", "KSEG": "*i32", "MASK": "*u8",
               "BIAS": "*fp32"}
        ptr.update({t: "*bf16" for t in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")})
        out = {}
        for name in fn.arg_names:
            if name in consts:
                out[name] = "constexpr"
            elif name in ptr:
                out[name] = ptr[name]
            else:
                out[name] = "fp32" if name.endswith("scale") else "i32"
        return out

    for fn, bwd in ((tk.attn_fwd, False), (tk.attn_bwd_dkdv, True), (tk.attn_bwd_dq, True)):
        cfg = triton_backend.tile_config(64, 64, backward=bwd, interpret=False)
        consts = dict(HAS_LEFT=True, HAS_RIGHT=True, HAS_PAD=True, HAS_SEG=True, HAS_MASK=True, HAS_BIAS=True,
                      UPCAST=False, BLOCK_M=cfg.block_m,
                      BLOCK_N=cfg.block_n, BLOCK_D=64, BLOCK_E=64)
        src = ASTSource(fn=fn, signature=signature(fn, consts),
                        constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
        assert "cubin" in kernel.asm and kernel.metadata.shared <= 227 * 1024, fn.__name__


CUDA_CASES = {
    "causal+padding n<m": dict(causal=True, mask=pad_mask(2, 333, 0)),
    "window n>m": dict(window=(64, 16)),
    "plain, scale": dict(scale=0.2),
}


@on_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("case", CUDA_CASES)
def test_cuda_kernels_match_math_backend(dtype, d, case):
    """Compiled kernels (p cast to dtype before the second dot, unlike the interpreter)."""
    n, m = (300, 333) if "n<m" in case or "scale" in case else (333, 300)
    check(dtype, 2, 8, 2, n, m, d, d, CUDA_CASES[case], seed=1, device="cuda")
    q = torch.randn(1, 8, 64, d, dtype=dtype, device="cuda")
    choice = explain_backend(q, q, q, causal=True)  # triton serves it, unless outranked
    assert choice.chosen == "triton" or "lower priority" in choice.reasons["triton"], str(choice)


@needs_triton
def test_gpu_check_script_runs_dry_on_cpu(tmp_path):
    """benchmarks/gpu_check.py --dry-run: the GPU check's own code on CPU (Triton's interpreter, tiny shapes),
    so the one run on a lent GPU does not fail on a typo. Triton's output must match SDPA's."""
    import json

    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, str(HERE.parents[1] / "benchmarks" / "gpu_check.py"), "--dry-run", "--out",
           str(tmp_path / "check")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "check.json").read_text())
    triton_rows = [r for r in res["attention"] if r["backend"] == "triton"]
    assert len(triton_rows) == 2 and all("error" not in r for r in triton_rows), triton_rows
    assert all(r["max_abs_diff_vs_first_sdpa"] < 3 * 4 * 2**-8 for r in triton_rows)  # 3 bf16 ulps at |out| < 4
    assert [r["name"] for r in res["train"]["rows"]] == ["nn.Transformer bf16", "selfattn bf16"]
    assert (tmp_path / "check.md").read_text().startswith("# GPU check")
