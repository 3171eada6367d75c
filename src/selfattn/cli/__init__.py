"""The ``selfattn`` command line.

Each module in this package that defines ``register(subparsers)`` adds one or more subcommands;
a subcommand sets ``func(args) -> int``. Errors a user can fix (bad arguments, bad files) are
raised as :class:`CLIError` (or ``ValueError`` / ``FileNotFoundError``) and printed as one line.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfattn",
        description="Self-attention and the Transformer: inspect the mechanism, train, generate, translate.",
    )
    import selfattn  # the package root (the composition root) holds the version

    parser.add_argument("--version", action="version", version=f"selfattn {selfattn.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"selfattn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"selfattn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
