"""DDP with 2 processes (torchrun, gloo) ends with the weights of one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfattn.training import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from helpers import DDP_CONFIG as CONFIG
from helpers import PoolTask, tiny_model


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="this torch build has no gloo backend")
def test_two_process_ddp_equals_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).parent / "_ddp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]  # any failure is a failure: gloo's presence is checked above
    ddp = load_file(str(tmp_path / "ddp.safetensors"))
    ddp_losses = json.loads((tmp_path / "losses.json").read_text())
    assert ddp_losses["world"] == 2

    task = PoolTask()
    model = tiny_model(task)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    single = Trainer(model, task, CONFIG).fit()
    sd = model.state_dict()
    eps32 = torch.finfo(torch.float32).eps
    # gradients agree up to reduction-order rounding (relative ~ sqrt(terms)·eps32); with eps = 1 an update
    # error is <= lr·|Δg|, so weights differ by a few eps32 times the movement; any real difference in
    # data or normalisation changes the updates by O(movement).
    moved = max(float((sd[k] - start[k]).abs().max()) for k in ddp)
    assert moved > 1e-3  # training really changed the weights (far above the tolerance below)
    for k, v in ddp.items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=1e3 * eps32 * moved, msg=k)
    torch.testing.assert_close(torch.tensor(ddp_losses["losses"], dtype=torch.float64),
                               torch.tensor(single.losses, dtype=torch.float64), rtol=1e3 * eps32, atol=0)
