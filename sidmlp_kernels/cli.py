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


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis.rankings import student_rankings, teacher_rankings
    from .analysis.report import run_analysis
    from .prepare import load_prepared

    prepared = load_prepared(args.prepared)
    rankings = {}
    if args.teacher:
        rankings["teacher"] = teacher_rankings(prepared, args.teacher)
    if args.student:
        if not args.teacher:
            raise ValueError("--student needs --teacher (SID-MLP reuses the teacher's encoder)")
        rankings["sid-mlp"] = student_rankings(prepared, args.student, args.teacher)
    max_seconds = args.sasrec_minutes * 60 if args.sasrec_minutes else None
    run_analysis(prepared, args.out, rankings, sasrec_epochs=args.sasrec_epochs, seed=args.seed,
                 max_seconds=max_seconds)
    print(f"[sidmlp analyze] report written to {args.out}/report.md")
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

    from .teacher import add_teacher_arguments

    add_teacher_arguments(sub)

    from .distill import add_distill_arguments, cmd_distill

    p = sub.add_parser("distill", help="distil SID-MLP (or SID-MLP++) heads from a trained teacher")
    add_distill_arguments(p).set_defaults(func=cmd_distill)

    from .accelerate import add_quickstart_arguments, cmd_quickstart

    p = sub.add_parser("quickstart", help="prepare ML-100K, train a small teacher, distil, compare (the main job)")
    add_quickstart_arguments(p).set_defaults(func=cmd_quickstart)

    from .compare import add_compare_arguments

    p = sub.add_parser("compare", help="teacher vs distilled models: Recall/NDCG@10, share of teacher, top-10 overlap")
    add_compare_arguments(p)

    from .benchmark import add_bench_arguments, cmd_bench

    p = sub.add_parser("bench", help="end-to-end benchmark: HF generate vs attention decode vs SID-MLP backends")
    add_bench_arguments(p).set_defaults(func=cmd_bench)

    p = sub.add_parser("analyze", help="memorization vs generalization study: labels, SASRec, hybrid, report")
    p.add_argument("--prepared", required=True, help="directory written by `sidmlp prepare`")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--teacher", default=None, help="trained teacher directory (adds its rankings)")
    p.add_argument("--student", default=None, help="saved SID-MLP directory (adds its rankings; needs --teacher)")
    p.add_argument("--sasrec-epochs", type=int, default=200)
    p.add_argument("--sasrec-minutes", type=float, default=None, help="time budget for SASRec training")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_analyze)
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
