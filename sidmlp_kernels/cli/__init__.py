"""The `sidmlp` command line: prepare data, train a teacher, distil, evaluate, compare, analyse.

One module per command group; each has `register(subparsers)`. Building the parser imports no
torch: every command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from . import analyze, compare, distill, prepare, quickstart, teacher

COMMAND_MODULES = (prepare, teacher, distill, quickstart, compare, analyze)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sidmlp",
        description="Accelerate Semantic-ID generative recommenders: data, teacher, SID-MLP, evaluation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _show_library_logs() -> None:
    """The package logs through `logging`; the command line shows its INFO messages on stderr."""
    logger = logging.getLogger("sidmlp_kernels")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `sidmlp` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _show_library_logs()
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"sidmlp {args.command}: error: {err}", file=sys.stderr)
        return 2
