"""`sidmlp analyze`: the memorization / generalization report."""

from __future__ import annotations

import argparse
from ..errors import InvalidInput


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..analysis.rankings import student_rankings, teacher_rankings
    from ..analysis.report import run_analysis
    from ..data.prepare import load_prepared

    prepared = load_prepared(args.prepared)
    rankings = {}
    if args.teacher:
        rankings["teacher"] = teacher_rankings(prepared, args.teacher)
    if args.student:
        if not args.teacher:
            raise InvalidInput("--student needs --teacher (SID-MLP reuses the teacher's encoder)")
        rankings["sid-mlp"] = student_rankings(prepared, args.student, args.teacher)
    max_seconds = args.sasrec_minutes * 60 if args.sasrec_minutes else None
    run_analysis(prepared, args.out, rankings, sasrec_epochs=args.sasrec_epochs, seed=args.seed,
                 max_seconds=max_seconds, progress=True)
    print(f"[sidmlp analyze] report written to {args.out}/report.md")
    return 0


def register(sub) -> None:
    """Add `sidmlp analyze` to the subcommands."""
    p = sub.add_parser("analyze", help="memorization vs generalization study: labels, SASRec, hybrid, report")
    p.add_argument("--prepared", required=True, help="directory written by `sidmlp prepare`")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--teacher", default=None, help="trained teacher directory (adds its rankings)")
    p.add_argument("--student", default=None, help="saved SID-MLP directory (adds its rankings; needs --teacher)")
    p.add_argument("--sasrec-epochs", type=int, default=200, help="most SASRec epochs (early stopping on validation)")
    p.add_argument("--sasrec-minutes", type=float, default=None, help="time budget for SASRec training")
    p.add_argument("--seed", type=int, default=0, help="seed of SASRec and the hybrid search")
    p.set_defaults(func=cmd_analyze)
