"""Batched translation equals one-sentence-at-a-time decoding; n-best lists; run loading errors."""

import pytest
import torch

from selfattn.data.subword import SubwordConfig, train_subword
from selfattn.generation import beam_search, greedy
from selfattn.models import build_model, preset
from selfattn.translation.translate import DecodeConfig, load_translation_run, translate, translate_ids

TEXT = ["Ein Mann fährt Fahrrad.", "A man rides a bike.", "Zwei Hunde spielen im Schnee.",
        "Two dogs play in the snow.", "Eine Frau liest ein Buch.", "A woman reads a book."] * 10


@pytest.fixture(scope="module")
def setup():
    sp = train_subword(TEXT, SubwordConfig(vocab_size=80))
    torch.manual_seed(0)
    model = build_model(preset("tiny", vocab_size=len(sp), pad_id=0)).eval()
    return model, sp


def test_batched_greedy_equals_single_sentences_in_input_order(setup):
    model, sp = setup
    sources = [sp.encode(s) for s in TEXT[:6]]
    cfg = DecodeConfig(beam=1, max_len_a=0.0, max_len_b=6, batch_tokens=40)  # several batches
    batched = translate_ids(model, sources, sp, cfg)
    for src, got in zip(sources, batched):
        ref = greedy(model, src=[src], max_new_tokens=6, bos_id=1, stop_tokens=(2,), pad_id=0)[0]
        ref = ref[: ref.index(2)] if 2 in ref else ref
        assert got[0][0] == ref


def test_beam_nbest_sorted_and_matches_generation(setup):
    model, sp = setup
    sources = [sp.encode(s) for s in TEXT[:3]]
    cfg = DecodeConfig(beam=3, nbest=3, max_len_a=0.0, max_len_b=5)
    out = translate_ids(model, sources, sp, cfg)
    for src, hyps in zip(sources, out):
        assert len(hyps) == 3
        scores = [s for _, s in hyps]
        assert scores == sorted(scores, reverse=True)
        ref = beam_search(model, src=[src], beam_size=3, num_return=3, max_new_tokens=5, bos_id=1,
                          stop_tokens=(2,), pad_id=0)[0]
        assert [t for t, _ in hyps] == [h.tokens[: h.tokens.index(2)] if 2 in h.tokens else h.tokens for h in ref]
        # batching pads the sources together: fp32 rounding differs by a few eps per step and logit
        tol = 5 * 16 * torch.finfo(torch.float32).eps * max(abs(h.score) for h in ref)
        assert [s for _, s in hyps] == pytest.approx([h.score for h in ref], abs=tol)


def test_translate_text_api_and_config_errors(setup):
    model, sp = setup
    out = translate(model, sp, TEXT[:2], DecodeConfig(beam=2, nbest=2, max_len_b=3, max_len_a=0.0))
    assert len(out) == 2 and all(len(h) == 2 and isinstance(h[0][0], str) for h in out)
    assert translate(model, sp, []) == []
    with pytest.raises(ValueError, match="1 <= nbest <= beam"):
        DecodeConfig(beam=2, nbest=3)


def test_load_translation_run_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_translation_run(tmp_path)


def test_translate_evaluates_in_eval_mode_and_restores_training(setup, monkeypatch):
    """A model in training mode is translated in eval mode (dropout off: the same output as the eval model) and
    left training, every module; a model already in eval mode is not walked (``train`` never called)."""
    _, sp = setup
    torch.manual_seed(0)
    model = build_model(preset("tiny", vocab_size=len(sp), pad_id=0, dropout=0.3)).eval()
    sources = [sp.encode(s) for s in TEXT[:3]]
    cfg = DecodeConfig(beam=2, max_len_a=0.0, max_len_b=5)
    want = translate_ids(model, sources, sp, cfg)
    model.train()
    try:
        src = torch.tensor([sources[0]])
        tgt = torch.tensor([[1, *sources[1][:3]]])
        assert not torch.equal(model(src, tgt), model(src, tgt)), "the case needs dropout to matter"
        assert translate_ids(model, sources, sp, cfg) == want
        assert all(m.training for m in model.modules())
    finally:
        model.eval()
    calls = []
    real = torch.nn.Module.train
    monkeypatch.setattr(torch.nn.Module, "train", lambda self, mode=True: calls.append(mode) or real(self, mode))
    assert translate_ids(model, sources, sp, cfg) == want and calls == []
    assert not any(m.training for m in model.modules())
