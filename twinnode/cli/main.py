"""The `twinnode` command: parses arguments, calls one command, maps errors to exit codes.

Each subcommand lives in `twinnode.cli.<name>` with `register(subparsers)`; this module
only dispatches, so `twinnode --help` lists every command and no command imports JAX until
it runs.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from twinnode import __version__
from twinnode.errors import EXIT_CODES, TwinnodeError

COMMANDS = ("init", "card", "peers", "example", "train", "keygen", "analyze", "check", "run",
            "ctl", "demo")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one subparser per available command module."""
    parser = argparse.ArgumentParser(
        prog="twinnode",
        description="Learn together from private tables through DP synthetic twins.",
        epilog="exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"twinnode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"twinnode.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TwinnodeError as exc:
        print(f"twinnode {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"twinnode {args.command}: interrupted", file=sys.stderr)
        return 130

