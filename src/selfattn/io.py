"""Leaf file utilities: atomic writes, directory fsync, paths confined to a directory.

Imports nothing of the project, so every layer may use it.

* :func:`atomic_write_bytes` / :func:`atomic_write_json`: write a temporary file in the same directory,
  fsync it, ``os.replace`` it over the target and fsync the directory — a reader (or a process killed at
  any moment) sees the old content or the new one, never a mix.
* :func:`confined_path`: a path named *inside* a file on disk (a shard in ``model.safetensors.index.json``,
  a module folder in ``modules.json``) resolved against its directory, symlinks included, and refused when
  it is absolute or lands outside that directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new entry in directory ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):  # Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, then os.replace."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def confined_path(root: str | Path, entry: Any, *, source: str | Path, within: str | Path | None = None) -> Path:
    """``root / entry`` with symlinks resolved; ValueError unless it stays inside ``within`` (default ``root``).

    ``entry`` comes from file ``source`` (named in the error, with the offending entry). Refused: anything
    but a string, absolute paths (POSIX or Windows style), and relative ones that climb out through ``..``
    or a symlink. ``""`` and ``"."`` name ``root`` itself.
    """
    if not isinstance(entry, str):
        raise ValueError(f"{source}: expected a relative path string, got {entry!r}")
    if PurePosixPath(entry).is_absolute() or PureWindowsPath(entry).is_absolute() or PureWindowsPath(entry).drive:
        raise ValueError(f"{source}: path {entry!r} is absolute; expected a path inside {within or root}")
    fence = Path(within if within is not None else root).resolve()
    target = (Path(root).resolve() / entry).resolve()
    if target != fence and fence not in target.parents:
        raise ValueError(f"{source}: path {entry!r} leads outside {fence} (to {target}); "
                         f"expected a path inside the checkpoint directory")
    return target


__all__ = ["atomic_write_bytes", "atomic_write_json", "confined_path", "fsync_dir"]
