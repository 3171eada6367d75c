"""Packed rows (several pairs a row, segment ids) give every pair exactly what it gets alone (float64).

The independent side is the model itself run on each pair alone: batch of 1, no padding, no segment ids.
Equal logits per token, and — the packed loss being the sum of the pairs' losses — equal parameter gradients.
"""

from __future__ import annotations

import pytest
import torch

import selfattn
from selfattn.data import Vocab
from selfattn.data.packing import packed_seq2seq_batch
from selfattn.data.tasks import seq2seq_batch
from selfattn.models import preset
from selfattn.training.loss import smoothed_cross_entropy

VOCAB = Vocab(["<pad>", "<s>", "</s>", "<unk>", *(f"w{i}" for i in range(28))])  # 32 ids, pad 0 / bos 1 / eos 2
# float64 tolerance: a few layers of reductions over <= 128 terms, summed in another order (other shapes, zero
# weights of masked keys): a few hundred ulps of float64 (2.2e-16) on O(1) values. Unmasked packing misses by
# more than 1e-2 (checked below), so the bound separates right from wrong by ten orders of magnitude.
TOL = 1e-11


def _rows() -> list[list[tuple[list[int], list[int]]]]:
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, 32, (n,), generator=g).tolist()
    # row 0: longest source (no source padding) but a short target: its target padding queries see no key in
    # cross-attention (dead rows, output 0) — they must stay finite and harmless
    return [[(ids(5), ids(2)), (ids(6), ids(1)), (ids(4), ids(3))],
            [(ids(3), ids(6)), (ids(2), ids(4))],
            [(ids(7), ids(9))]]


def _model(positional: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = preset("tiny", positional=positional, dropout=0.0, **kw)
    return selfattn.build_model(cfg).double().train()


def _alone(model, pair, smoothing: float):
    b = seq2seq_batch([pair], VOCAB)
    logits = model(b.src, b.tgt_in)  # (1, n, V), no padding at all
    return logits[0], smoothed_cross_entropy(logits, b.tgt_out, smoothing)


def _packed(model, rows, smoothing: float, *, use_segments: bool = True):
    b = packed_seq2seq_batch(rows, VOCAB)
    assert int(b.src_seg[0].count_nonzero()) == b.src.shape[1] and int(b.tgt_seg[0].eq(0).sum()) > 0
    logits = model(b.src, b.tgt_in, segment_ids=b.segment_ids if use_segments else None)  # (r, n, V)
    return b, logits, smoothed_cross_entropy(logits, b.tgt_out, smoothing)


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("positional,kw", [
    ("sinusoidal", {}), ("learned", {}), ("rope", {}), ("alibi", {}), ("t5", {}), ("none", {}),
    ("sinusoidal", {"norm_first": True, "num_kv_heads": 2}),
])
def test_packed_logits_and_gradients_equal_each_pair_alone(positional, kw):
    model, rows, eps = _model(positional, **kw), _rows(), 0.1
    batch, logits, loss = _packed(model, rows, eps)
    assert torch.isfinite(logits).all()
    loss.backward()
    packed_grads = _grads(model)
    total = torch.zeros((), dtype=torch.float64)
    for r, row in enumerate(rows):
        start = 0
        for pair in row:
            alone, pair_loss = _alone(model, pair, eps)
            n = len(pair[1]) + 1
            torch.testing.assert_close(logits[r, start:start + n], alone, rtol=0, atol=TOL)
            start += n
            total = total + pair_loss
    assert batch.num_targets == sum(len(t) + 1 for row in rows for _, t in row)
    torch.testing.assert_close(loss, total.detach(), rtol=TOL, atol=0)
    total.backward()
    alone_grads = _grads(model)
    assert packed_grads.keys() == alone_grads.keys()
    for name, g in packed_grads.items():
        torch.testing.assert_close(g, alone_grads[name], rtol=0, atol=TOL, msg=name)


def test_without_segment_ids_packing_is_wrong():
    # the equality above is not automatic: the same packed rows without the document masks and restarted
    # positions change the logits far beyond TOL
    model, rows = _model("sinusoidal"), _rows()
    with torch.no_grad():
        _, logits, _ = _packed(model, rows, 0.0, use_segments=False)
        first = rows[0][1]
        alone, _ = _alone(model, first, 0.0)
        n0 = len(rows[0][0][1]) + 1
    assert (logits[0, n0:n0 + len(first[1]) + 1] - alone).abs().max() > 1e-2


def test_segment_ids_validated():
    model, rows = _model("sinusoidal"), _rows()
    b = packed_seq2seq_batch(rows, VOCAB)
    with pytest.raises(ValueError, match="source segment ids must be integers shaped like the tokens"):
        model(b.src, b.tgt_in, segment_ids=(b.src_seg[:, :-1], b.tgt_seg))
    with pytest.raises(ValueError, match="target segment ids"):
        model(b.src, b.tgt_in, segment_ids=(b.src_seg, b.tgt_seg.float()))
