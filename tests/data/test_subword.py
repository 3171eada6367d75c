"""Joint SentencePiece model: special ids, round trip, sampling, serialisation."""

import pytest

from selfattn.data.subword import Subword, SubwordConfig, train_subword
from selfattn.data.vocab import SPECIALS

TEXT = [
    "Ein Mann fährt mit dem Fahrrad durch die Stadt.", "A man rides a bike through the city.",
    "Zwei Hunde spielen im Schnee.", "Two dogs are playing in the snow.",
    "Eine Frau liest ein Buch im Park.", "A woman reads a book in the park.",
    "Kinder spielen Fußball auf der Straße.", "Children play soccer in the street.",
] * 20


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def sp(request):
    return train_subword(TEXT, SubwordConfig(vocab_size=120, model_type=request.param))


def test_special_ids_and_vocab(sp):
    assert (sp.pad_id, sp.bos_id, sp.eos_id, sp.unk_id) == (0, 1, 2, 3)
    v = sp.vocab()
    assert v.tokens[:4] == list(SPECIALS) and len(v) == len(sp)
    assert (v.pad_id, v.bos_id, v.eos_id, v.unk_id) == (0, 1, 2, 3)
    ids = sp.encode("Zwei Hunde")
    assert [v.tokens[i] for i in ids] == sp.pieces("Zwei Hunde")  # same ids as the task Vocab


def test_round_trip_detokenizes(sp):
    for line in TEXT[:8]:
        ids = sp.encode(line)
        assert min(ids) >= 4  # no specials inside text
        assert sp.decode(ids) == line
        assert sp.decode([sp.bos_id, *ids, sp.eos_id, 17, 18]) == line  # stops at eos


def test_sampling_gives_valid_segmentations_that_vary(sp):
    import sentencepiece as spm

    spm.set_random_generator_seed(1)
    line = "Kinder spielen Fußball auf der Straße."
    samples = {tuple(sp.encode(line, sample=True, alpha=0.1)) for _ in range(50)}
    assert all(sp.decode(s) == line for s in samples)  # every sample spells the same text
    assert len(samples) > 1
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        sp.encode(line, sample=True, alpha=0.0)


def test_base64_and_file_round_trip(sp, tmp_path):
    again = Subword.from_base64(sp.to_base64(), sp.model_type)
    assert again.encode(TEXT[0]) == sp.encode(TEXT[0])
    sp.save(tmp_path / "m.model")
    import sentencepiece as spm

    assert spm.SentencePieceProcessor(model_file=str(tmp_path / "m.model")).encode(TEXT[1]) == sp.encode(TEXT[1])


def test_word_starts(sp):
    ids = sp.encode("Zwei Hunde spielen")
    starts = sp.word_starts(ids)
    assert sum(starts) == 3 and starts[0]


def test_errors():
    with pytest.raises(ValueError, match="model_type must be one of"):
        SubwordConfig(model_type="wordpiece")
    with pytest.raises(ValueError, match="at least one non-empty"):
        train_subword(["", ""])
    with pytest.raises(ValueError, match="not a base64 SentencePiece model"):
        Subword.from_base64("@@@")
