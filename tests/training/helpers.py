"""Shared fixtures for the training tests: a task whose batches are slices of one fixed pool."""

from __future__ import annotations

import torch

from selfattn.data import SyntheticTask, seq2seq_batch
from selfattn.training import TrainConfig


class PoolTask(SyntheticTask):
    """Batch ``index`` of size ``size`` = rows [index*size, (index+1)*size) of a fixed pool, so
    2 micro-batches of B rows cover exactly the rows of 1 batch of 2B (accumulation and DDP checks)."""

    def __init__(self, pool_size: int = 256, **kw):
        super().__init__("reverse", **{"val_size": 32, **kw})
        g = torch.Generator().manual_seed(123)
        self.pool = [self._sample(g) for _ in range(pool_size)]

    def batch(self, split, index, size):
        rows = [self.pool[(index * size + i) % len(self.pool)] for i in range(size)]
        return seq2seq_batch([(x, self.solve(x)) for x in rows], self.vocab)


def tiny_model(task, seed: int = 0, **overrides):
    import selfattn

    torch.manual_seed(seed)
    cfg = selfattn.preset("tiny", **{**task.model_overrides(), "d_model": 32, "d_ff": 64, **overrides})
    return selfattn.build_model(cfg)


# eps = 1 (not the paper's 1e-9) makes Adam's update ~ lr·g for these small gradients, so it depends on
# the gradient's scale (a wrong DDP/accumulation normalisation shows) and is smooth in g (with 1e-9 the
# first step is lr·sign(g), and a gradient within rounding of 0 could flip between reduction orders).
DDP_CONFIG = TrainConfig(steps=3, batch_size=8, accum_steps=2, schedule="constant", lr=0.1, eps=1.0,
                         label_smoothing=0.1, clip_grad_norm=1.0, eval_every=0, ckpt_every=0, progress=False,
                         amp="none")  # float32: the tolerances are derived from float32 rounding
