"""Atomic file writes: the one leaf module every layer may use (it imports nothing of selfattn).

A reader never sees a half-written file: data goes to a temporary file beside the target, is fsynced, then
``os.replace``d over the target (atomic on POSIX and Windows), and the directory entry is fsynced too, so a crash
at any moment leaves either the old file or the new one under the final name — never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new entry in directory ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, mkdir: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, os.replace, fsync dir).

    ``mkdir=True`` creates the parent directory first. The file gets ordinary permissions (0666 & ~umask).
    Returns the path."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str, *, mkdir: bool = False) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 ``text``."""
    return atomic_write_bytes(path, text.encode("utf-8"), mkdir=mkdir)


def atomic_write_json(path: str | Path, obj: Any, *, mkdir: bool = False) -> Path:
    """``obj`` as indented, key-sorted JSON (one trailing newline), written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n", mkdir=mkdir)


__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fsync_dir"]
