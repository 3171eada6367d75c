"""A single self-contained HTML file with an interactive attention viewer (works offline).

Legend: L layers, h heads, n queries (left column), m keys (right column).

In the spirit of bertviz's head view (Vig, 2019): tokens in two columns, one line per (query, key)
with opacity = weight; hover a token to focus its lines; choose layer, head and attention kind
(encoder, decoder, cross). Lines are drawn on a canvas in opacity buckets, so a 500 × 500 map is
one scrolling page. The maps travel inside the file as uint8 codes ``round(√weight · 255)`` in
base64 (~n·m·1.33 bytes per head): √ spends the 256 levels where attention over many keys lives
(a weight of 1/500 is code 11, not 0); weights under (0.5/255)² ≈ 4e-6 are not drawn.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .files import atomic_write

KIND_NAMES = {"encoder": "encoder self-attention", "decoder": "decoder self-attention (causal)",
              "cross": "cross-attention (decoder → encoder)"}


@dataclass
class KindMaps:
    """All captured maps of one attention kind, with the token labels of both columns."""

    weights: np.ndarray  # (L, h, n, m) in [0, 1]
    q_labels: Sequence[str]  # n query tokens (left)
    k_labels: Sequence[str]  # m key tokens (right)
    layers: Sequence[int]
    heads: Sequence[int]

    def validate(self, kind: str) -> None:
        w = self.weights
        if w.ndim != 4 or w.shape[:2] != (len(self.layers), len(self.heads)):
            raise ValueError(f"{kind}: weights must be (layers, heads, n, m) = ({len(self.layers)}, "
                             f"{len(self.heads)}, n, m), got {w.shape}")
        if w.shape[2:] != (len(self.q_labels), len(self.k_labels)):
            raise ValueError(f"{kind}: maps are {w.shape[2]} x {w.shape[3]} but got {len(self.q_labels)} query "
                             f"and {len(self.k_labels)} key labels")
        if not np.isfinite(w).all() or w.min() < 0 or w.max() > 1 + 1e-6:
            raise ValueError(f"{kind}: attention weights must be finite and in [0, 1]")


def _asset(name: str) -> str:
    return resources.files("selfattn.inspect").joinpath("viewer", name).read_text(encoding="utf-8")


def _encode(w: np.ndarray) -> str:
    q = np.clip(np.rint(np.sqrt(np.clip(w, 0.0, 1.0)) * 255.0), 0, 255).astype(np.uint8)  # (n, m) √w · 255
    return base64.b64encode(q.tobytes(order="C")).decode("ascii")


def viewer_html(maps: dict[str, KindMaps], title: str = "selfattn attention") -> str:
    """The viewer page as a string; ``maps`` keyed by "encoder" / "decoder" / "cross"."""
    if not maps:
        raise ValueError("need at least one kind of attention maps, got none")
    kinds = {}
    for kind, km in maps.items():
        if kind not in KIND_NAMES:
            raise ValueError(f"kind must be one of {tuple(KIND_NAMES)}, got {kind!r}")
        km.validate(kind)
        w = np.asarray(km.weights, dtype=np.float32)
        kinds[kind] = {
            "name": KIND_NAMES[kind], "q": [str(t) for t in km.q_labels], "k": [str(t) for t in km.k_labels],
            "n": int(w.shape[2]), "m": int(w.shape[3]), "layers": [int(x) for x in km.layers],
            "heads": [int(x) for x in km.heads],
            "maps": [[_encode(w[li, hi]) for hi in range(w.shape[1])] for li in range(w.shape[0])],
        }
    data = json.dumps({"title": title, "kinds": kinds}, ensure_ascii=True).replace("<", "\\u003c")  # no </script>
    page = _asset("viewer.html")
    page = page.replace("/*__CSS__*/", _asset("viewer.css")).replace("/*__JS__*/", _asset("viewer.js"))
    return page.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)


def write_viewer(path: str | Path, maps: dict[str, KindMaps], title: str = "selfattn attention") -> Path:
    """Write the viewer atomically to ``path`` (one .html file, no external resources)."""
    return atomic_write(path, viewer_html(maps, title))


def collect_maps(model, ids, labels: Sequence[str], tgt_ids=None, tgt_labels: Sequence[str] = (), *,
                 kinds: Sequence[str] | None = None, layers=None, heads=None) -> dict[str, KindMaps]:
    """Capture batch item 0 of every requested kind (default: all the model has) as viewer maps.

    ``ids`` (1, n) are the source (or only) tokens; ``tgt_ids`` (1, n_tgt) the target tokens of an
    encoder-decoder model. Decoder self-attention of a seq2seq model runs over the target.
    """
    from .capture import available_kinds, capture_attention

    have = available_kinds(model)
    kinds = list(have if kinds is None else kinds)
    seq2seq = "cross" in have
    if seq2seq and tgt_ids is None:
        raise ValueError("an encoder-decoder model needs target tokens too (tgt_ids)")
    out = {}
    for kind in kinds:
        inputs = (ids, tgt_ids) if seq2seq and kind != "encoder" else ids
        cap = capture_attention(model, inputs, kind=kind, layers=layers, heads=heads)
        q = list(tgt_labels) if seq2seq and kind != "encoder" else list(labels)
        k = list(tgt_labels) if seq2seq and kind == "decoder" else list(labels)
        out[kind] = KindMaps(cap.weights[0].float().numpy(), q, k, cap.layers, cap.heads)
    return out
