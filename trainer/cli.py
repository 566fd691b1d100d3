"""`edge-trainer`: train, calibrate, evaluate and benchmark VAEs; create keys and export bundles.

Each command group lives beside the code it drives and exposes `register(subparsers)`; the list is explicit
so a module that fails to import fails loudly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from trainer import __version__

COMMAND_MODULES = (
    "trainer.commands",  # fit, evaluate
    "trainer.benchmarks.cli",  # benchmark cmapss|skab
    "export.cli",  # keygen, export
)


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type for commands: an integer >= `minimum` (a usage error otherwise, not a traceback
    later)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edge-trainer {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
