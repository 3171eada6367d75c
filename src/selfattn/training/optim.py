"""Optimizer and learning-rate schedules.

Adam with β = (0.9, 0.98), ε = 1e-9 and the schedule of Vaswani et al. 2017 §5.3:
``lr = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)``; or linear warm-up + cosine decay
(Loshchilov & Hutter 2017). AdamW's decoupled weight decay applies to matrices only (not to biases,
norms or embeddings of dimension 1).

``optimizer="muon"``: Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers"; PyTorch's
``torch.optim.Muon``) orthogonalises the momentum of every hidden ``nn.Linear`` weight by Newton–Schulz
iterations; embeddings, the output projection, norms and biases stay with AdamW, as in the
modded-nanoGPT speedruns. ``adjust_lr_fn="match_rms_adamw"`` scales Muon's update to AdamW's RMS, so
one learning rate (and schedule) drives both. :class:`Muon` is ``torch.optim.Muon`` (its parameter groups,
state and state_dict) with two changes, made in its own ``step`` rather than by patching PyTorch: on CPUs
without bf16 matmul units (AVX2) the Newton–Schulz iteration runs in float32 — PyTorch's bfloat16 ran ~20x
slower there, 30% of a small char-LM's training step — and matrices of one shape are orthogonalised
together as one batch. A test checks that with ``stack=False, ns_dtype=torch.bfloat16`` the step equals
PyTorch's bit for bit.
"""

from __future__ import annotations

import math

import torch
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


def newton_schulz(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """PyTorch's quintic Newton–Schulz orthogonalisation (Jordan et al. 2024; ``torch.optim.Muon``) computed in
    ``dtype`` (PyTorch's own: bfloat16). ``grad``: (A, B) -> (A, B), singular values ~ 1; or a stack
    (S, A, B) -> (S, A, B), every matrix orthogonalised on its own by batched products."""
    a, b, c = ns_coefficients
    tall = grad.size(-2) > grad.size(-1)
    x = grad.to(dtype).mT if tall else grad.to(dtype)  # (..., short, long): the Gram matrix is the small one
    if x.ndim == 2:  # PyTorch's operations exactly (a test compares bit for bit)
        x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
        for _ in range(ns_steps):
            gram = x @ x.T  # (short, short)
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    else:
        x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # (S, short, long), per matrix
        for _ in range(ns_steps):
            gram = x @ x.mT  # (S, short, short)
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def default_ns_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 (PyTorch's choice) on GPUs and on CPUs with bf16 units; float32 on other CPUs, where bf16
    products run ~20x slower (measured on an AVX2 EPYC)."""
    if device.type != "cpu":
        return torch.bfloat16
    from ..attention.cpu_kernel import cpu_has_bf16_units

    return torch.bfloat16 if cpu_has_bf16_units() else torch.float32


def newton_schulz_fp32(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                       eps: float) -> torch.Tensor:
    """:func:`newton_schulz` in float32, returned in ``grad``'s dtype."""
    return newton_schulz(grad, ns_coefficients, ns_steps, eps, torch.float32).to(grad.dtype)


def _muon_lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix learning-rate scale for an (A, B) weight."""
    a, b = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1.0, a / b))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(a, b))
    return 1.0


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` whose Newton–Schulz step runs in ``ns_dtype`` (by default :func:`default_ns_dtype`)
    and, with ``stack=True``, once for all matrices of one shape (transposed to (short, long)) as a batch: a
    small model's 128 x 128 products are overhead-bound one by one (12 matrices of a 2-layer d-128 char LM:
    14.5 ms a step in separate bf16 products, 7.5 ms stacked; measured on a 2-core Xeon with AMX).
    Same update rule, state keys and state_dict; ``stack=False, ns_dtype=torch.bfloat16`` is PyTorch's step
    bit for bit (tested)."""

    def __init__(self, params, *, ns_dtype: torch.dtype | None = None, stack: bool = True, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype, self.stack = ns_dtype, stack

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            shapes: dict[tuple, list[tuple[nn.Parameter, torch.Tensor]]] = {}  # (short, long) shape -> updates
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.ndim != 2:
                    raise ValueError(f"Muon updates 2-D matrices only, got a gradient of shape {tuple(p.grad.shape)}")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                key = (tuple(sorted(p.shape)), p.device, p.dtype) if self.stack else (id(p),)
                shapes.setdefault(key, []).append((p, update))
            for items in shapes.values():
                params, updates = zip(*items)
                for p, update in zip(params, self._orthogonalise(group, list(updates))):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update.to(p.dtype), alpha=-group["lr"] * _muon_lr_ratio(group["adjust_lr_fn"], p.shape))
        return loss

    def _orthogonalise(self, group: dict, updates: list[torch.Tensor]) -> list[torch.Tensor]:
        """Newton–Schulz of every update, matrices of one (short, long) shape stacked into one batch."""
        dtype = self.ns_dtype or default_ns_dtype(updates[0].device)
        args = (group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
        if len(updates) == 1:
            return [newton_schulz(updates[0], *args)]
        tall = [u.size(0) > u.size(1) for u in updates]
        stacked = torch.stack([u.T if t else u for u, t in zip(updates, tall)])  # (S, short, long)
        out = newton_schulz(stacked, *args).unbind(0)
        return [o.T if t else o for o, t in zip(out, tall)]


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
    # PyTorch's fused kernel (one pass over all tensors) where it has one: the default per-tensor loop took
    # 33 ms a step for the `small` preset's 131 tensors, fused 9 ms (2-core Xeon); same update rule and state
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    return torch.optim.AdamW(groups, lr=0.0, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)


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
