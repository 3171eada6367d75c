"""load_pretrained trusts nothing on disk: config vs header shapes before allocation, confined paths,
damaged files named in one line. The checkpoints are small random GPT-2s written by transformers."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file

import selfattn.interop.pretrained as pretrained
from selfattn import load_pretrained

ST = "sentence_transformers.models."


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A saved GPT2LMHeadModel (c 48, 2 layers) and the logits of a fixed batch."""
    path = tmp_path_factory.mktemp("gpt2")
    cfg = transformers.GPT2Config(vocab_size=61, n_positions=32, n_embd=48, n_layer=2, n_head=4)
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    ref.save_pretrained(path)
    tokens = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return path, tokens, ref(tokens).logits


def _copy(source, dst):
    shutil.copytree(source, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, **changes}))


def _logits(path, tokens):
    with torch.no_grad():
        return load_pretrained(path).model(tokens)


def test_config_is_checked_against_the_header_before_anything_is_allocated(source, tmp_path, monkeypatch):
    """n_embd claims 2048 with c=48 weights: refused while only meta tensors exist (old code built the
    full-size model first; at 2^15 that is gigabytes)."""
    src, _, _ = source
    d = _copy(src, tmp_path / "ckpt")
    _edit_config(d, n_embd=2048)
    built_on = []
    real_build = pretrained.build_model

    def watched(cfg):
        built_on.append(torch.empty(0).device.type)  # the device new tensors would land on
        return real_build(cfg)

    monkeypatch.setattr(pretrained, "build_model", watched)
    with pytest.raises(ValueError, match=r"does not fit.*mis-shaped.*wte\.weight.*\(61, 48\).*expects \(61, 2048\)"):
        load_pretrained(d)
    assert built_on == ["meta"]


@pytest.mark.parametrize("key, value, field", [
    ("n_layer", -1, "num_decoder_layers"), ("n_layer", 10**6, "num_decoder_layers"),
    ("n_embd", "48", "d_model"), ("layer_norm_epsilon", "1e-5", "norm_eps"), ("vocab_size", True, "vocab_size"),
    ("resid_pdrop", 1.5, "dropout"),
])
def test_bad_config_values_are_one_line_errors(source, tmp_path, key, value, field):
    d = _copy(source[0], tmp_path / "ckpt")
    _edit_config(d, **{key: value})
    with pytest.raises(ValueError, match=rf"^ModelConfig\.{field} must be .*got {re.escape(repr(value))}$"):
        load_pretrained(d)


def test_weights_that_are_not_floats_are_refused(source, tmp_path):
    d = _copy(source[0], tmp_path / "ckpt")
    sd = load_file(d / "model.safetensors")
    name = next(k for k in sd if k.endswith("h.0.ln_1.weight"))
    sd[name] = sd[name].to(torch.int32)
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"not floating point.*{name}"):
        load_pretrained(d)


def _shard(src, d, names_to=None):
    """Split src's weights into two shards plus an index; ``names_to`` rewrites the index's file names."""
    sd = load_file(src / "model.safetensors")
    keys = sorted(sd)
    halves = {"part-1.safetensors": keys[: len(keys) // 2], "part-2.safetensors": keys[len(keys) // 2:]}
    d.mkdir()
    shutil.copy(src / "config.json", d / "config.json")
    weight_map = {}
    for file, names in halves.items():
        save_file({k: sd[k] for k in names}, d / file, metadata={"format": "pt"})
        weight_map.update({k: (names_to or {}).get(file, file) for k in names})
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return d


def test_sharded_checkpoint_loads_and_its_paths_stay_inside(source, tmp_path):
    src, tokens, want = source
    good = _shard(src, tmp_path / "good")
    torch.testing.assert_close(_logits(good, tokens), want, atol=1e-5, rtol=0)  # the positive control
    outside = _shard(src, tmp_path / "outside")  # valid shards, but in another directory
    for entry in ("../outside/part-2.safetensors", str(outside / "part-2.safetensors")):
        d = _shard(src, tmp_path / f"bad{len(entry)}", names_to={"part-2.safetensors": entry})
        with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: path .*part-2\.safetensors.* "
                                             r"(is absolute|leads outside)"):
            load_pretrained(d)
    linked = _shard(src, tmp_path / "linked", names_to={"part-2.safetensors": "link.safetensors"})
    (linked / "link.safetensors").symlink_to(outside / "part-2.safetensors")  # resolved: it leaves the dir
    with pytest.raises(ValueError, match=r"'link\.safetensors' leads outside"):
        load_pretrained(linked)


def test_hub_cache_snapshot_symlinks_into_blobs_are_allowed(source, tmp_path):
    """The Hugging Face cache keeps files in models--x/blobs and symlinks them from snapshots/REV."""
    src, tokens, want = source
    built = _shard(src, tmp_path / "built")
    repo = tmp_path / "models--x"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f in built.iterdir():
        shutil.copy(f, repo / "blobs" / f"blob-{f.name}")
        (snap / f.name).symlink_to(f"../../blobs/blob-{f.name}")
    torch.testing.assert_close(_logits(snap, tokens), want, atol=1e-5, rtol=0)


def test_modules_json_paths_stay_inside(source, tmp_path):
    src, tokens, want = source
    _copy(src, tmp_path / "real")
    top = tmp_path / "st"
    top.mkdir()
    for entry in ("../real", str(tmp_path / "real")):
        (top / "modules.json").write_text(json.dumps([{"idx": 0, "path": entry, "type": ST + "Transformer"}]))
        with pytest.raises(ValueError, match=r"modules\.json: path .*real.* (is absolute|leads outside)"):
            load_pretrained(top)  # old code loaded ../real
    (top / "inner").symlink_to(tmp_path / "real")
    (top / "modules.json").write_text(json.dumps([{"idx": 0, "path": "inner", "type": ST + "Transformer"}]))
    with pytest.raises(ValueError, match=r"'inner' leads outside"):
        load_pretrained(top)
    (top / "inner").unlink()
    _copy(src, top / "inner")  # the same checkpoint inside the directory: fine
    torch.testing.assert_close(_logits(top, tokens), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_safetensors_is_one_line_naming_the_file(source, tmp_path, damage):
    d = _copy(source[0], tmp_path / "ckpt")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x89PNG" + bytes(range(256)) * 8}[damage])
    with pytest.raises(ValueError) as e:
        load_pretrained(d)
    msg = str(e.value)
    assert str(f) in msg and "not a readable safetensors file" in msg and "\n" not in msg
