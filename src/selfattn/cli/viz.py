"""``selfattn viz TEXT``: attention pictures — PNG heatmaps and a self-contained interactive HTML viewer.

Writes into ``--out`` (default ``viz/``):
  attention.html                  every captured kind/layer/head, interactive, works offline
  <kind>_grid.png                 layer × head grid of heatmaps per kind
  <kind>_layer<L>_head<H>.png     single heads chosen with --single L:H
"""

from __future__ import annotations

from pathlib import Path

from . import CLIError
from .explain import add_model_arguments, load_model


def _ints(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"--{name} must be comma-separated ints such as 0,2, got {text!r}") from None


def _single(spec: str) -> tuple[int, int]:
    try:
        layer, head = (int(x) for x in spec.split(":"))
    except ValueError:
        raise CLIError(f"--single must look like LAYER:HEAD (e.g. 1:0), got {spec!r}") from None
    return layer, head


def run(args) -> int:
    from ..inspect.heatmap import plot_grid, plot_head
    from ..inspect.html import KIND_NAMES, collect_maps, write_viewer

    if args.no_html and args.no_png:
        raise CLIError("nothing to write: --no-html and --no-png together")
    out = Path(args.out)
    for parent in (out, *out.parents):  # fail before the model runs, with the path that is in the way
        if parent.exists() and not parent.is_dir():
            raise CLIError(f"--out {args.out!r}: {str(parent)!r} is a file, expected a directory (or a new path)")
    ins = load_model(args)
    kinds = args.kind or None
    maps = collect_maps(ins.model, ins.ids, ins.labels, ins.tgt_ids, ins.tgt_labels, kinds=kinds,
                        layers=_ints(args.layers_shown, "show-layers"), heads=_ints(args.heads_shown, "show-heads"))
    written = []
    origin = "random weights" if ins.origin == "random" else ins.origin
    if not args.no_html:
        written.append(write_viewer(out / "attention.html", maps, f"selfattn attention ({origin})"))
    if not args.no_png:
        for kind, km in maps.items():
            written.append(plot_grid(km.weights, km.q_labels, km.k_labels, out / f"{kind}_grid.png",
                                     layers=km.layers, heads=km.heads, title=f"{KIND_NAMES[kind]} ({origin})"))
            for spec in args.single or [f"{km.layers[0]}:{km.heads[0]}"]:
                layer, head = _single(spec)
                if layer not in km.layers or head not in km.heads:
                    raise CLIError(f"--single {spec}: have layers {list(km.layers)} and heads {list(km.heads)}")
                w = km.weights[list(km.layers).index(layer), list(km.heads).index(head)]
                written.append(plot_head(w, km.q_labels, km.k_labels, out / f"{kind}_layer{layer}_head{head}.png",
                                         title=f"{KIND_NAMES[kind]}, layer {layer}, head {head}"))
    for p in written:
        print(p)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "viz", help="attention heatmaps (PNG) and an interactive offline HTML viewer",
        description="Capture the attention weights of a model on TEXT and draw them: a layer × head grid "
                    "and single-head heatmaps as PNG, and one self-contained HTML file (hover a token, pick "
                    "layer/head/kind). Example: selfattn viz \"the cat sat on the mat\" --out viz/",
    )
    p.add_argument("text", help="the input text (the source, for an encoder-decoder model)")
    p.add_argument("--out", default="viz", help="output directory (default viz/)")
    p.add_argument("--kind", action="append", choices=["encoder", "decoder", "cross"],
                   help="which attention to capture, repeatable (default: all the model has)")
    p.add_argument("--show-layers", dest="layers_shown", metavar="L,L", help="layers to capture (default all)")
    p.add_argument("--show-heads", dest="heads_shown", metavar="H,H", help="heads to capture (default all)")
    p.add_argument("--single", action="append", metavar="L:H",
                   help="also draw layer L head H alone, repeatable (default: the first captured)")
    p.add_argument("--no-html", action="store_true", help="skip attention.html")
    p.add_argument("--no-png", action="store_true", help="skip the PNG heatmaps")
    add_model_arguments(p, "encoder-decoder")
    p.set_defaults(func=run)
