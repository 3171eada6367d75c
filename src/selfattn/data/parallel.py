"""Parallel corpora: two plain-text files, one sentence a line, line i of one translating line i of the other.

Works for any language pair (``train.de`` / ``train.en``, ``corpus.fr`` / ``corpus.sw`` ...). Bad input gets
a ``ValueError`` naming the file and the 1-based line: different line counts, bytes that are not UTF-8,
empty pairs (skipped and counted, or an error, by option); over-long lines are filtered and counted
(the usual ``clean-corpus-n`` step of Moses / fairseq preprocessing).

:func:`multi30k` returns the Multi30k (Elliott et al. 2016) task-1 files: from a local directory holding
``{train,val,test2016}.{de,en}``, or, given none, downloaded once from the official repository
https://github.com/multi30k/dataset (``data/task1/raw``; test2016 is ``test_2016_flickr``).
"""

from __future__ import annotations

import gzip
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
MULTI30K_SPLITS = {"train": "train", "val": "val", "test2016": "test_2016_flickr"}  # our name -> theirs
MULTI30K_LANGS = ("de", "en", "fr", "cs")
EMPTY_POLICIES = ("skip", "error")


@dataclass
class ReadConfig:
    empty: str = "skip"  # "skip" pairs with an empty side (counted) or "error"; Multi30k has none
    max_words: int = 250  # drop pairs with a side over this many whitespace words (Moses clean-corpus-n)
    strip: bool = True  # strip surrounding whitespace (trailing "\r" of Windows files included)

    def __post_init__(self) -> None:
        if self.empty not in EMPTY_POLICIES:
            raise ValueError(f"empty must be one of {EMPTY_POLICIES}, got {self.empty!r}")
        if not isinstance(self.max_words, int) or self.max_words < 1:
            raise ValueError(f"max_words must be a positive int, got {self.max_words!r}")


@dataclass
class ParallelCorpus:
    src: list[str]
    tgt: list[str]
    src_path: Path | None = None
    tgt_path: Path | None = None
    skipped_empty: int = 0  # pairs dropped because one side was empty
    filtered_long: int = 0  # pairs dropped because one side had more than max_words words
    kept_lines: list[int] = field(default_factory=list)  # 1-based line number of each kept pair

    def __len__(self) -> int:
        return len(self.src)

    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.src, self.tgt))

    def report(self) -> str:
        return (f"{len(self)} pairs from {self.src_path} / {self.tgt_path} "
                f"({self.skipped_empty} empty skipped, {self.filtered_long} over-long filtered)")


def read_lines(path: str | Path, *, strip: bool = True) -> list[str]:
    """The lines of a UTF-8 text file; undecodable bytes raise ValueError with file, line and byte."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parallel text file {str(path)!r} does not exist")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not part of the first sentence
        raw = raw[3:]
    chunks = raw.split(b"\n")
    if chunks and chunks[-1] == b"":  # final newline
        chunks.pop()
    lines = []
    for i, chunk in enumerate(chunks, start=1):
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{i}: bytes {chunk[e.start:e.start + 4]!r} at byte {e.start + 1} of the line "
                             "(1-based) are not UTF-8; expected UTF-8 text (convert with iconv)") from None
        lines.append(text.strip() if strip else text.rstrip("\r"))
    return lines


def read_parallel(src_path: str | Path, tgt_path: str | Path, cfg: ReadConfig | None = None) -> ParallelCorpus:
    """Read aligned ``src_path`` / ``tgt_path``, checking alignment, encoding and emptiness."""
    cfg = cfg or ReadConfig()
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    src, tgt = read_lines(src_path, strip=cfg.strip), read_lines(tgt_path, strip=cfg.strip)
    if len(src) != len(tgt):
        shorter = src_path if len(src) < len(tgt) else tgt_path
        raise ValueError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; expected equal counts "
                         f"(one sentence per line); {shorter} ends first, at line {min(len(src), len(tgt))}")
    out = ParallelCorpus([], [], src_path, tgt_path)
    for i, (s, t) in enumerate(zip(src, tgt), start=1):
        if not s or not t:
            if cfg.empty == "error":
                which = src_path if not s else tgt_path
                raise ValueError(f"{which}:{i}: empty line in a parallel pair; expected a sentence on both sides "
                                 f"(pass empty='skip' to drop such pairs)")
            out.skipped_empty += 1
            continue
        if len(s.split()) > cfg.max_words or len(t.split()) > cfg.max_words:
            out.filtered_long += 1
            continue
        out.src.append(s)
        out.tgt.append(t)
        out.kept_lines.append(i)
    return out


def split_files(directory: str | Path, split: str, src: str, tgt: str) -> tuple[Path, Path]:
    """``DIR/SPLIT.SRC`` and ``DIR/SPLIT.TGT``, with an error listing what the directory holds."""
    d = Path(directory)
    paths = (d / f"{split}.{src}", d / f"{split}.{tgt}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        have = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        raise FileNotFoundError(f"missing {missing}; expected files SPLIT.{src} and SPLIT.{tgt} in {str(d)!r}, "
                                f"which holds {have[:12]}")
    return paths


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "selfattn" / "multi30k"


def _download(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Fetch a gzipped file and write it decompressed to ``dest`` atomically (tmp, fsync, rename)."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = gzip.decompress(resp.read())
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(f"could not download {url} to {dest}: {e}; pass a local directory instead") from e


def multi30k(directory: str | Path | None = None, src: str = "de", tgt: str = "en", *,
             cache_dir: str | Path | None = None) -> dict[str, tuple[Path, Path]]:
    """{"train" | "val" | "test2016": (source file, target file)} of Multi30k task 1.

    With ``directory`` the files must already be there (nothing is downloaded). Without it they are
    downloaded once into ``cache_dir`` (default ``~/.cache/selfattn/multi30k``) and reused.
    """
    for lang in (src, tgt):
        if lang not in MULTI30K_LANGS:
            raise ValueError(f"Multi30k task 1 has languages {MULTI30K_LANGS}, got {lang!r}")
    if directory is not None:
        return {split: split_files(directory, split, src, tgt) for split in MULTI30K_SPLITS}
    cache = Path(cache_dir) if cache_dir is not None else default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    for split, remote in MULTI30K_SPLITS.items():
        for lang in (src, tgt):
            dest = cache / f"{split}.{lang}"
            if not dest.is_file():
                _download(f"{MULTI30K_URL}{remote}.{lang}.gz", dest)
    return {split: split_files(cache, split, src, tgt) for split in MULTI30K_SPLITS}


__all__ = ["MULTI30K_SPLITS", "MULTI30K_URL", "ParallelCorpus", "ReadConfig", "multi30k", "read_lines",
           "read_parallel", "split_files"]
