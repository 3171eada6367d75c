"""Writing an export directory atomically: build it beside the target, then rename it into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_out_dir(out: str | Path, *, force: bool = False) -> Path:
    """``out`` must be new or an empty directory (``force``: an existing one is replaced)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"expected an output directory, got the file {str(out)!r}")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"output directory {str(out)!r} is not empty; expected a new or empty directory "
                         "(pass --force to replace it)")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; on success it replaces ``out`` in one rename."""
    out = check_out_dir(out, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.is_dir():  # empty (checked above) or replaced under force
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
