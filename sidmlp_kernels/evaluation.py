"""Evaluation of any ranker on a split: accelerated models, the teacher, most-popular.

`evaluate_recommender` times and scores an AcceleratedRecommender; `compare_with_teacher` puts a
teacher's constrained attention decode and its accelerated models side by side (Recall/NDCG@5/10,
each metric as a share of the teacher's, the mean top-10 overlap with the teacher's lists, wall
time); `most_popular_items` is the baseline every quality claim is read against. `sidmlp compare`
prints the comparison; the quickstart ends with it.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Optional

import torch
from torch import nn

from .accelerated import AcceleratedRecommender
from .decode.types import check_beam_args
from .teacher.attention_decode import attention_beam_search
from .data.catalog import SIDCatalog
from .data.examples import Examples
from .data.layout import TokenLayout
from .metrics import evaluate_ranking, top_overlap
from .errors import InvalidInput

__all__ = ["compare_with_teacher", "evaluate_recommender", "format_comparison", "most_popular_baseline", "most_popular_items"]

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
        raise InvalidInput("examples must be a non-empty Examples (from build_examples)")
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


def most_popular_baseline(
    sequences: list[list[int]], examples: Examples, extra: Optional[list[int]] = None, ks: tuple[int, ...] = (5, 10)
) -> dict[str, float]:
    """Recall/NDCG@k of recommending the globally most frequent items (counts from sequences + extra)."""
    ranked = most_popular_items(sequences, max(ks), extra).unsqueeze(0).expand(len(examples), -1)
    return evaluate_ranking(ranked, examples.target_items, ks=ks)


def most_popular_items(sequences: list[list[int]], n: int, extra: Optional[list[int]] = None) -> torch.Tensor:
    """The n most frequent item ids in sequences + extra (ties: smaller id first)."""
    counts: dict[int, int] = {}
    for seq in sequences:
        for i in seq:
            counts[i] = counts.get(i, 0) + 1
    for i in extra or []:
        counts[i] = counts.get(i, 0) + 1
    return torch.tensor(sorted(counts, key=lambda i: (-counts[i], i))[:n], dtype=torch.long)


def evaluate_recommender(
    rec: AcceleratedRecommender,
    examples,
    beam_size: int = 50,
    top_n: int = 10,
    batch_size: int = 256,
    max_users: Optional[int] = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Recall/NDCG@5/10 of rec.generate over Examples, with encoder / decode wall times and the ranked items."""
    import time

    from tqdm.auto import tqdm

    from .metrics import evaluate_ranking

    n = len(examples) if max_users is None else min(len(examples), max_users)
    ranked, enc_s, dec_s = [], 0.0, 0.0
    for lo in tqdm(range(0, n, batch_size), desc="generate", disable=not show_progress, leave=False):
        ids, mask, _, _ = examples.batch(torch.arange(lo, min(n, lo + batch_size)))
        check_beam_args(beam_size, top_n)
        t0 = time.perf_counter()
        encoded = rec.encode(ids, mask)
        t1 = time.perf_counter()
        out = rec.decode(rec.context_projection(encoded), beam_size, top_n)
        t2 = time.perf_counter()
        enc_s, dec_s = enc_s + t1 - t0, dec_s + t2 - t1
        ranked.append(out.items)
    items = torch.cat(ranked)
    metrics: dict[str, Any] = evaluate_ranking(items, examples.target_items[:n], ks=(5, 10))
    metrics.update(num_users=n, encode_seconds=enc_s, decode_seconds=dec_s, seconds=enc_s + dec_s, items=items)
    return metrics
