"""Parallel corpus reading: alignment, encoding, empty and over-long pairs, Multi30k's local layout."""

from pathlib import Path

import pytest

from selfattn.data.parallel import MULTI30K_SPLITS, ReadConfig, multi30k, read_lines, read_parallel

MULTI30K = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "multi30k"


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def test_reads_aligned_pairs_and_strips(tmp_path):
    s = write(tmp_path / "a.de", "Hallo Welt\r\nZwei\n")
    t = write(tmp_path / "a.en", "hello world\ntwo\n")
    c = read_parallel(s, t)
    assert c.pairs() == [("Hallo Welt", "hello world"), ("Zwei", "two")]
    assert c.kept_lines == [1, 2] and c.skipped_empty == 0 and c.filtered_long == 0


def test_different_line_counts_name_both_files(tmp_path):
    s = write(tmp_path / "x.de", "a\nb\nc\n")
    t = write(tmp_path / "x.en", "a\nb\n")
    with pytest.raises(ValueError, match=r"x\.de has 3 lines but .*x\.en has 2.*x\.en ends first, at line 2"):
        read_parallel(s, t)


def test_undecodable_bytes_name_file_and_line(tmp_path):
    s = write(tmp_path / "b.de", b"gut\nschl\xe9cht\n")  # latin-1 e-acute on line 2
    t = write(tmp_path / "b.en", "good\nbad\n")
    with pytest.raises(ValueError, match=r"b\.de:2: bytes .* at byte 5 .*not UTF-8"):
        read_parallel(s, t)


def test_empty_pairs_skipped_with_count_or_error(tmp_path):
    s = write(tmp_path / "c.de", "eins\n\ndrei\nvier\n")
    t = write(tmp_path / "c.en", "one\ntwo\n\nfour\n")
    c = read_parallel(s, t, ReadConfig(empty="skip"))
    assert c.pairs() == [("eins", "one"), ("vier", "four")]
    assert c.skipped_empty == 2 and c.kept_lines == [1, 4]
    with pytest.raises(ValueError, match=r"c\.de:2: empty line"):
        read_parallel(s, t, ReadConfig(empty="error"))
    with pytest.raises(ValueError, match="empty must be one of"):
        ReadConfig(empty="ignore")


def test_over_long_lines_filtered_with_count(tmp_path):
    s = write(tmp_path / "d.de", "a b c\n" + " ".join(["w"] * 11) + "\nd\n")
    t = write(tmp_path / "d.en", "x\ny\n" + " ".join(["v"] * 10) + "\n")
    c = read_parallel(s, t, ReadConfig(max_words=10))
    assert c.pairs() == [("a b c", "x"), ("d", " ".join(["v"] * 10))]  # exactly 10 words is kept
    assert c.filtered_long == 1


def test_missing_file_and_bom(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_lines(tmp_path / "nope.de")
    assert read_lines(write(tmp_path / "bom.txt", b"\xef\xbb\xbfHallo\n")) == ["Hallo"]


def test_multi30k_local_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing .*train\.de"):
        multi30k(tmp_path)
    with pytest.raises(ValueError, match="languages"):
        multi30k(tmp_path, src="xx")


@pytest.mark.skipif(not MULTI30K.is_dir(), reason="Multi30k not present beside the repository")
def test_multi30k_local_copy_matches_official_statistics():
    files = multi30k(MULTI30K)  # a local directory: never downloads
    assert set(files) == set(MULTI30K_SPLITS)
    sizes = {"train": 29000, "val": 1014, "test2016": 1000}  # the dataset README's sentence counts
    for split, (s, t) in files.items():
        c = read_parallel(s, t)
        assert len(c) + c.skipped_empty + c.filtered_long == sizes[split]
