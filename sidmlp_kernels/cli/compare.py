"""`sidmlp compare`: a teacher vs its accelerated models on one split."""

from __future__ import annotations

import argparse

from ..errors import InvalidInput
from .common import set_threads


def add_compare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `sidmlp compare` options to a (sub)parser and return it."""
    parser.add_argument("--prepared", required=True, help="directory written by `sidmlp prepare`")
    parser.add_argument("--teacher", required=True, help="run directory of train-teacher (or a saved model dir)")
    parser.add_argument("--accelerated", nargs="+", required=True, metavar="DIR",
                        help="directories written by `sidmlp distill` (SID-MLP or SID-MLP++)")
    parser.add_argument("--sasrec", default=None, metavar="DIR",
                        help="a SASRec saved by `sidmlp analyze` (OUT/sasrec): adds its row as a baseline")
    parser.add_argument("--split", choices=("valid", "test"), default="test", help="users to evaluate")
    parser.add_argument("--beam", type=int, default=50, help="beam size of every decode")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the paired bootstraps")
    parser.add_argument("--json-out", default=None, help="also write the results as JSON here")
    parser.set_defaults(func=cmd_compare)
    return parser



def cmd_compare(args: argparse.Namespace) -> int:
    """`sidmlp compare`: teacher (constrained decode) vs accelerated models, with shares and top-10 overlap."""
    from ..accelerated import AcceleratedRecommender
    from ..data.examples import build_examples
    from ..data.prepare import load_prepared
    from ..evaluation import compare_with_teacher, format_comparison, most_popular_for
    from ..io import provenance, write_json
    from ..teacher.models import load_teacher

    set_threads(args.threads)
    prepared = load_prepared(args.prepared)
    teacher, layout = load_teacher(args.teacher, catalog=prepared.catalog)
    padding = "right" if getattr(teacher.config, "is_encoder_decoder", False) else "left"
    examples = build_examples(prepared.split, prepared.catalog, layout, args.split, padding_side=padding)
    models = {}
    for d in args.accelerated:
        rec = AcceleratedRecommender.from_pretrained(d, teacher=teacher, catalog=prepared.catalog, layout=layout)
        models[_name(rec, d, models)] = rec
    baselines = {}
    if args.sasrec:
        from ..analysis.sasrec import SASRec, sasrec_histories

        sasrec = SASRec.load(args.sasrec)
        if sasrec.num_items != prepared.catalog.num_items:
            raise InvalidInput(f"--sasrec {args.sasrec} scores {sasrec.num_items} items, but --prepared has "
                               f"{prepared.catalog.num_items}; use the SASRec trained on this --prepared directory")
        valid_h, test_h = sasrec_histories(prepared.split, sasrec.config.max_len)
        baselines["sasrec"] = sasrec.recommend(test_h if args.split == "test" else valid_h, k=10)
    popular = most_popular_for(prepared.split, args.split)
    results = compare_with_teacher(teacher, layout, prepared.catalog, examples, models, popular, beam_size=args.beam,
                                   seed=args.seed, baselines=baselines)
    results = {"dataset": getattr(prepared, "config", {}).get("dataset"), "split": args.split, **results}
    print(f"{args.split}, {len(examples)} users, beam {args.beam}\n")
    print(format_comparison(results))
    if args.json_out:
        results["provenance"] = provenance({"catalog": prepared.catalog.fingerprint()})
        write_json(args.json_out, results)
    return 0


def _name(rec, directory: str, taken) -> str:
    """"sidmlp" (the teacher's encoder) or "sidmlp++" (an MLP encoder); the directory too if taken."""
    name = "sidmlp" if rec.uses_teacher_encoder else "sidmlp++"
    return name if name not in taken else f"{name} ({directory})"


def register(sub) -> None:
    """Add `sidmlp compare` to the subcommands."""
    p = sub.add_parser("compare", help="teacher vs distilled models: Recall/NDCG@10, share of teacher, top-10 overlap")
    add_compare_arguments(p)
