"""torchrun integration: join the process group torchrun describes in the environment.

``torchrun --nproc_per_node 2 -m selfattn train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT;
we use gloo on CPU and nccl on GPU. Data sharding, rank-0 logging and checkpointing live in the Trainer.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup_distributed(device: str = "cpu") -> tuple[int, int, str]:
    """(rank, world size, device) — initialises the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return dist.get_rank(), dist.get_world_size(), device


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        # wait for every rank (rank 0 may still be writing files): a gloo group torn down while a
        # peer is still busy can abort that peer ("terminate called without an active exception")
        dist.barrier()
        dist.destroy_process_group()
