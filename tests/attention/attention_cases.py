"""One attention call, run over every backend that serves it and compared with the definition.

A :class:`Case` holds float64 inputs (already representable in the dtype under test) and the call's
options; :func:`check_case` runs it through ``selfattn.attention(backend=...)`` for each backend whose
``supports`` accepts it, backpropagates one fixed upstream gradient, and compares output and
gradients (q, k, v, ALiBi slopes) with :func:`attention_definition.definition` in float64:

* non-finite entries must match: outputs by class (NaN, +inf, -inf), gradients by position (a
  gradient's NaN-vs-inf depends on summation order, its being non-finite does not);
* finite entries within ``C * (u_eff * M + s)``, s the dtype's subnormal spacing, M the sum of absolute terms of that entry
  (:func:`attention_definition.magnitudes`) and u_eff the rounding of the dtype plus float32's
  accumulation over d and m terms plus the logits' own rounding (C = 4 outputs, 8 gradients).

Legend: b batch, h query heads, g kv heads, n queries, m keys, d q/k head dim, e v head dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from attention_definition import definition, magnitudes
from torch import Tensor

import selfattn
from selfattn.attention import BACKENDS
from selfattn.attention.spec import validate_call

UNIT = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
SKIP = {"triton"}  # CUDA only; its semantics are checked under the interpreter in test_triton.py


@dataclass
class Case:
    """float64 tensors whose values the dtype represents exactly; mask is bool or floating (float64)."""

    q: Tensor  # (b, h, n, d)
    k: Tensor  # (b, g, m, d)
    v: Tensor  # (b, g, m, e)
    dtype: torch.dtype = torch.float32
    mask: Tensor | None = None
    causal: bool = False
    window: tuple[int | None, int | None] | None = None
    alibi_slopes: Tensor | None = None  # (h,)
    slopes_grad: bool = False
    scale: float | None = None
    dout: Tensor | None = None  # (b, h, n, e); default: drawn from a fixed seed
    segment_ids: tuple[Tensor, Tensor] | None = None  # (q_seg (b, n), k_seg (b, m)) integer
    name: str = ""
    options: dict = field(default_factory=dict)

    def describe(self) -> str:
        mask = None if self.mask is None else f"{self.mask.dtype} {tuple(self.mask.shape)}"
        return (f"{self.name} q{tuple(self.q.shape)} k{tuple(self.k.shape)} v{tuple(self.v.shape)} "
                f"{self.dtype} mask={mask} causal={self.causal} window={self.window} "
                f"alibi={self.alibi_slopes is not None}(grad={self.slopes_grad}) "
                f"segments={None if self.segment_ids is None else [t.tolist() for t in self.segment_ids]}")


def representable(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x rounded to dtype and back to float64 (so the definition sees exactly the backend's inputs)."""
    return x.to(dtype).to(torch.float64)


def _kwargs(case: Case, mask: Tensor | None, slopes: Tensor | None) -> dict:
    return dict(mask=mask, causal=case.causal, window=case.window, alibi_slopes=slopes, scale=case.scale,
                segment_ids=case.segment_ids)


def _mask_in(case: Case, dtype: torch.dtype) -> Tensor | None:
    if case.mask is None or case.mask.dtype == torch.bool:
        return case.mask
    return case.mask.to(torch.float32 if dtype != torch.float64 else dtype)


def backends_for(case: Case) -> list[str]:
    """Registered backends (but CUDA-only ones) that accept the case's call (segment ids as each gets them)."""
    q, k, v = (t.to(case.dtype, copy=True).requires_grad_() for t in (case.q, case.k, case.v))
    slopes = None if case.alibi_slopes is None else case.alibi_slopes.float().requires_grad_(case.slopes_grad)
    call = validate_call(q, k, v, dropout_p=0.0, return_weights=False,
                         **_kwargs(case, _mask_in(case, case.dtype), slopes))
    return [name for name, b in sorted(BACKENDS.items()) if name not in SKIP and b.accepts(call) is None]


def _expected(case: Case):
    q, k, v = (t.clone().requires_grad_() for t in (case.q, case.k, case.v))
    slopes = None if case.alibi_slopes is None else case.alibi_slopes.clone().requires_grad_(case.slopes_grad)
    score = torch.float64 if case.dtype == torch.float64 else torch.float32
    out = definition(q, k, v, score_dtype=score, **_kwargs(case, case.mask, slopes))
    if out.requires_grad:
        out.backward(case.dout)
    grads = [torch.zeros_like(t) if t.grad is None else t.grad for t in (q, k, v)]
    if case.slopes_grad:
        grads.append(torch.zeros_like(slopes) if slopes.grad is None else slopes.grad)
    return out.detach(), grads


def _actual(case: Case, backend: str):
    q, k, v = (t.to(case.dtype, copy=True).requires_grad_() for t in (case.q, case.k, case.v))
    slopes = None if case.alibi_slopes is None else case.alibi_slopes.float().requires_grad_(case.slopes_grad)
    out = selfattn.attention(q, k, v, backend=backend, **_kwargs(case, _mask_in(case, case.dtype), slopes))
    if out.dtype != case.dtype or out.shape != case.dout.shape:
        raise AssertionError(f"{backend}: output {out.dtype} {tuple(out.shape)}, expected {case.dtype} "
                             f"{tuple(case.dout.shape)}")
    out.backward(case.dout.to(case.dtype))
    grads = [torch.zeros_like(t) if t.grad is None else t.grad for t in (q, k, v)]
    if case.slopes_grad:
        grads.append(torch.zeros_like(slopes) if slopes.grad is None else slopes.grad)
    return out.detach().to(torch.float64), [g.to(torch.float64) for g in grads]


def _compare(what: str, got: Tensor, want: Tensor, bound: Tensor, by_class: bool) -> str | None:
    classes = [torch.isnan, torch.isposinf, torch.isneginf] if by_class else [lambda x: ~torch.isfinite(x)]
    for cls in classes:
        wrong = cls(got) != cls(want)
        if wrong.any():
            i = tuple(wrong.nonzero()[0].tolist())
            return f"{what}{list(i)}: got {got[i].item()}, expected {want[i].item()} (non-finite pattern)"
    fin = torch.isfinite(want)
    err = torch.where(fin, (got - want).abs(), 0.0)
    excess = err - bound
    if (excess > 0).any():
        i = tuple(int(x) for x in torch.unravel_index(excess.argmax(), excess.shape))
        return (f"{what}{list(i)}: got {got[i].item():.6g}, expected {want[i].item():.6g}, error "
                f"{err[i].item():.3g} > bound {bound[i].item():.3g}")
    return None


def check_case(case: Case, backends: list[str] | None = None) -> list[str]:
    """Run the case over ``backends`` (default: every backend that serves it); returns the names run.
    Raises AssertionError naming the backend, the entry and the bound on the first mismatch."""
    b, h, n, _ = case.q.shape
    if case.dout is None:
        gen = torch.Generator().manual_seed(1234)
        case = replace(case, dout=representable(torch.randn(b, h, n, case.v.shape[3], generator=gen), case.dtype))
    backends = backends_for(case) if backends is None else backends
    want, want_grads = _expected(case)
    (m_out, *m_grads), logit = magnitudes(case.q, case.k, case.v, case.dout, **_kwargs(case, case.mask, case.alibi_slopes))
    f32 = UNIT[torch.float64] if case.dtype == torch.float64 else UNIT[torch.float32]
    d, m = case.q.shape[3], case.k.shape[2]
    u_eff = UNIT[case.dtype] + (d + m + 2) * f32 + 2 * (d + 2) * f32 * logit
    tiny = torch.finfo(case.dtype).tiny * torch.finfo(case.dtype).eps  # spacing of subnormals: results in
    # the dtype (gradients of float16 reach its subnormal range) carry that much absolute rounding
    names = ["dq", "dk", "dv", "dslopes"]
    errors = []
    for backend in backends:
        got, grads = _actual(case, backend)
        problems = [_compare("out", got, want, 4 * (u_eff * m_out + tiny), by_class=True)]
        for name, g, w, mg in zip(names, grads, want_grads, m_grads if case.slopes_grad else m_grads[:3]):
            u = u_eff + (UNIT[torch.float32] if name == "dslopes" else 0.0)  # slopes (and grad) are float32
            problems.append(_compare(name, g, w, 8 * (u * mg + tiny), by_class=False))
        errors += [f"{backend}: {p}" for p in problems if p is not None]
    if errors:
        raise AssertionError(f"{case.describe()}\n" + "\n".join(errors))
    return backends
