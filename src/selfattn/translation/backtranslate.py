"""Back-translation (Sennrich et al. 2016): monolingual target-side text -> synthetic source sentences.

A *reverse* model (trained tgt -> src on the same real pairs) translates each monolingual line; the pairs
(synthetic source, real target) then join the real training pairs (``TranslateConfig.synthetic``), with the
synthetic sources tagged (``BT_TAG``; Caswell et al. 2019) so the model can tell them apart. Decoding by beam
search (Sennrich et al.) or by sampling (Edunov et al. 2018, "Understanding Back-Translation at Scale":
unrestricted sampling, or top-k, gives more diverse and, at scale, more useful synthetic sources).

The output is aligned line by line with the input: line i of the output is the translation of line i of the
monolingual file, and an empty input line gives an empty output line (the reader then skips and counts it).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..data.subword import Subword
from .translate import DecodeConfig, translate

METHODS = ("beam", "sample", "topk")


@dataclass
class BacktranslateConfig:
    method: str = "beam"  # "beam" (Sennrich et al. 2016), "sample" (unrestricted) or "topk" (Edunov et al. 2018)
    beam: int = 4  # beam size for "beam"
    top_k: int = 10  # k for "topk" (Edunov et al.: 10)
    temperature: float = 1.0  # for the sampling methods
    seed: int = 0  # the sampling generator
    batch_tokens: int = 2048  # source pieces per decoding batch

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"back-translation method must be one of {METHODS}, got {self.method!r}")

    def decode_config(self) -> DecodeConfig:
        if self.method == "beam":
            return DecodeConfig(beam=self.beam, batch_tokens=self.batch_tokens)
        return DecodeConfig(beam=1, sample=True, temperature=self.temperature, seed=self.seed,
                            top_k=self.top_k if self.method == "topk" else 0, batch_tokens=self.batch_tokens)


def backtranslate(model: nn.Module, sp: Subword, lines: list[str], cfg: BacktranslateConfig | None = None) -> list[str]:
    """One synthetic source per monolingual line, in input order; empty lines stay empty."""
    cfg = cfg or BacktranslateConfig()
    keep = [i for i, line in enumerate(lines) if line.strip()]
    out = [""] * len(lines)
    for i, hyps in zip(keep, translate(model, sp, [lines[i] for i in keep], cfg.decode_config())):
        out[i] = hyps[0][0].replace("\n", " ")  # one line per input, whatever the model emits
    return out


__all__ = ["METHODS", "BacktranslateConfig", "backtranslate"]
