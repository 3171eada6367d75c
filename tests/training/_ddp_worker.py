"""Run by tests/training/test_ddp.py under `torchrun --nproc_per_node 2`: train a few steps with DDP (gloo)
and let rank 0 write the weights and losses."""

import json
import sys

import torch
from safetensors.torch import save_model

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from helpers import DDP_CONFIG as CONFIG
from helpers import PoolTask, tiny_model

from selfattn.training import Trainer
from selfattn.training.distributed import cleanup_distributed, setup_distributed

if __name__ == "__main__":
    torch.set_num_threads(1)
    rank, world, _ = setup_distributed("cpu")
    task = PoolTask()
    model = tiny_model(task)
    result = Trainer(model, task, CONFIG).fit()
    if rank == 0:
        save_model(model, sys.argv[1] + "/ddp.safetensors")
        with open(sys.argv[1] + "/losses.json", "w") as f:
            json.dump({"world": world, "losses": result.losses}, f)
    cleanup_distributed()
