"""Teacher vs accelerated models on one split, side by side.

For the teacher's constrained attention decode and each `AcceleratedRecommender`:
Recall/NDCG@5/10, each metric as a share of the teacher's, the mean top-10 overlap with
the teacher's lists, and wall time. `sidmlp compare` prints it; the quickstart ends with it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .accelerate import AcceleratedRecommender, evaluate_recommender
from .attention_decode import attention_beam_search
from .catalog import SIDCatalog
from .examples import Examples
from .layout import TokenLayout
from .metrics import evaluate_ranking, top_overlap

__all__ = ["compare_with_teacher", "format_comparison", "add_compare_arguments", "cmd_compare"]

METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


@torch.no_grad()
def compare_with_teacher(
    teacher: nn.Module,
    layout: TokenLayout,
    catalog: SIDCatalog,
    examples: Examples,
    models: Mapping[str, AcceleratedRecommender],
    beam_size: int = 50,
    batch_size: int = 64,
) -> dict[str, dict[str, float]]:
    """{"teacher": metrics, name: metrics + share_of_teacher + top10_overlap_with_teacher, ...}."""
    if not isinstance(examples, Examples) or len(examples) == 0:
        raise ValueError("examples must be a non-empty Examples (from build_examples)")
    teacher.eval()
    ranked, t0 = [], time.perf_counter()
    for lo in range(0, len(examples), batch_size):
        ids, mask, _, _ = examples.batch(torch.arange(lo, min(len(examples), lo + batch_size)))
        ranked.append(attention_beam_search(teacher, layout, catalog, ids, mask, beam_size, 10).items)
    teacher_items = torch.cat(ranked)
    base = evaluate_ranking(teacher_items, examples.target_items, ks=(5, 10))
    results: dict[str, dict[str, float]] = {
        "teacher": dict({k: float(base[k]) for k in METRICS}, seconds=time.perf_counter() - t0)
    }
    for name, rec in models.items():
        m = evaluate_recommender(rec, examples, beam_size=beam_size, top_n=10)
        row = {k: float(m[k]) for k in METRICS + ("seconds", "encode_seconds", "decode_seconds")}
        for k in METRICS:
            row[f"{k}_share_of_teacher"] = row[k] / base[k] if base[k] > 0 else float("nan")
        row["top10_overlap_with_teacher"] = top_overlap(m["items"], teacher_items, 10)
        results[name] = row
    return results


def format_comparison(results: Mapping[str, Mapping[str, float]]) -> str:
    """A markdown table: Recall@10, NDCG@10 (share of the teacher), top-10 overlap, seconds."""
    lines = [
        "| model | Recall@10 | NDCG@10 | top-10 overlap with teacher | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        cells = []
        for k in ("recall@10", "ndcg@10"):
            share = r.get(f"{k}_share_of_teacher")
            cells.append(f"{r[k]:.4f}" + ("" if share is None else f" ({100 * share:.1f}%)"))
        overlap = r.get("top10_overlap_with_teacher")
        cells.append("" if overlap is None else f"{overlap:.3f}")
        cells.append(f"{r['seconds']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_compare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `sidmlp compare` options to a (sub)parser and return it."""
    parser.add_argument("--prepared", required=True, help="directory written by `sidmlp prepare`")
    parser.add_argument("--teacher", required=True, help="run directory of train-teacher (or a saved model dir)")
    parser.add_argument("--accelerated", nargs="+", required=True, metavar="DIR",
                        help="directories written by `sidmlp distill` (SID-MLP or SID-MLP++)")
    parser.add_argument("--split", choices=("valid", "test"), default="test")
    parser.add_argument("--beam", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json-out", default=None, help="also write the results as JSON here")
    parser.set_defaults(func=cmd_compare)
    return parser


def cmd_compare(args: argparse.Namespace) -> int:
    """`sidmlp compare`: teacher (constrained decode) vs accelerated models, with shares and top-10 overlap."""
    from .examples import build_examples
    from .prepare import load_prepared
    from .teacher import load_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    prepared = load_prepared(args.prepared)
    teacher, layout = load_teacher(args.teacher)
    padding = "right" if getattr(teacher.config, "is_encoder_decoder", False) else "left"
    examples = build_examples(prepared.split, prepared.catalog, layout, args.split, padding_side=padding)
    models = {
        str(d): AcceleratedRecommender.load(d, teacher=teacher, catalog=prepared.catalog, layout=layout)
        for d in args.accelerated
    }
    results = compare_with_teacher(teacher, layout, prepared.catalog, examples, models, beam_size=args.beam)
    print(f"{args.split}, {len(examples)} users, beam {args.beam}\n")
    print(format_comparison(results))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0
