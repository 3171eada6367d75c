"""Optimizer and learning-rate schedules.

Adam with β = (0.9, 0.98), ε = 1e-9 and the schedule of Vaswani et al. 2017 §5.3:
``lr = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)``; or linear warm-up + cosine decay
(Loshchilov & Hutter 2017). AdamW's decoupled weight decay applies to matrices only (not to biases,
norms or embeddings of dimension 1).

``optimizer="muon"``: Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers"; PyTorch's
``torch.optim.Muon``) orthogonalises the momentum of every hidden ``nn.Linear`` weight by Newton–Schulz
iterations; embeddings, the output projection, norms and biases stay with AdamW, as in the
modded-nanoGPT speedruns. ``adjust_lr_fn="match_rms_adamw"`` scales Muon's update to AdamW's RMS, so
one learning rate (and schedule) drives both. On CPU the Newton–Schulz iteration runs in float32
(:class:`Muon`): PyTorch runs it in bfloat16, which CPUs without bf16 matmul units (AVX2) execute
~20x slower than float32 — it was 30% of a small char-LM's training step on this machine.
"""

from __future__ import annotations

import math

import torch
import torch.optim._muon as _torch_muon
from torch import nn

from .config import TrainConfig


def noam_lr(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """The paper's schedule at optimizer step ``step`` (1-based): linear warm-up, then ∝ step^-0.5."""
    step = max(step, 1)
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def cosine_lr(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``min_ratio · peak``."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def lr_at(step: int, cfg: TrainConfig, d_model: int) -> float:
    """Learning rate for the optimizer step that follows ``step`` completed steps."""
    if cfg.schedule == "noam":
        return noam_lr(step + 1, d_model, cfg.warmup_steps, cfg.lr)
    if cfg.schedule == "cosine":
        return cosine_lr(step, cfg.lr, cfg.warmup_steps, cfg.schedule_steps or cfg.steps, cfg.min_lr_ratio)
    return cfg.lr


def newton_schulz_fp32(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                       eps: float) -> torch.Tensor:
    """PyTorch's quintic Newton–Schulz orthogonalisation (``torch.optim._muon``; Jordan et al. 2024),
    computed in float32 instead of bfloat16. ``grad``: (A, B) -> (A, B), singular values ~ 1."""
    a, b, c = ns_coefficients
    tall = grad.size(0) > grad.size(1)
    x = grad.float().T if tall else grad.float()  # (short, long): the Gram matrix is the small one
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(ns_steps):
        gram = x @ x.T  # (short, short)
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(grad.dtype)


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` with its Newton–Schulz step in float32 for CPU parameters (see above)."""

    @torch.no_grad()
    def step(self, closure=None):
        on_cpu = all(p.device.type == "cpu" for g in self.param_groups for p in g["params"])
        original = getattr(_torch_muon, "_zeropower_via_newtonschulz", None)
        if not on_cpu or original is None:  # GPUs have fast bf16 matmuls: PyTorch's own path
            return super().step(closure)
        _torch_muon._zeropower_via_newtonschulz = newton_schulz_fp32  # looked up at call time
        try:
            return super().step(closure)
        finally:
            _torch_muon._zeropower_via_newtonschulz = original


class ChainedOptimizer:
    """Several optimizers over disjoint parameters, seen as one: ``param_groups`` is their
    concatenation (the trainer sets each group's lr) and ``state_dict`` is one ordinary optimizer
    state dict (parameter indices numbered across all of them), so checkpoints need no special case."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for opt in self.optimizers:
            sd = opt.state_dict()
            state.update({offset + i: s for i, s in sd["state"].items()})
            groups += [{**g, "params": [offset + i for i in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        groups, offset = list(sd["param_groups"]), 0
        for opt in self.optimizers:
            mine, groups = groups[:len(opt.param_groups)], groups[len(opt.param_groups):]
            ids = {i for g in mine for i in g["params"]}
            opt.load_state_dict({
                "state": {int(i) - offset: sd["state"][i] for i in sd["state"] if int(i) in ids},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in mine],
            })
            offset += len(ids)


def _distinct_trainable(params) -> list[nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _adamw(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=0.0, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """Weights of the ``nn.Linear`` layers inside the blocks: not embeddings, not the output projection
    (tied to the embedding in the paper's models)."""
    io = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    output = getattr(model, "output", None)
    if isinstance(output, nn.Linear):
        io.add(id(output.weight))
    return _distinct_trainable(m.weight for m in model.modules()
                               if isinstance(m, nn.Linear) and id(m.weight) not in io)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer | ChainedOptimizer:
    """AdamW over distinct parameters (decay only on >= 2-dim ones), or Muon + AdamW (see above)."""
    params = _distinct_trainable(model.parameters())
    if cfg.optimizer == "adamw":
        return _adamw(params, cfg)
    hidden = hidden_matrices(model)
    ids = {id(p) for p in hidden}
    muon = Muon(hidden, lr=0.0, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw")
    return ChainedOptimizer(muon, _adamw([p for p in params if id(p) not in ids], cfg))
