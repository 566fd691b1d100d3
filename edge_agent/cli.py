"""`edge-agent`: the gateway's command line.

Each command group lives beside the code it drives and exposes `register(subparsers)`. The list below is
explicit on purpose: a module that fails to import takes the CLI down loudly instead of a command vanishing.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from edge_agent import __version__

COMMAND_MODULES = (
    "edge_agent.commands",  # run, check-config, status
    "edge_agent.bundle.cli",  # bundle install|list|rollback|verify|remove
    "edge_agent.doctor",  # doctor
    "edge_agent.simulator.cli",  # simulate
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("--log-level", default=None, help="override the configured log level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level:
        logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
