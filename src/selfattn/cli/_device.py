"""``--device`` for every verb that runs a model: ``auto`` or a device this machine really has, else one line."""

from __future__ import annotations

import argparse

from . import CLIError

HELP = "cpu, cuda, cuda:N, mps or auto (default auto: the GPU when there is one, else the CPU)"


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help=HELP)


def resolve_device(text: str) -> str:
    """The device ``text`` names, checked against this machine (``auto``: cuda, then mps, then cpu)."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device expects {HELP.split(' (')[0]}, got {text!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise CLIError(f"--device {text}: CUDA is not available here ({why}); use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {text}: there are {torch.cuda.device_count()} CUDA device(s), "
                           f"expected an index below that")
    elif dev.type == "mps" and not has_mps:
        raise CLIError(f"--device {text}: MPS is not available here; use --device cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise CLIError(f"--device expects {HELP.split(' (')[0]}, got {text!r}")
    return str(dev)


__all__ = ["add_device_argument", "resolve_device"]
