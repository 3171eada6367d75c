"""The recipe's pieces against their definitions: schedules, label smoothing, accumulation, overrides."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

import selfattn
from selfattn.training import TrainConfig, Trainer, apply_overrides, cosine_lr, lr_at, noam_lr, smoothed_cross_entropy
from selfattn.training.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from helpers import PoolTask, tiny_model


def test_noam_schedule_matches_the_paper_formula():
    d, w = 512, 4000
    for step in (1, 10, 3999, 4000, 4001, 10**5):
        assert noam_lr(step, d, w) == pytest.approx(d**-0.5 * min(step**-0.5, step * w**-1.5), rel=1e-12)
    peak = max(noam_lr(s, d, w) for s in range(1, 20000, 7))
    assert peak == pytest.approx(noam_lr(w, d, w), rel=1e-3) and noam_lr(w, d, w) == pytest.approx((d * w) ** -0.5)
    cfg = TrainConfig(schedule="noam", warmup_steps=w, lr=2.0)
    assert lr_at(0, cfg, d) == pytest.approx(2.0 * noam_lr(1, d, w))  # step s uses the (s+1)-th value


def test_adamw_is_fused_and_equals_pytorchs_loop():
    """build_optimizer's AdamW runs PyTorch's fused kernel; its steps equal the per-tensor loop's (float32
    rounding of the same update rule) with decay on matrices only."""
    from selfattn.data import SyntheticTask
    from selfattn.training import build_optimizer

    model = tiny_model(SyntheticTask("reverse", max_len=6, val_size=8))
    twin = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    start = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(weight_decay=0.1)
    ours = build_optimizer(model, cfg)
    assert ours.defaults["fused"]
    groups = [{"params": [q for p, q in zip(model.parameters(), twin) if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [q for p, q in zip(model.parameters(), twin) if p.dim() < 2], "weight_decay": 0.0}]
    loop = torch.optim.AdamW(groups, lr=0.0, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=False)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for opt in (ours, loop):
            for group in opt.param_groups:
                group["lr"] = 3e-3
        for p, q in zip(model.parameters(), twin):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        ours.step()
        loop.step()
    eps32 = torch.finfo(torch.float32).eps
    for p, q, p0 in zip(model.parameters(), twin, start):
        assert (p.detach() - p0).abs().max() > 1e-3  # 3 steps of lr 3e-3 moved every tensor
        torch.testing.assert_close(p.detach(), q.detach(), rtol=8 * eps32, atol=3e-3 * 8 * eps32)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    from selfattn.data import SyntheticTask
    from selfattn.training import build_optimizer

    model = tiny_model(SyntheticTask("reverse", max_len=6, val_size=8))
    muon, adamw = build_optimizer(model, TrainConfig(optimizer="muon")).optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    blocks = [m for name, m in model.named_modules() if ".layers." in name and isinstance(m, torch.nn.Linear)]
    assert in_muon == {id(m.weight) for m in blocks} and blocks  # every q/k/v/out and FFN matrix of every layer
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    assert embeddings and embeddings <= in_adamw and id(model.output.weight) in in_adamw  # tied output too
    assert in_muon.isdisjoint(in_adamw) and in_muon | in_adamw == {id(p) for p in model.parameters()}


def test_float32_newton_schulz_matches_pytorchs_and_orthogonalises():
    import torch.optim._muon as torch_muon

    from selfattn.training.optim import newton_schulz_fp32

    coef, steps, eps = (3.4445, -4.775, 2.0315), 5, 1e-7
    g = torch.Generator().manual_seed(0)
    for shape in [(32, 128), (128, 32), (64, 64)]:
        grad = torch.randn(*shape, generator=g, dtype=torch.float64)
        ours = newton_schulz_fp32(grad, coef, steps, eps)
        theirs = torch_muon._zeropower_via_newtonschulz(grad, coef, steps, eps).double()  # bf16 inside
        # PyTorch rounds to bf16 (unit roundoff 2^-8) the input and 3 products in each of 5 iterations:
        # at most 16 roundings of relative size 2^-8 -> 0.0625 (observed ~0.016)
        assert (ours - theirs).norm() / ours.norm() < 16 * 2**-8
        sv = torch.linalg.svdvals(ours)  # the quintic maps singular values into about [0.5, 1.5]
        assert sv.min() > 0.3 and sv.max() < 1.6, sv


def test_muon_step_equals_pytorchs_with_bf16_newton_schulz():
    # our step is PyTorch's update rule (momentum, Nesterov, decay, lr scale, state keys); only the
    # Newton–Schulz dtype differs on CPU, so with ns_dtype=bfloat16 it must match torch.optim.Muon exactly
    from selfattn.training.optim import Muon

    g = torch.Generator().manual_seed(0)
    w0 = [torch.randn(*s, generator=g) for s in [(16, 48), (48, 16)]]
    grads = [[torch.randn(*w.shape, generator=g) for w in w0] for _ in range(3)]
    ours_p = [torch.nn.Parameter(w.clone()) for w in w0]
    theirs_p = [torch.nn.Parameter(w.clone()) for w in w0]
    kw = {"lr": 0.02, "weight_decay": 0.1, "adjust_lr_fn": "match_rms_adamw"}
    ours, theirs = Muon(ours_p, ns_dtype=torch.bfloat16, stack=False, **kw), torch.optim.Muon(theirs_p, **kw)
    for step in grads:
        for p, q, gr in zip(ours_p, theirs_p, step):
            p.grad, q.grad = gr.clone(), gr.clone()
        ours.step()
        theirs.step()
    for p, q in zip(ours_p, theirs_p):
        assert torch.equal(p, q)
    assert ours.state_dict()["state"][0].keys() == theirs.state_dict()["state"][0].keys()


def test_stacked_muon_step_equals_one_matrix_at_a_time():
    """Matrices of one (short, long) shape, tall and wide, orthogonalised as one batch: the same step as one by
    one (float64: only the products' summation order differs), and a lone shape takes the 2-D path."""
    from selfattn.training.optim import Muon, default_ns_dtype

    g = torch.Generator().manual_seed(1)
    shapes = [(16, 48), (48, 16), (16, 48), (16, 16), (20, 12)]
    w0 = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(*w.shape, generator=g, dtype=torch.float64) for w in w0] for _ in range(3)]
    params = {stack: [torch.nn.Parameter(w.clone()) for w in w0] for stack in (True, False)}
    kw = {"lr": 0.05, "weight_decay": 0.1, "adjust_lr_fn": "match_rms_adamw", "ns_dtype": torch.float64}
    opts = {stack: Muon(params[stack], stack=stack, **kw) for stack in (True, False)}
    for step in grads:
        for stack in (True, False):
            for p, gr in zip(params[stack], step):
                p.grad = gr.clone()
            opts[stack].step()
    for p, q, w in zip(params[True], params[False], w0):
        assert (p - w).abs().max() > 0.01  # the steps moved the weights
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    assert default_ns_dtype(torch.device("cuda")) == torch.bfloat16
    assert default_ns_dtype(torch.device("cpu")) in (torch.bfloat16, torch.float32)


def test_cosine_schedule_endpoints_and_monotone_decay():
    peak, w, total = 1e-3, 10, 110
    assert cosine_lr(0, peak, w, total, 0.1) == pytest.approx(peak / w)
    assert cosine_lr(w - 1, peak, w, total, 0.1) == pytest.approx(peak)
    assert cosine_lr(w, peak, w, total, 0.1) == pytest.approx(peak)
    assert cosine_lr(w + 50, peak, w, total, 0.1) == pytest.approx(peak * (0.1 + 0.9 * 0.5))
    assert cosine_lr(total, peak, w, total, 0.1) == pytest.approx(0.1 * peak)
    values = [cosine_lr(s, peak, w, total, 0.1) for s in range(w, total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_label_smoothed_loss_equals_its_definition_in_float64():
    torch.manual_seed(0)
    V, eps = 7, 0.1
    logits = torch.randn(2, 5, V, dtype=torch.float64)
    targets = torch.randint(0, V, (2, 5))
    targets[1, 3:] = -100
    logp = logits.log_softmax(-1)
    ref = 0.0
    for i in range(2):
        for j in range(5):
            t = int(targets[i, j])
            if t == -100:
                continue
            q = torch.full((V,), eps / V, dtype=torch.float64)
            q[t] += 1 - eps
            ref += float(-(q * logp[i, j]).sum())
    got = smoothed_cross_entropy(logits.float(), targets, eps)
    assert float(got) == pytest.approx(ref, rel=64 * torch.finfo(torch.float32).eps)
    with pytest.raises(ValueError, match="disagree"):
        smoothed_cross_entropy(logits, targets[:, :4], eps)


def test_gradient_accumulation_equals_one_big_batch():
    task = PoolTask()
    common = dict(steps=2, schedule="constant", lr=0.1, eps=1.0, clip_grad_norm=0.0, eval_every=0, ckpt_every=0,
                  progress=False, amp="none")  # float32: the tolerances below are float32 rounding
    a, b = tiny_model(task), tiny_model(task)
    la = Trainer(a, task, TrainConfig(batch_size=8, accum_steps=2, **common)).fit().losses
    lb = Trainer(b, task, TrainConfig(batch_size=16, accum_steps=1, **common)).fit().losses
    eps32 = torch.finfo(torch.float32).eps
    assert la == pytest.approx(lb, rel=1e3 * eps32)
    # rounding of the reordered sums, relative to the largest weight (biases start at 0, so per-tensor
    # scales would be meaningless)
    scale = max(float(q.detach().abs().max()) for q in b.parameters())
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=100 * eps32 * scale)


def test_training_learns_and_writes_metrics_and_png(tmp_path):
    task = PoolTask(pool_size=64)
    cfg = TrainConfig(steps=30, batch_size=16, schedule="cosine", lr=3e-3, warmup_steps=5, eval_every=15,
                      log_every=5, progress=False)
    result = Trainer(tiny_model(task), task, cfg, tmp_path).fit()
    assert result.evals[-1]["loss"] < result.evals[0]["loss"]
    assert sum(result.losses[-5:]) < sum(result.losses[:5])
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if "split" not in r] == [5, 10, 15, 20, 25, 30]
    assert all({"loss", "lr", "tok_s"} <= r.keys() for r in records if "split" not in r)
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bf16_autocast_step_matches_float32_within_bf16_rounding():
    task = PoolTask(pool_size=16)
    cfg = dict(steps=1, batch_size=8, schedule="constant", lr=1e-3, eval_every=0, ckpt_every=0, progress=False)
    fp32 = Trainer(tiny_model(task), task, TrainConfig(amp="none", **cfg)).fit().losses[0]
    bf16 = Trainer(tiny_model(task), task, TrainConfig(amp="bf16", **cfg)).fit().losses[0]
    # bf16 keeps 8 significand bits (eps 2^-8 relative per rounding); the loss of an untrained model is
    # ~log V and sums O(10) roundings through 2 layers, so 16 eps bounds it
    assert bf16 == pytest.approx(fp32, rel=16 * 2**-8) and bf16 != fp32


def test_early_stopping_stops_after_patience():
    task = PoolTask(pool_size=16)
    cfg = TrainConfig(steps=200, batch_size=8, schedule="constant", lr=1e-9, eval_every=2, early_stop_patience=2,
                      ckpt_every=0, progress=False, label_smoothing=0.0)
    result = Trainer(tiny_model(task), task, cfg).fit()
    assert result.stopped_early and result.step < 20


def test_overrides_and_config_errors():
    m, t = apply_overrides(selfattn.preset("tiny"), TrainConfig(), ["d_model=128", "lr=0.5", "amp=bf16",
                                                                    "train.compile=true", "model.dropout=0.2"])
    assert (m.d_model, t.lr, t.amp, t.compile, m.dropout) == (128, 0.5, "bf16", True, 0.2)
    with pytest.raises(ValueError, match="not a unique field"):
        apply_overrides(m, t, ["nope=1"])
    with pytest.raises(ValueError, match="expected a int"):
        apply_overrides(m, t, ["steps=ten"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(m, t, ["steps"])
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    assert math.isfinite(TrainConfig().lr)


@pytest.mark.parametrize("flags, expected", [({"avx512f", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16"),
                                             ({"avx2", "fma"}, "none")])
def test_amp_auto_is_bf16_only_with_bf16_units_and_recorded_resolved(tmp_path, monkeypatch, flags, expected):
    import json

    from selfattn.attention import cpu_kernel
    from selfattn.training.forward import resolve_amp

    monkeypatch.setattr(cpu_kernel, "cpu_flags", lambda: set(flags))
    assert TrainConfig().amp == "auto"
    task = PoolTask(pool_size=16)
    trainer = Trainer(tiny_model(task), task, TrainConfig(steps=1, batch_size=4, eval_every=0, progress=False),
                      tmp_path)
    assert trainer.cfg.amp == expected and f"amp {expected} (auto" in trainer.amp_reason
    trainer.fit()
    assert json.loads((tmp_path / "config.json").read_text())["train"]["amp"] == expected  # resume is exact
    assert resolve_amp("none", torch.device("cpu")) == ("none", "amp none (set explicitly)")
    assert resolve_amp("auto", torch.device("cuda"))[0] == "none"  # GPUs: not measured, explicit bf16 only
    with pytest.raises(ValueError, match=r"amp must be one of \('auto', 'none', 'bf16'\), got 'fp16'"):
        TrainConfig(amp="fp16")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_smoothed_cross_entropy_value_and_gradient_vs_float64_definition(dtype, monkeypatch):
    """The blockwise loss (several row blocks, the last one partial, ignored rows) against autograd through the
    float64 definition."""
    from selfattn.training import loss as loss_module

    V, eps, ROWS = 50, 0.1, 70
    monkeypatch.setattr(loss_module, "BLOCK", 64 * V)  # 64-row blocks: 210 rows are blocks of 64, 64, 64, 18
    assert loss_module.block_rows(V) == 64 and loss_module.block_rows(10**9) == 1
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, ROWS, V, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (3, ROWS), generator=g)
    targets[1, 5:40] = -100
    z = logits.detach().double().requires_grad_()  # the same (rounded) values, float64 from here on
    keep = targets != -100
    q = torch.full((3, ROWS, V), eps / V, dtype=torch.float64)
    q.scatter_add_(-1, targets.clamp(min=0)[..., None], torch.full((3, ROWS, 1), 1 - eps, dtype=torch.float64))
    ref = (-(q * z.log_softmax(-1)).sum(-1) * keep).sum()
    ref.backward()
    got = smoothed_cross_entropy(logits, targets, eps)
    got.backward()
    # float64: rounding only (the row sums over V). bf16 logits: float32 statistics over V terms per row and a
    # sum of 3·ROWS rows, then the gradient rounded once to bf16 (relative 2^-8 of each entry).
    stat_eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=8 * V * stat_eps)
    grad_tol = 8 * V * stat_eps if dtype == torch.float64 else 2**-8
    torch.testing.assert_close(logits.grad.double(), z.grad, rtol=grad_tol, atol=grad_tol * float(z.grad.abs().max()))
    assert logits.grad.dtype == dtype and not logits.grad[1, 5:40].any()  # ignored rows get no gradient
