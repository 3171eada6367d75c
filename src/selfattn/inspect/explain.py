"""``selfattn explain``: one attention head of a real selfattn model, step by step, on real numbers.

Legend: n tokens (queries = keys in self-attention), c model dim, h heads, d = c / h head dim.

The numbers are read out of the model while it runs (forward hooks and
:attr:`MultiHeadAttention.observer`), then every step is recomputed in the open:

    x = embed(tokens)·√c + PE            (Vaswani et al., 2017, §3.4, §3.5)
    Q, K, V = x W_Q, x W_K, x W_V         (head slice of each projection, §3.2.2)
    scores = Q Kᵀ / √d  (+ mask/bias)     (§3.2.1)
    weights = softmax(scores)             rows sum to 1
    head = weights · V                    one head's output
    out = concat(heads) W_O;  x + out     residual connection (then LayerNorm when post-norm)

and the recomputed result is checked against the model's own output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor

from ..attention import alibi_bias, structural_mask
from .capture import _run, attention_modules, available_kinds, check_softmax


@dataclass
class ExplainOptions:
    layer: int = 0  # the paper's first layer reads embeddings + positions directly
    head: int = 0
    kind: str | None = None  # "encoder" | "decoder"; None = the model's first self-attention
    max_cols: int = 8  # wider tables are cut with a "…" column to stay readable
    max_rows: int = 16  # longer tables (one row per token) are cut with a "…" row, for long inputs


@dataclass
class Step:
    title: str
    why: str
    values: Tensor  # (rows, cols)
    rows: list[str]
    cols: list[str] = field(default_factory=list)


def _grab(model, inputs, kind: str, layer: int) -> dict:
    """Run the model once; keep the layer's residual input/output and what attention() sees."""
    mods = attention_modules(model, kind)
    stack = model.encoder if kind == "encoder" else model.decoder
    lay = stack.layers[layer]
    sub = lay.sub_attn if kind == "encoder" else lay.sub_self
    got: dict = {}
    hooks = [
        sub.register_forward_hook(lambda m, a, out: got.update(x=a[0], residual=out[0])),
        mods[layer].register_forward_pre_hook(lambda m, a: got.update(x_in=a[0])),
    ]
    emb = getattr(model, "src_embed", None) if kind == "encoder" else getattr(model, "tgt_embed", None)
    emb = emb if emb is not None else model.embed
    hooks.append(emb.register_forward_hook(lambda m, a, out: None if "emb_io" in got else got.update(emb_io=(a[0], out))))
    got["emb_module"] = emb
    mods[layer].observer = lambda m, q, k, **kw: got.update(q=q, k=k, **kw)
    try:
        with torch.no_grad():
            _run(model, inputs, kind)
    finally:
        mods[layer].observer = None
        for hk in hooks:
            hk.remove()
    return got


def explain_steps(model, inputs, labels: list[str], opts: ExplainOptions = ExplainOptions()) -> tuple[list[Step], dict]:
    """The walkthrough of ``opts.head`` of self-attention ``opts.layer`` as a list of steps.

    ``inputs`` are the model's arguments (see :func:`capture_attention`); ``labels`` name the n
    tokens of the inspected sequence. Returns the steps and a dict of the tensors (batch 0).
    """
    kinds = [k for k in available_kinds(model) if k != "cross"]
    kind = opts.kind or (kinds[0] if kinds else "encoder")
    if kind not in kinds:
        raise ValueError(f"explain walks through self-attention; kind must be one of {kinds}, got {kind!r}")
    mods = attention_modules(model, kind)
    if not 0 <= opts.layer < len(mods):
        raise ValueError(f"layer must be in [0, {len(mods)}) for this model, got {opts.layer}")
    check_softmax(mods, [opts.layer], kind)
    attn = mods[opts.layer]
    h, g, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
    if not 0 <= opts.head < h:
        raise ValueError(f"head must be in [0, {h}) for this model, got {opts.head}")
    was = model.training
    model.eval()
    try:
        got = _grab(model, inputs, kind, opts.layer)
    finally:
        model.train(was)
    cfg = model.cfg
    x_in = got["x_in"][0].double()  # (n, c) what the attention sublayer reads
    n = x_in.shape[0]
    if len(labels) != n:
        raise ValueError(f"labels must name the {n} tokens, got {len(labels)}")
    heads = [_one_head(attn, x_in, i, got) for i in range(h)]
    concat = torch.cat([hh["head_out"] for hh in heads], dim=1)  # (n, h*d) heads side by side
    out = concat @ attn.out_proj.weight.double().T  # (n, c)
    if attn.out_proj.bias is not None:
        out = out + attn.out_proj.bias.double()
    x = got["x"][0].double()  # (n, c) residual stream entering the sublayer
    layer = (model.encoder if kind == "encoder" else model.decoder).layers[opts.layer]
    sub = layer.sub_attn if kind == "encoder" else layer.sub_self
    residual = x + out
    if not cfg.norm_first:  # post-norm (the paper): LayerNorm(x + Sublayer(x)), in the model's dtype
        with torch.no_grad():
            residual = sub.norm(residual.to(got["x"].dtype)).double()
    tensors = dict(embedded=got["emb_io"][1][0].double(), x=x, x_in=x_in, **heads[opts.head],
                   sublayer=out, residual=residual, model_residual=got["residual"][0].double())
    tensors["ids"] = got["emb_io"][0][0]  # (n,) token ids
    emb = got["emb_module"]
    with torch.no_grad():
        tensors["token_emb"] = (emb.token(tensors["ids"]) * emb.scale).double()  # (n, c)
        tensors["pos_enc"] = emb.positions(n).double() if emb.positions is not None else None  # (n, c)
    steps = _describe(model, kind, opts, tensors, labels, d, h, g)
    return steps, tensors


def _one_head(attn, x_in: Tensor, head: int, got: dict) -> dict:
    """Every intermediate of one head in float64, from the sublayer input x_in (n, c)."""
    h, g, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
    kv = head // (h // g)  # the kv head this query head reads (grouped-query attention)
    n = x_in.shape[0]

    def proj(lin, i):  # one head's slice of a projection
        w = lin.weight.double()[i * d:(i + 1) * d]  # (d, c)
        b = lin.bias.double()[i * d:(i + 1) * d] if lin.bias is not None else 0.0
        return x_in @ w.T + b  # (n, d)

    with torch.no_grad():
        q, k, v = proj(attn.q_proj, head), proj(attn.k_proj, kv), proj(attn.v_proj, kv)
        qr, kr = q, k
        if attn.rope is not None:
            qr, kr = attn.rope(q[None, None])[0, 0], attn.rope(k[None, None])[0, 0]  # (n, d)
    scores = qr @ kr.T / d**0.5  # (n, n)
    bias = torch.zeros(n, n, dtype=torch.float64)
    allowed = torch.ones(n, n, dtype=torch.bool)
    mask = got.get("mask")
    if mask is not None:  # batch 0, this head: bool True = may attend, or an additive float bias
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))[0]  # (h|1, n|1, m)
        mask = mask[head if mask.shape[0] > 1 else 0].expand(n, n)  # (n, n)
        if mask.dtype == torch.bool:
            allowed &= mask
        else:
            bias = bias + mask.double()
    sm = structural_mask(n, n, causal=got["causal"], window=got["window"], device="cpu")
    if sm is not None:
        allowed &= sm
    if got.get("alibi_slopes") is not None:
        bias = bias + alibi_bias(got["alibi_slopes"], n, n)[0, head].double()
    masked = (scores + bias).masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(masked, dim=-1).nan_to_num(0.0)  # (n, n); a row with no key gets 0
    return dict(q=q, k=k, v=v, q_rot=qr, k_rot=kr, scores=scores, masked=masked, weights=weights,
                head_out=weights @ v)


def _describe(model, kind, opts, t, labels, d, h, g) -> list[Step]:
    cfg = model.cfg
    c = t["x"].shape[1]
    dims = [f"c{j}" for j in range(c)]
    hd = [f"d{j}" for j in range(d)]
    ids = t.get("ids")
    steps = [Step("1. tokens", f"the text as {len(labels)} tokens; each id picks a row of the embedding table",
                  ids[None, :], ["id"], labels)]
    pos = cfg.positional
    if opts.layer == 0:
        scaled = f" ×√{c}" if cfg.scale_embeddings else ""
        steps.append(Step(f"2a. token embeddings{scaled}", "a learned vector per token id; alone it says nothing about order",
                          t["token_emb"], labels, dims))
        if t["pos_enc"] is not None:
            steps.append(Step("2b. positional encodings", _pos_sentence(pos, c), t["pos_enc"], labels, dims))
            title = "2c. x = embedding + position"
            why = "the input of layer 0: what each token is, and where it is"
        else:
            title, why = "2c. x = embedding", _pos_sentence(pos, c)
        steps.append(Step(title, why, t["embedded"], labels, dims))
    else:
        steps.append(Step(f"2. input to layer {opts.layer}",
                          f"the output of layer {opts.layer - 1}: every token already mixed with the others",
                          t["x"], labels, dims))
    if cfg.norm_first:
        steps.append(Step("2d. LayerNorm(x)", "pre-norm: the sublayer reads a normalised copy of x", t["x_in"], labels, dims))
    gqa = f" (kv head {opts.head // (h // g)}, shared by {h // g} query heads)" if g != h else ""
    steps += [
        Step(f"3. queries Q = x·W_Q, head {opts.head}", f"what each token looks for: columns {opts.head * d}–{opts.head * d + d - 1} of the projection", t["q"], labels, hd),
        Step(f"4. keys K = x·W_K{gqa}", "what each token offers to be found by", t["k"], labels, hd),
        Step("5. values V = x·W_V", "what each token hands on when it is attended to", t["v"], labels, hd),
    ]
    if pos == "rope":
        steps.append(Step("5b. Q, K rotated (RoPE)", "each pair of dims turned by an angle ∝ position: q·k then depends on the offset", t["q_rot"], labels, hd))
    note = {"alibi": " + ALiBi's -slope·|i-j|", "t5": " + T5's learned relative bias"}.get(pos, "")
    masked_note = " ; -inf = may not attend (padding/causal/window)" if torch.isinf(t["masked"]).any() else ""
    steps += [
        Step(f"6. scores QKᵀ/√d_k{note}", f"similarity of every query (row) with every key (column), / √{d} keeps softmax soft{masked_note}", t["masked"], labels, labels),
        Step("7. softmax weights", "each row sums to 1: how much each token attends to each other token", t["weights"], labels, labels),
        Step(f"8. head {opts.head} output = weights·V", "each token becomes a weighted average of the values", t["head_out"], labels, hd),
        Step(f"9. all {h} heads concatenated ·W_O", "the heads' outputs side by side, mixed back to the model width", t["sublayer"], labels, dims),
        Step("10. residual x + attention" + ("" if cfg.norm_first else ", then LayerNorm"),
             "the sublayer only adds to its input; the stream goes on to the feed-forward sublayer", t["residual"], labels, dims),
    ]
    return steps


def _pos_sentence(pos: str, c: int) -> str:
    return {
        "sinusoidal": f"sin/cos of the position at {c // 2} frequencies (§3.5): attention alone ignores order",
        "learned": "a learned vector per position: attention alone ignores order",
        "rope": "no positions added here: RoPE rotates q and k by position instead",
        "alibi": "no positions added here: ALiBi penalises the scores by distance instead",
        "t5": "no positions added here: T5 adds a learned relative bias to the scores instead",
    }.get(pos, "this model has no positional information")


def _fmt(x: float | int, signed: bool = True) -> str:
    if isinstance(x, int):
        return str(x)
    if x == float("-inf"):
        return "[dim]-inf[/dim]"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def render_table(step: Step, max_cols: int, max_rows: int = 16) -> Table:
    """A rich table of a step; more than ``max_cols`` columns (``max_rows`` rows) are cut with a "…" column (row)."""
    t = Table(pad_edge=False)
    t.add_column("")
    vals = step.values.tolist()  # (rows, cols)
    cols = step.cols or [f"{j}" for j in range(len(vals[0]))]
    shown = cols[:max_cols]
    for name in shown:
        t.add_column(name, justify="right")
    if len(cols) > max_cols:
        t.add_column("…")
    is_weights = step.title.startswith("7.")
    for label, row in zip(step.rows[:max_rows], vals[:max_rows]):
        best = max(row) if is_weights else None
        cells = [f"[bold yellow]{_fmt(x, False)}[/bold yellow]" if x == best else _fmt(x, not is_weights)
                 for x in row[:max_cols]]
        t.add_row(label, *cells, *(["…"] if len(cols) > max_cols else []))
    if len(vals) > max_rows:
        t.add_row(f"… {len(vals) - max_rows} more", *(["…"] * (len(shown) + (len(cols) > max_cols))))
    return t


def explain(model, inputs, labels: list[str], opts: ExplainOptions = ExplainOptions(),
            console: Console | None = None) -> dict:
    """Print the walkthrough to ``console`` (rich); return the tensors of every step."""
    console = console or Console()
    steps, tensors = explain_steps(model, inputs, labels, opts)
    cfg = model.cfg
    console.print(f"[bold]Self-attention, step by step[/bold]: {type(model).__name__} "
                  f"(c = {cfg.d_model}, {cfg.num_heads} heads of d_k = {cfg.head_dim}, {cfg.positional} positions); "
                  f"layer {opts.layer}, head {opts.head}")
    for step in steps:  # the step, one line of plain explanation, then its numbers
        console.print(f"\n[bold cyan]{step.title}[/bold cyan] — [italic]{step.why}[/italic]")
        console.print(render_table(step, opts.max_cols, opts.max_rows))
    err = (tensors["residual"] - tensors["model_residual"]).abs().max().item()
    console.print(f"check: step 10 equals the model's own sublayer output (max |difference| {err:.1e})")
    return tensors
