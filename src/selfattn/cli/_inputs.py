"""Input text for the verbs that run a model: strict UTF-8 from stdin or files, and over-long inputs cut to the
model's limit with a warning on stderr (never silently, never a deep traceback)."""

from __future__ import annotations

import sys
from pathlib import Path

from . import CLIError


def decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CLIError(f"{where} is not UTF-8 text ({e.reason} at byte {e.start}); expected UTF-8") from None


def read_lines(path: str | None) -> list[str]:
    """The lines of ``path`` (None or "-" = stdin), decoded strictly as UTF-8."""
    if path and path != "-":
        p = Path(path)
        if not p.is_file():
            raise CLIError(f"--input {path!r} is not a file")
        return decode_utf8(p.read_bytes(), f"--input {path!r}").splitlines()
    raw = getattr(sys.stdin, "buffer", None)  # a text stream without bytes (e.g. io.StringIO) is already decoded
    return (decode_utf8(raw.read(), "stdin") if raw is not None else sys.stdin.read()).splitlines()


def warn(command: str, message: str) -> None:
    print(f"selfattn {command}: warning: {message}", file=sys.stderr)


def cut(command: str, ids: list[list[int]], limit: int, what: str = "input", keep: str = "first") -> list[list[int]]:
    """Each id list cut to ``limit`` tokens (its first ones, or its last with ``keep="last"``), warning once."""
    long = [i for i, x in enumerate(ids) if len(x) > limit]
    if not long:
        return ids
    first = long[0]
    warn(command, f"{len(long)} {what}(s) longer than the model's limit of {limit} tokens were cut to it, keeping "
                  f"the {keep} {limit} (e.g. {what} {first + 1}: {len(ids[first])} tokens)")
    return [x[-limit:] if keep == "last" else x[:limit] for x in ids]


__all__ = ["cut", "decode_utf8", "read_lines", "warn"]
