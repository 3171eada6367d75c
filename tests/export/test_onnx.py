"""ONNX files of every model kind run in onnxruntime within 1e-5 of eager selfattn, on shapes other than the
traced ones and with padding; greedy decoding with the files alone (a subprocess where selfattn and torch
cannot be imported) gives selfattn's own greedy tokens.

Tolerance 1e-5 absolute on O(1) float32 outputs: onnxruntime's kernels round differently from PyTorch's
(1e-6 seen), far below 1e-5.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export_helpers import padded_batch

from selfattn.export import export_onnx
from selfattn.generation import greedy

ATOL = 1e-5


@pytest.fixture(scope="module")
def onnx_files(exported, tmp_path_factory):
    """kind -> (model, {graph: path}) for every kind, written once."""
    out = {}
    for kind, (model, programs) in exported.items():
        result = export_onnx(model, tmp_path_factory.mktemp(kind.replace("-", "_")), programs=programs)
        out[kind] = (model, result)
    return out


def _run(path, **inputs):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v.numpy() for k, v in inputs.items()})


def test_metadata_names_the_attention_backend(onnx_files):
    _, result = onnx_files["encoder"]
    meta = {p.key: p.value for p in onnx.load(str(result.paths["encoder"])).metadata_props}
    assert meta["selfattn.attention_backend"] == "torch" and result.attention_backend == "torch"
    assert json.loads(meta["selfattn.config"])["kind"] == "encoder"


def test_encoder_onnx_equals_eager(onnx_files):
    model, result = onnx_files["encoder"]
    for b, n in [(3, 9), (1, 2)]:
        ids, padding = padded_batch(b, n)
        with torch.no_grad():
            want = model(ids, padding).numpy()
        (got,) = _run(result.paths["encoder"], tokens=ids, padding=padding)
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_lm_onnx_equals_eager(onnx_files):
    model, result = onnx_files["decoder"]
    ids, padding = padded_batch(3, 10)
    with torch.no_grad():
        want = model(ids, padding).numpy()
        want_plain = model(ids[1:]).numpy()  # rows without padding: the step graph's reference
    (got,) = _run(result.paths["lm"], tokens=ids, padding=padding)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    cfg = model.cfg
    k = v = torch.zeros(cfg.num_decoder_layers, 2, cfg.num_heads, 0, cfg.head_dim)  # (L, b, g, 0, d)
    for i in range(ids.shape[1]):
        logits, k, v = (torch.from_numpy(a) for a in _run(result.paths["lm_step"], tokens=ids[1:, i:i + 1],
                                                           self_k=k, self_v=v))
        np.testing.assert_allclose(logits[:, 0].numpy(), want_plain[:, i], atol=ATOL, rtol=0)


def test_seq2seq_onnx_equals_eager(onnx_files):
    model, result = onnx_files["encoder-decoder"]
    src, src_padding = padded_batch(3, 12, pad_rows=(0, 1))
    tgt, _ = padded_batch(3, 7, pad_rows=(), seed=2)
    with torch.no_grad():
        want = model(src, tgt, src_padding).numpy()  # teacher-forced full forward (b, n, V)
    memory, cross_k, cross_v = (torch.from_numpy(a) for a in _run(result.paths["encoder"], src=src,
                                                                   src_padding=src_padding))
    cfg = model.cfg
    k = v = torch.zeros(cfg.num_decoder_layers, 3, cfg.num_heads, 0, cfg.head_dim)  # (L, b, g, 0, d)
    for i in range(tgt.shape[1]):
        logits, k, v = (torch.from_numpy(a) for a in _run(
            result.paths["decoder_step"], tokens=tgt[:, i:i + 1], src_padding=src_padding,
            self_k=k, self_v=v, cross_k=cross_k, cross_v=cross_v))
        np.testing.assert_allclose(logits[:, 0].numpy(), want[:, i], atol=ATOL, rtol=0)


GREEDY_WITHOUT_SELFATTN = textwrap.dedent('''
    import json, sys
    sys.modules["selfattn"] = None  # any import of selfattn (or torch) now raises ImportError
    sys.modules["torch"] = None
    import numpy as np
    import onnxruntime as ort
    enc_path, step_path, src, bos, eos, steps = json.loads(sys.argv[1])
    opts = dict(providers=["CPUExecutionProvider"])
    enc, step = ort.InferenceSession(enc_path, **opts), ort.InferenceSession(step_path, **opts)
    lengths = [len(s) for s in src]
    ids = np.zeros((len(src), max(lengths)), dtype=np.int64)  # (b, m), 0 = pad
    for i, s in enumerate(src):
        ids[i, :len(s)] = s
    padding = ids != 0  # True = real token
    _, cross_k, cross_v = enc.run(None, {"src": ids, "src_padding": padding})
    L, b, g, _, d = cross_k.shape
    k = v = np.zeros((L, b, g, 0, d), dtype=np.float32)
    tokens = np.full((b, 1), bos, dtype=np.int64)
    out = [[] for _ in range(b)]
    done = np.zeros(b, dtype=bool)
    for _ in range(steps):
        logits, k, v = step.run(None, {"tokens": tokens, "src_padding": padding, "self_k": k, "self_v": v,
                                       "cross_k": cross_k, "cross_v": cross_v})
        logits = logits[:, 0].copy()
        logits[:, [0, bos]] = -np.inf  # selfattn's greedy bans pad and bos
        new = logits.argmax(-1)
        for i in range(b):
            if not done[i]:
                out[i].append(int(new[i]))
        done |= new == eos
        if done.all():
            break
        tokens = new[:, None].astype(np.int64)
    print(json.dumps(out))
''')


def test_greedy_with_onnxruntime_alone_equals_selfattn(onnx_files, tmp_path):
    model, result = onnx_files["encoder-decoder"]
    src = [[5, 6, 7, 8, 9, 3], [4, 4, 2], [10, 11, 12, 13]]
    bos, eos, steps = 1, 2, 8
    want = greedy(model, src=src, bos_id=bos, stop_tokens=[eos], pad_id=0, max_new_tokens=steps)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = json.dumps([str(result.paths["encoder"]), str(result.paths["decoder_step"]), src, bos, eos, steps])
    proc = subprocess.run([sys.executable, "-c", GREEDY_WITHOUT_SELFATTN, args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == want


def test_onnx_refuses_a_backend_it_cannot_express(tmp_path):
    from export_helpers import tiny_model
    with pytest.raises(ValueError, match="attention backend ONNX can express"):
        export_onnx(tiny_model("encoder"), tmp_path, attention_backend="cpu_bf16")
