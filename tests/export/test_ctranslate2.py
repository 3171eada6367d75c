"""Export to CTranslate2, checked by decoding with ctranslate2.Translator itself (float32 and int8).

The reference is CTranslate2's own C++ Transformer fed the exported spec: the same greedy and beam-4 output
ids as selfattn mean every weight, norm placement, position table and the decoding rules agree. Both rank
beams by plain log-probability here (alpha = 0); selfattn's GNMT penalty and CTranslate2's ``length_penalty``
are compared at 0.6 in the benchmark instead.
"""

from __future__ import annotations

import pytest
import torch

ctranslate2 = pytest.importorskip("ctranslate2")

from selfattn.export.ctranslate2 import ct2_translate_ids, save_ctranslate2
from selfattn.models import build_model, preset
from selfattn.translation.translate import DecodeConfig, translate_ids


def _sources(vocab: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (n,), generator=g).tolist() for n in (3, 4, 5, 6, 7, 8)]


@pytest.mark.parametrize("beam", [1, 4])
def test_same_translations_as_selfattn_in_float32(tmp_path, sp, translator, beam, one_thread):
    model, cfg = translator
    save_ctranslate2(model, cfg, sp, tmp_path / "ct2")
    sources = _sources(len(sp))
    ours = [translate_ids(model, [s], sp, DecodeConfig(beam=beam, alpha=0.0))[0][0][0] for s in sources]
    theirs = ct2_translate_ids(tmp_path / "ct2", sources, sp, beam=beam, alpha=0.0, batch_size=1, threads=1)
    assert theirs == ours
    assert len({len(o) for o in ours}) > 1  # outputs stop with eos at different lengths: a real comparison


def test_int8_model_is_quantized_and_translates(tmp_path, sp, translator, one_thread):
    model, cfg = translator
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_ctranslate2(model, cfg, sp, tmp_path / "f32")
    save_ctranslate2(model, cfg, sp, tmp_path / "int8", quantization="int8")
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed  # the converter quantizes in place: it must work on copies
    f32, int8 = (tmp_path / "f32" / "model.bin").stat().st_size, (tmp_path / "int8" / "model.bin").stat().st_size
    assert int8 < 0.6 * f32  # int8 weights: about a quarter of the matrices' bytes
    sources = _sources(len(sp))
    out = ct2_translate_ids(tmp_path / "int8", sources, sp, beam=4, compute_type="int8", threads=1)
    assert len(out) == len(sources) and all(0 <= t < len(sp) for o in out for t in o)


@pytest.mark.parametrize("change,field", [(dict(norm="rmsnorm"), "norm"), (dict(positional="rope"), "positional"),
                                          (dict(num_kv_heads=2), "num_kv_heads")])
def test_refuses_what_ctranslate2_cannot_express(tmp_path, sp, change, field):
    cfg = preset("tiny", vocab_size=len(sp), pad_id=0, **change)
    with pytest.raises(ValueError, match=rf"cannot express {field}="):
        save_ctranslate2(build_model(cfg), cfg, sp, tmp_path / "ct2")
    assert not (tmp_path / "ct2").exists()
