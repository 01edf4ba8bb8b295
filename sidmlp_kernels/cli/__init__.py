"""The `sidmlp` command line: prepare data, train a teacher, distil, evaluate, compare, analyse.

One module per command group; each has `register(subparsers)`. Building the parser imports no
torch: every command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `sidmlp` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"sidmlp {args.command}: error: {err}", file=sys.stderr)
        return 2
