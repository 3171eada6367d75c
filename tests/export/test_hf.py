"""Export to Hugging Face directories, checked with transformers' own classes (never downloads).

References: transformers' MarianMTModel / PegasusForConditionalGeneration / GPT2LMHeadModel / BertModel run
their own code on the exported tensors; selfattn's ``load_pretrained`` reads GPT-2/BERT exports back.
Tolerance: float32 logits of 2-layer models with |logits| ~ 1-10; both sides sum the same products in
different orders (and Marian's channels are permuted), so they differ by a few ulps of the largest
intermediate (~1e-6); 1e-5 (the issue's bound) leaves a 10x margin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from export_helpers import TEXT, perturb

from selfattn import load_pretrained
from selfattn.export.hf import hf_tokenizer, save_hf, to_hf_model
from selfattn.models import ModelConfig, build_model, preset
from selfattn.translation.translate import DecodeConfig, translate_ids

ATOL = 1e-5


def _sources(vocab: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (n,), generator=g).tolist() for n in (3, 4, 5, 6, 7, 8)]


def _padded(sources):
    src = torch.zeros(len(sources), max(map(len, sources)), dtype=torch.long)  # (b, m), 0 = pad
    for i, s in enumerate(sources):
        src[i, : len(s)] = torch.tensor(s)
    return src


@pytest.mark.parametrize("norm_first", [False, True], ids=["marian", "pegasus"])
def test_seq2seq_logits_match_transformers(tmp_path, sp, norm_first, one_thread):
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=len(sp), pad_id=0, norm_first=norm_first, activation="gelu")
    model = build_model(cfg).eval()
    perturb(model, 0.3)
    save_hf(model, cfg, tmp_path / "hf", sp)
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == ("PegasusForConditionalGeneration" if norm_first else "MarianMTModel")
    src = _padded(_sources(len(sp)))  # padded rows: the source mask matters
    tgt = torch.randint(4, len(sp), (src.shape[0], 9), generator=torch.Generator().manual_seed(4))
    tgt[:, 0] = 1
    with torch.no_grad():
        want = model(src, tgt)
        got = hf(input_ids=src, attention_mask=src != 0, decoder_input_ids=tgt).logits
    assert want.abs().max() > 1.0
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def _hf_generate(hf, sources, beam: int, max_new: int) -> list[list[int]]:
    src = _padded(sources)
    out = hf.generate(input_ids=src, attention_mask=src != 0, num_beams=beam, do_sample=False,
                      length_penalty=0.0, early_stopping=True, max_new_tokens=max_new, suppress_tokens=[0, 1])
    res = []
    for row in out[:, 1:].tolist():  # drop the decoder start token
        res.append(row[: row.index(2)] if 2 in row else [t for t in row if t != 0])
    return res


@pytest.mark.parametrize("beam", [1, 4])
def test_seq2seq_generation_matches_transformers(tmp_path, sp, translator, beam, one_thread):
    """Greedy and beam-4 outputs of generate() equal selfattn's. Length penalties differ in definition
    (GNMT ((5+L)/6)^a vs HF's L^a), so both rank by plain log-probability: alpha = length_penalty = 0."""
    model, cfg = translator
    save_hf(model, cfg, tmp_path / "hf", sp)
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    sources = _sources(len(sp))
    for s in sources:  # one at a time: selfattn's length cap then equals max_new_tokens below
        dc = DecodeConfig(beam=beam, alpha=0.0)
        ours = translate_ids(model, [s], sp, dc)[0][0][0]
        theirs = _hf_generate(hf, [s], beam, int(dc.max_len_a * len(s)) + dc.max_len_b)[0]
        assert ours == theirs, (s, ours, theirs)
    assert len({len(translate_ids(model, [s], sp, DecodeConfig(beam=beam))[0][0][0]) for s in sources}) > 1


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_tokenizer_reproduces_sentencepiece_ids(tmp_path, model_type):
    from selfattn.data.subword import SubwordConfig, train_subword

    sub = train_subword(TEXT, SubwordConfig(vocab_size=60, model_type=model_type))
    hf_tokenizer(sub).save_pretrained(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    probe = TEXT[:6] + ["  Zwei   Männer  ", "Ünïcödé wörds, xyz!", "a", "Ein Mann fährt Fahrrad. Ein Hund."]
    assert [tok(s)["input_ids"] for s in probe] == [sub.encode(s) for s in probe]
    assert tok.pad_token_id == 0 and tok.bos_token_id == 1 and tok.eos_token_id == 2 and tok.unk_token_id == 3


def _lm(positional: str, scale: bool):
    torch.manual_seed(0)
    cfg = preset("char-lm", vocab_size=40, num_decoder_layers=2, positional=positional, scale_embeddings=scale,
                 max_len=64)
    model = build_model(cfg).eval()
    perturb(model, 0.3)
    return model, cfg


@pytest.mark.parametrize("positional,scale", [("learned", False), ("sinusoidal", True)])
def test_gpt2_export_logits_and_round_trip(tmp_path, positional, scale, one_thread):
    model, cfg = _lm(positional, scale)
    save_hf(model, cfg, tmp_path / "lm")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    x = torch.randint(0, 40, (3, 30), generator=torch.Generator().manual_seed(1))
    back = load_pretrained(tmp_path / "lm").model  # the reverse direction: selfattn -> HF -> selfattn
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(hf(x).logits, want, atol=ATOL, rtol=0)
        torch.testing.assert_close(back(x), want, atol=ATOL, rtol=0)


def _encoder():
    torch.manual_seed(0)
    cfg = ModelConfig(kind="encoder", vocab_size=40, d_model=32, num_heads=4, d_ff=64, num_encoder_layers=2,
                      num_decoder_layers=0, dropout=0.0, embed_norm=True, activation="gelu", max_len=64,
                      type_vocab_size=2)
    model = build_model(cfg).eval()
    perturb(model, 0.3)
    return model, cfg


def test_bert_export_hidden_states_and_round_trip(tmp_path, one_thread):
    model, cfg = _encoder()
    save_hf(model, cfg, tmp_path / "enc")
    hf = transformers.AutoModel.from_pretrained(tmp_path / "enc").eval()
    assert type(hf).__name__ == "BertModel"
    x = torch.randint(1, 40, (3, 12), generator=torch.Generator().manual_seed(1))
    x[1, 7:] = 0  # padding
    types = (torch.arange(12) >= 6).long().expand(3, 12)
    real = x != 0
    back = load_pretrained(tmp_path / "enc").model
    with torch.no_grad():
        want = model(x, token_types=types)
        got = hf(input_ids=x, attention_mask=real, token_type_ids=types).last_hidden_state
        torch.testing.assert_close(got[real], want[real], atol=ATOL, rtol=0)  # padded rows are don't-care
        torch.testing.assert_close(back(x, token_types=types)[real], want[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("change,field", [
    (dict(norm="rmsnorm"), "norm"), (dict(positional="rope"), "positional"),
    (dict(num_kv_heads=2), "num_kv_heads"), (dict(activation="swiglu"), "activation"),
    (dict(share_embeddings=False, src_vocab_size=30), "share_embeddings"), (dict(norm_eps=1e-6), "norm_eps"),
])
def test_refuses_what_the_target_cannot_express(change, field):
    cfg = preset("tiny", vocab_size=30, **change)
    with pytest.raises(ValueError, match=rf"cannot express {field}="):
        to_hf_model(build_model(cfg), cfg)


def test_refuses_a_non_empty_output_directory(tmp_path):
    model, cfg = _lm("learned", False)
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="is not empty"):
        save_hf(model, cfg, tmp_path / "lm")
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == ["keep.txt"]


LOADER = r"""
import json, sys
sys.modules["selfattn"] = None  # any import of selfattn now raises ImportError
try:
    import selfattn  # noqa: F401
    raise SystemExit("selfattn is still importable")
except ImportError:
    pass
import torch, transformers
d = sys.argv[1]
tok = transformers.AutoTokenizer.from_pretrained(d)
model = transformers.AutoModelForSeq2SeqLM.from_pretrained(d).eval()
enc = tok(["Ein Mann fährt Fahrrad."], return_tensors="pt")
out = model.generate(**enc, num_beams=4, length_penalty=0.0, max_new_tokens=8, suppress_tokens=[0, 1])
with torch.no_grad():
    logits = model(**enc, decoder_input_ids=torch.tensor([[1, 5, 6]])).logits
print(json.dumps({"ids": enc["input_ids"][0].tolist(), "logits": logits.flatten().tolist()}))
"""


def test_export_loads_without_selfattn(tmp_path, sp):
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=len(sp), pad_id=0)
    model = build_model(cfg).eval()
    save_hf(model, cfg, tmp_path / "hf", sp)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")  # a local directory; never reach for the network
    res = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / "hf")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    src = sp.encode("Ein Mann fährt Fahrrad.")
    assert got["ids"] == src
    with torch.no_grad():
        want = model(torch.tensor([src]), torch.tensor([[1, 5, 6]])).flatten()
    torch.testing.assert_close(torch.tensor(got["logits"]), want, atol=ATOL, rtol=0)
