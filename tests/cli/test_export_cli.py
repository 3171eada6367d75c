"""`selfattn export RUN --format hf|ctranslate2` on a tiny translation run, and its one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from selfattn.cli import main

TEXT_DE = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", "Eine Frau liest ein Buch."] * 20
TEXT_EN = ["A man rides a bike.", "Two dogs play in the snow.", "A woman reads a book."] * 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export-run")
    data = root / "data"
    data.mkdir()
    for split, n in (("train", 60), ("val", 3), ("test", 3)):
        (data / f"{split}.de").write_text("\n".join(TEXT_DE[:n]) + "\n", encoding="utf-8")
        (data / f"{split}.en").write_text("\n".join(TEXT_EN[:n]) + "\n", encoding="utf-8")
    run = root / "run"
    code = main(["train", "--task", "translate", "--data", str(data), "--preset", "tiny", "--vocab-size", "60",
                 "--max-tokens", "256", "--bleu-eval-size", "0", "--steps", "4", "--run-dir", str(run),
                 "--no-progress", "--set", "eval_every=4", "--set", "ckpt_every=4"])
    assert code == 0
    yield run
    torch.set_num_threads(before)


def test_export_hf_and_ctranslate2(run_dir, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("ctranslate2")
    from selfattn.export.ctranslate2 import ct2_translate_ids
    from selfattn.translation import load_translation_run

    assert main(["export", str(run_dir), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert main(["export", str(run_dir), "--format", "ctranslate2", "--out", str(tmp_path / "ct2")]) == 0
    assert main(["export", str(run_dir), "--format", "ctranslate2", "--quantization", "int8",
                 "--out", str(tmp_path / "ct2-int8")]) == 0
    assert "wrote hf export" in capsys.readouterr().out
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "marian"  # tiny: post-norm
    model, sp, _ = load_translation_run(run_dir)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok(TEXT_DE[0])["input_ids"] == sp.encode(TEXT_DE[0])
    # a 4-step model's outputs are near ties, so compare per-token log-probabilities of given targets
    # (CTranslate2 scoring vs selfattn's forward); float32 with |log p| ~ 4 through 2+2 layers: ~1e-5 apart
    import ctranslate2

    src, tgt = [sp.encode(s) for s in TEXT_DE[:3]], [sp.encode(s) for s in TEXT_EN[:3]]
    tr = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu", intra_threads=1)
    piece = sp.sp.id_to_piece
    scored = tr.score_batch([[piece(i) for i in s] for s in src], [[piece(i) for i in t] for t in tgt])
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    for s, t, res in zip(src, tgt, scored):
        with torch.no_grad():
            logits = model(torch.tensor([s]), torch.tensor([[sp.bos_id] + t]))  # (1, n, V)
            hf_logits = hf(input_ids=torch.tensor([s]), decoder_input_ids=torch.tensor([[sp.bos_id] + t])).logits
        torch.testing.assert_close(hf_logits, logits, atol=1e-5, rtol=0)
        want = logits.log_softmax(-1)[0].gather(1, torch.tensor(t + [sp.eos_id])[:, None])[:, 0]  # (n,)
        torch.testing.assert_close(torch.tensor(res.log_probs), want, atol=1e-4, rtol=0)
    int8 = ct2_translate_ids(tmp_path / "ct2-int8", src, sp, beam=2, compute_type="int8", threads=1)
    assert len(int8) == 3


def test_export_onnx_and_torch_formats(run_dir, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    assert main(["export", str(run_dir), "--format", "torch", "--out", str(tmp_path / "pt2")]) == 0
    out = capsys.readouterr().out
    assert out.count("attention backend 'torch'") == 2  # each export says which attention path it took
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["decoder_step.onnx", "encoder.onnx"]
    assert sorted(p.name for p in (tmp_path / "pt2").iterdir()) == ["decoder_step.pt2", "encoder.pt2"]
    session = ort.InferenceSession(str(tmp_path / "onnx" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()  # a loadable graph; its numerics are tests/export/test_onnx.py's


@pytest.mark.parametrize("extra,message", [
    (["--format", "hf", "--quantization", "int8"], "applies to the ctranslate2 format only"),
    (["--format", "hf", "--out", "EXISTING"], "is not empty"),
])
def test_export_errors_are_one_line(run_dir, tmp_path, capsys, extra, message):
    (tmp_path / "EXISTING").mkdir()
    (tmp_path / "EXISTING" / "f").write_text("x")
    args = [a.replace("EXISTING", str(tmp_path / "EXISTING")) for a in extra]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "new")]
    assert main(["export", str(run_dir), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("selfattn export: error:") and message in err[0]
