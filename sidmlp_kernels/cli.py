"""The `sidmlp` command line: prepare data, train, distil, evaluate, benchmark."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .prepare import prepare

    prepare(
        args.dataset,
        args.out,
        num_levels=args.levels,
        codebook_size=args.codebook_size,
        max_history=args.max_history,
        k_core=args.k_core,
        pca_dim=args.pca_dim,
        seed=args.seed,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sidmlp",
        description="Accelerate Semantic-ID generative recommenders: data, teacher, SID-MLP, benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="load a packaged dataset, split it, build Semantic IDs and the catalog")
    p.add_argument("--dataset", default="ml-100k", help="ml-100k or ml-1m (default: ml-100k)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--levels", type=int, default=4, help="SID digits L incl. the dedup digit (default 4)")
    p.add_argument("--codebook-size", type=int, default=256, help="codes per digit K (default 256)")
    p.add_argument("--max-history", type=int, default=20, help="history items kept per instance")
    p.add_argument("--k-core", type=int, default=None, help="optional k-core filter")
    p.add_argument("--pca-dim", type=int, default=None, help="optional whitened PCA before quantisation")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_prepare)
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


if __name__ == "__main__":
    sys.exit(main())
