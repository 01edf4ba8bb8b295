"""The `sidmlp` command line: prepare data, train a teacher, distil, evaluate, compare, analyse.

One module per command group; each has `register(subparsers)`. Building the parser imports no
torch: every command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from . import analyze, compare, distill, import_teacher, prepare, quickstart, recommend, teacher

COMMAND_MODULES = (prepare, teacher, import_teacher, distill, quickstart, compare, analyze, recommend)


class _HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to each option's help, where an option has a default to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        shown = not hidden and not action.required
        if shown and "%(default)" not in text and action.option_strings:
            text = f"{text} (default: %(default)s)" if text else "default: %(default)s"
        return text


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's --help shows the defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        default = kwargs.get("default")
        if "help" not in kwargs and default is not None and default is not False:
            kwargs["help"] = "default: %(default)s"  # argparse prints no line for an option without help
        return super().add_argument(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    from .. import __version__

    parser = _Parser(
        prog="sidmlp",
        description="Accelerate Semantic-ID generative recommenders: data, teacher, SID-MLP, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"sidmlp-kernels {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
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
    from ..errors import SidmlpError

    try:
        return int(args.func(args) or 0)
    except (SidmlpError, FileNotFoundError) as err:
        # Input the user can fix: one line. Anything else is a bug and keeps its traceback.
        print(f"sidmlp {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sidmlp {args.command}: interrupted", file=sys.stderr)
        return 130
