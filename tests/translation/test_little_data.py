"""Augmentations for little data, each tested for what it must and must not do.

Subword regularisation (unigram sampling, BPE-dropout) on the source, the target or both; back-translation
(beam and sampling) aligned line by line; tagged synthetic pairs whose tag never reaches an output;
the low-resource protocol's subsets (reproducible, disjoint, the left-out English is the monolingual text).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from selfattn.cli import main
from selfattn.data.augment import AugmentConfig
from selfattn.data.subword import BT_TAG, SubwordConfig, train_subword
from selfattn.models import build_model, preset
from selfattn.translation.backtranslate import BacktranslateConfig, backtranslate
from selfattn.translation.task import TranslateConfig, TranslationTask
from selfattn.translation.translate import DecodeConfig, translate_ids

DE = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", "Eine Frau liest ein Buch.",
      "Kinder spielen Fußball auf der Straße.", "Ein Hund rennt.", "Die Sonne scheint über dem See."]
EN = ["A man rides a bike.", "Two dogs play in the snow.", "A woman reads a book.",
      "Children play soccer in the street.", "A dog runs.", "The sun shines over the lake."]
ROOT = Path(__file__).resolve().parents[2]


def _write(d: Path, name: str, lines: list[str]) -> Path:
    (d / name).write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return d / name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("little")
    _write(d, "train.de", DE * 8)
    _write(d, "train.en", EN * 8)
    for split in ("val", "test"):
        _write(d, f"{split}.de", DE)
        _write(d, f"{split}.en", EN)
    return d


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sampled_segmentations_vary_and_decode_to_the_input(model_type):
    sp = train_subword(DE * 5 + EN * 5, SubwordConfig(vocab_size=60, model_type=model_type))
    import sentencepiece as spm

    spm.set_random_generator_seed(3)
    for text in DE + EN:
        draws = {tuple(sp.encode(text, sample=True, alpha=0.3)) for _ in range(20)}
        assert all(sp.decode(list(ids)) == text for ids in draws)  # the pieces spell the input exactly
    assert any(len({tuple(sp.encode(t, sample=True, alpha=0.3)) for _ in range(20)}) > 1 for t in DE)


@pytest.mark.parametrize("side", ["src", "tgt", "both"])
def test_subword_sampling_touches_only_the_chosen_side(corpus, side):
    aug = AugmentConfig(subword_alpha=0.5, subword_side=side)
    task = TranslationTask(TranslateConfig(data=str(corpus), vocab_size=60, max_tokens=256, max_len=40,
                                           augment=aug, bleu_eval_size=0))
    plain = {tuple(s): tuple(t) for s, t in task.train_ids}
    changed_src = changed_tgt = 0
    for i in range(len(task.batches) * 3):
        b = task.batch("train", i, 0)
        for s, t in zip(b.src.tolist(), b.tgt_out.tolist()):
            s = tuple(x for x in s if x != 0)
            t = tuple(x for x in t if x >= 0)[:-1]  # drop eos
            changed_src += s not in plain
            changed_tgt += t not in plain.values()
            assert task.subword.decode(list(s)) in DE and task.subword.decode(list(t)) in EN
    assert (changed_src > 0) == (side in ("src", "both"))
    assert (changed_tgt > 0) == (side in ("tgt", "both"))


def test_bad_subword_side_is_one_line():
    with pytest.raises(ValueError, match="subword_side must be one of"):
        AugmentConfig(subword_side="left")


@pytest.fixture(scope="module")
def reverse_model():
    sp = train_subword(DE * 5 + EN * 5, SubwordConfig(vocab_size=60, tags=(BT_TAG,)))
    torch.manual_seed(0)
    return build_model(preset("tiny", vocab_size=len(sp), pad_id=0)).eval(), sp


@pytest.mark.parametrize("method", ["beam", "sample", "topk"])
def test_backtranslation_is_aligned_line_by_line(reverse_model, method):
    model, sp = reverse_model
    mono = [EN[0], "", EN[1], "   ", EN[2]]
    out = backtranslate(model, sp, mono, BacktranslateConfig(method=method, beam=2))
    assert len(out) == len(mono) and all("\n" not in x for x in out)
    assert out[1] == "" and out[3] == ""  # empty lines stay empty, so line i still pairs with line i
    again = backtranslate(model, sp, mono, BacktranslateConfig(method=method, beam=2))
    assert out == again  # sampling is seeded: the same call gives the same synthetic data


def test_tags_never_reach_the_output(reverse_model):
    model, sp = reverse_model
    tag = sp.tag_id(BT_TAG)
    assert tag is not None and sp.tag_id("<nope>") is None

    def favour_tag(module, inputs, logits):  # the tag becomes the most likely next piece at every step
        logits = logits.clone()
        logits[..., tag] += 1e4
        return logits

    hook = model.output.register_forward_hook(favour_tag)
    try:
        assert model(torch.tensor([sp.encode(DE[0])]), torch.tensor([[1]]))[0, -1].argmax() == tag
        for cfg in (DecodeConfig(beam=1), DecodeConfig(beam=3), DecodeConfig(beam=1, sample=True)):
            for hyps in translate_ids(model, [sp.encode(x) for x in DE], sp, cfg):
                assert all(tag not in ids for ids, _ in hyps)
    finally:
        hook.remove()


def test_synthetic_pairs_are_tagged_counted_and_ratioed(corpus, tmp_path):
    synth = _write(tmp_path, "synth.de", ["Ein Hund spielt.", "", "Eine Frau fährt."])
    mono = _write(tmp_path, "mono.en", ["A dog plays.", "A cat.", "A woman drives."])
    cfg = TranslateConfig(data=str(corpus), vocab_size=60, max_tokens=256, max_len=40, bleu_eval_size=0,
                          synthetic=[str(synth), str(mono)], synthetic_ratio=0)
    task = TranslationTask(cfg)
    assert task.tag is not None and len(task.train_ids) == task.num_real + 2  # the empty pair is skipped
    assert all(s[0] == task.tag for s, _ in task.train_ids[task.num_real:])
    assert all(task.tag not in s for s, _ in task.train_ids[: task.num_real])
    for i in range(len(task.batches)):  # every batch: tags only in front of synthetic sources
        for row in task.batch("train", i, 0).src.tolist():
            assert task.tag not in row[1:]
    half = TranslationTask(TranslateConfig(**{**cfg.__dict__, "synthetic_ratio": 1 / task.num_real}),
                           task.subword)
    assert len(half.train_ids) == task.num_real + 1
    untagged = TranslationTask(TranslateConfig(**{**cfg.__dict__, "synthetic_tag": False}))
    assert untagged.tag is None and len(untagged.train_ids) == task.num_real + 2


def test_backtranslate_cli_writes_aligned_lines(corpus, tmp_path, capsys):
    run = tmp_path / "en-de"
    assert main(["train", "--task", "translate", "--data", str(corpus), "--src", "en", "--tgt", "de",
                 "--vocab-size", "60", "--max-tokens", "256", "--max-len", "40", "--bleu-eval-size", "0",
                 "--steps", "2", "--set", "eval_every=0", "--set", "d_model=16", "--set", "d_ff=32",
                 "--set", "num_heads=2", "--no-progress", "--run-dir", str(run)]) == 0
    mono = _write(tmp_path, "mono.en", [EN[0], "", EN[3]])
    out = tmp_path / "synth.de"
    assert main(["backtranslate", "--checkpoint", str(run), "--input", str(mono), "--output", str(out),
                 "--method", "topk"]) == 0
    assert len(out.read_text().split("\n")) == 4 and out.read_text().split("\n")[1] == ""
    assert "back-translated 2 of 3 lines (en->de, topk)" in capsys.readouterr().err


def _protocol():
    spec = importlib.util.spec_from_file_location("low_resource", ROOT / "benchmarks" / "low_resource.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["low_resource"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_low_resource_subsets_are_reproducible_disjoint_and_recorded(corpus, tmp_path):
    lr = _protocol()
    a = lr.make_subset(corpus, tmp_path / "a", fraction=0.25, seed=1)
    b = lr.make_subset(corpus, tmp_path / "b", fraction=0.25, seed=1)
    assert a == b and a["pairs"] == round(0.25 * len(DE) * 8)
    train = (tmp_path / "a" / "train.en").read_text().splitlines()
    mono = (tmp_path / "a" / "mono.en").read_text().splitlines()
    assert len(train) + len(mono) == len(EN) * 8  # every English line is either a pair's or monolingual
    assert set(a["indices"]).isdisjoint(set(range(len(EN) * 8)) - set(a["indices"]) - set(a["mono_indices"]))
    assert (tmp_path / "a" / "test.de").read_text() == (corpus / "test.de").read_text()


def test_paired_bootstrap_says_identical_systems_are_noise():
    lr = _protocol()
    refs = [f"a man number {i} rides a red bike in the park" for i in range(40)]
    wrong = lambda i, s: s.replace("red", "blue") if i % 2 else s
    a = [wrong(i, s) for i, s in enumerate(refs)]  # errors in the odd sentences
    b = [wrong(i + 1, s) for i, s in enumerate(refs)]  # the same number of errors, in the even ones
    same = lr.paired_bootstrap(refs, {"baseline": a, "other": b}, samples=300)
    assert same["other"]["p_value"] > 0.2  # equally good systems: the difference is noise
    worse = lr.paired_bootstrap(refs, {"baseline": a, "bad": ["a dog"] * len(refs)}, samples=300)
    assert worse["bad"]["p_value"] < 0.05 and worse["bad"]["bleu"] < worse["baseline"]["bleu"]
