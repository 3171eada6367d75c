"""GPT-2 checkpoints in selfattn's TransformerLM vs transformers' GPT2LMHeadModel (random weights, saved locally).

The reference is an independent implementation (HF's Conv1D layout, fused c_attn, its own cache);
weights reach selfattn only through the checkpoint files. Tolerance: float32 logits of a 2-layer
model with |logits| ~ 1; both sides sum the same products in different orders, so differences are
a few ulps of the largest intermediate (~1e-6); the issue's bound 1e-5 leaves a 10x margin.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file

from selfattn import load_pretrained

V, EOS = 97, 96


def _save(tmp_path, seed: int = 0, **overrides):
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=48, n_layer=2, n_head=4,
                                  bos_token_id=EOS, eos_token_id=EOS, initializer_range=0.2, **overrides)
    torch.manual_seed(seed)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases so every tensor's mapping matters
        for name, p in ref.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(tmp_path)
    return ref


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    ref = _save(path)
    return ref, load_pretrained(path), path


def test_logits_match(gpt2):
    ref, ours, _ = gpt2
    tokens = torch.randint(0, V, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(tokens).logits
        got = ours.model(tokens)
    assert want.abs().max() > 1.0  # logits are not trivially small
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_logits_with_cache_match(gpt2):
    """Feeding a prefix then one token at a time through selfattn's KV cache gives the full-pass logits."""
    ref, ours, _ = gpt2
    tokens = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref(tokens).logits
        cache = ours.model.new_cache()
        steps = [ours.model(tokens[:, :12], cache=cache)]
        steps += [ours.model(tokens[:, t : t + 1], cache=cache) for t in range(12, 20)]
    torch.testing.assert_close(torch.cat(steps, dim=1), want, atol=1e-5, rtol=0)


def test_greedy_generation_matches_transformers(gpt2):
    from selfattn.generation import greedy

    ref, ours, _ = gpt2
    prompt = torch.randint(0, EOS, (3, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=30, do_sample=False,
                            pad_token_id=EOS, eos_token_id=EOS)[:, prompt.shape[1]:]
        got = greedy(ours.model, prompt=prompt, max_new_tokens=30, stop_tokens=(EOS,), use_cache=True)
        # the comparison means something only when no step is a near-tie at float32 precision
        full = ref(torch.cat([prompt, want], dim=1)).logits[:, prompt.shape[1] - 1 : -1]
        top2 = full.topk(2, dim=-1).values
    assert float((top2[..., 0] - top2[..., 1]).min()) > 1e-4
    for row, g in zip(want.tolist(), got):
        if EOS in row:
            row = row[: row.index(EOS) + 1]
        assert g == row
    assert max(len(g) for g in got) >= 10


def test_untied_lm_head(tmp_path):
    ref = _save(tmp_path, seed=4, tie_word_embeddings=False)
    ours = load_pretrained(tmp_path)
    assert ours.model.output.weight.data_ptr() != ours.model.embed.token.weight.data_ptr()
    tokens = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(ours.model(tokens), ref(tokens).logits, atol=1e-5, rtol=0)


def _edit(path, fn):
    sd = load_file(path / "model.safetensors")
    fn(sd)
    save_file(sd, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_unexpected_misshaped_are_listed(tmp_path):
    _save(tmp_path)
    prefix = "transformer." if "transformer.wte.weight" in load_file(tmp_path / "model.safetensors") else ""

    def damage(sd):
        del sd[f"{prefix}h.1.mlp.c_fc.bias"]
        sd["extra.thing"] = torch.zeros(3)
        sd[f"{prefix}h.0.ln_1.weight"] = torch.ones(47)

    _edit(tmp_path, damage)
    with pytest.raises(ValueError) as e:
        load_pretrained(tmp_path)
    msg = str(e.value)
    assert f"{prefix}h.1.mlp.c_fc.bias" in msg and "missing" in msg
    assert "extra.thing" in msg and "unexpected" in msg
    assert f"{prefix}h.0.ln_1.weight" in msg and "(47,)" in msg


def test_unknown_architecture_and_bad_dirs(tmp_path):
    _save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type 'llama'"):
        load_pretrained(tmp_path)
    with pytest.raises(ValueError, match="checkpoint directory"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "model.safetensors").unlink()
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no weights"):
        load_pretrained(tmp_path)


def test_pytorch_bin_is_refused_without_unpickling(tmp_path, monkeypatch):
    """A pickled pytorch_model.bin is never opened: unpickling can run code, weights come via safetensors only."""
    import pickle

    _save(tmp_path, seed=6)
    sd = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "pytorch_model.bin")

    def never(*a, **k):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", never)
    monkeypatch.setattr(pickle, "load", never)
    monkeypatch.setattr(pickle, "Unpickler", never)
    with pytest.raises(ValueError, match=r"pytorch_model\.bin is a pickle.*expected model\.safetensors"):
        load_pretrained(tmp_path)
