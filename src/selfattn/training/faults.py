"""Fault injection for tests: make a training process signal itself at an exact point, never by timing.

The environment variable ``SELFATTN_TEST_FAULT`` names one point and one signal::

    SELFATTN_TEST_FAULT=SIGTERM:step=3        after optimizer step 3 completes (before its checkpoint)
    SELFATTN_TEST_FAULT=SIGKILL:save=rename   inside a checkpoint save, just before the directory rename
    SELFATTN_TEST_FAULT=SIGINT:save=weights   inside a save, after the weights file is written
    SELFATTN_TEST_FAULT=SIGKILL:save=rename@3 inside the save of step 3 only

Stages of a save: ``weights`` (model.safetensors written), ``rename`` (complete temporary directory, not yet
renamed), ``renamed`` (renamed into place, not yet pruned). Unset (the normal case) every point is a no-op.
The signal is delivered to this process with ``os.kill``; a handler (the CLI installs one for SIGINT/SIGTERM)
runs before :func:`fault_point` returns.
"""

from __future__ import annotations

import os
import signal

ENV = "SELFATTN_TEST_FAULT"


def _parse(text: str) -> tuple[signal.Signals, str, str]:
    try:
        sig, point = text.split(":", 1)
        where, value = point.split("=", 1)
        return signal.Signals[sig], where, value
    except (ValueError, KeyError):
        raise ValueError(f"{ENV} expects SIGNAL:POINT=VALUE like SIGTERM:step=3 or SIGKILL:save=rename, "
                         f"got {text!r}") from None


def fault_point(where: str, value: object, step: int | None = None) -> None:
    """Deliver the configured signal when (``where``, ``value``) — or ``value@step`` — is the configured point
    (once per process)."""
    text = os.environ.get(ENV)
    if not text:
        return
    sig, want_where, want_value = _parse(text)
    if want_where == where and want_value in (str(value), f"{value}@{step}"):
        os.environ.pop(ENV)  # once: a resumed save at the same point must not fire again in this process
        os.kill(os.getpid(), sig)


__all__ = ["ENV", "fault_point"]
