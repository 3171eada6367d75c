"""Atomic file writes, paths confined to a directory, a directory lock: the leaf module every layer may use
(it imports nothing of selfattn).

A reader never sees a half-written file: data goes to a temporary file beside the target, is fsynced, then
``os.replace``d over the target (atomic on POSIX and Windows), and the directory entry is fsynced too, so a crash
at any moment leaves either the old file or the new one under the final name — never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath
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


class DirectoryLocked(RuntimeError):
    """Another live process holds the lock of a directory (the message names its pid)."""


class DirLock:
    """An exclusive lock on a directory: ``DIR/.lock`` held with ``fcntl.flock``, holding the holder's pid.

    The kernel releases a flock when its process dies, so a lock file left by a killed process is *stale*:
    the next :meth:`acquire` takes it over (and reports it in :attr:`stale_pid`). A lock held by a live
    process raises :class:`DirectoryLocked` naming that pid. Use as a context manager or acquire/release."""

    NAME = ".lock"

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / self.NAME
        self.fd: int | None = None
        self.stale_pid: int | None = None  # pid written in a lock file whose holder was gone

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def acquire(self) -> DirLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                pid = self._holder()
                raise DirectoryLocked(f"{str(self.path.parent)!r} is in use by another process "
                                      f"(pid {pid if pid is not None else 'unknown'}, lock file {self.path.name})"
                                      ) from None
            try:  # the holder may have unlinked the file between our open and flock: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = self._holder()
        self.stale_pid = old if old is not None and old != os.getpid() else None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # unlink while still holding it: a waiting opener re-checks the inode
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["DirLock", "DirectoryLocked", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "confined_path", "fsync_dir"]
