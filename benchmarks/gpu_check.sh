#!/usr/bin/env bash
# The GPU check of issue #14, <= 8 minutes on one CUDA GPU: the CUDA tests, then benchmarks/gpu_check.py
# (Triton vs SDPA flash/cuDNN in TFLOP/s; a paper-base training step vs nn.Transformer + autocast).
# Writes benchmarks/results/gpu_check.{json,md}; the tests' summary goes to benchmarks/results/gpu_check_tests.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p benchmarks/results
timeout 240 "$PY" -m pytest -q -rs -p no:cacheprovider tests/attention/test_triton.py tests/attention/test_cpu_ops.py \
    2>&1 | tail -30 | tee benchmarks/results/gpu_check_tests.txt || echo "CUDA tests failed (see above)" >&2
timeout 300 "$PY" benchmarks/gpu_check.py "$@"
