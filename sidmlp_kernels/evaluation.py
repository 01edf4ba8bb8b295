"""Evaluation of any ranker on a split: accelerated models, the teacher, most-popular.

`evaluate_recommender` times and scores an AcceleratedRecommender; `quality_report` reads ranked
lists against most-popular (always beside them), with paired bootstraps over users against
most-popular and, for students, against their teacher, the distinct items recommended and the
share of most-popular items in each top-10; `compare_with_teacher` runs a teacher's constrained
attention decode and its accelerated models and reports them so. `sidmlp compare` prints the
comparison; the quickstart ends with it.
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
from .metrics import evaluate_ranking, ndcg_at_k, paired_bootstrap, recall_at_k, top_overlap
from .errors import InvalidInput

__all__ = ["compare_with_teacher", "evaluate_recommender", "format_comparison", "most_popular_baseline", "most_popular_items",
           "most_popular_for",
           "quality_report"]

METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def quality_report(
    ranked: Mapping[str, torch.Tensor],
    targets: torch.Tensor,
    popular: torch.Tensor,
    *,
    teacher: Optional[str] = "teacher",
    baselines: tuple[str, ...] = ("sasrec",),
    k: int = 10,
    seed: int = 0,
    num_samples: int = 10000,
) -> dict[str, dict[str, Any]]:
    """The models block of a comparison (docs/architecture.md, "Measuring quality").

    ranked: name -> (N, >= k) ranked item ids (-1 = empty slot); popular: the (k,) most-popular list.
    Returns {"most_popular": metrics, name: metrics + distinct_items + most_popular_share +
    vs_most_popular, ...}; a model that is neither the teacher nor a baseline (a student) also
    gets share_of_teacher, vs_teacher and top10_overlap. Each vs_* entry is [mean difference,
    95% low, 95% high] of a paired bootstrap over users.
    """
    targets = torch.as_tensor(targets, dtype=torch.long)
    n = int(targets.shape[0])
    popular = torch.as_tensor(popular, dtype=torch.long)[:k]
    if n == 0 or popular.numel() == 0:
        raise InvalidInput("quality_report needs at least one user and a non-empty most-popular list")
    lists = {"most_popular": popular.unsqueeze(0).expand(n, -1), **dict(ranked)}
    for name, items in lists.items():
        if items.dim() != 2 or items.shape[0] != n:
            raise InvalidInput(f"ranked[{name!r}] must be (N={n}, >= 1) item ids, got shape {tuple(items.shape)}")
    if teacher is not None and teacher not in ranked:
        raise InvalidInput(f"teacher={teacher!r} is not among the ranked models {sorted(ranked)}")
    per_user = {name: {m: fn(items, targets, k, per_instance=True) for m, fn in (("recall@10", recall_at_k),
                                                                                ("ndcg@10", ndcg_at_k))}
                for name, items in lists.items()}

    def versus(a: str, b: str) -> dict[str, list[float]]:
        out = {}
        for metric in ("ndcg@10", "recall@10"):
            boot = paired_bootstrap(per_user[a][metric], per_user[b][metric], num_samples=num_samples, seed=seed)
            out[metric] = [boot["mean_difference"], boot["ci_low"], boot["ci_high"]]
        return out

    report: dict[str, dict[str, Any]] = {}
    for name, items in lists.items():
        top = items[:, :k]
        row: dict[str, Any] = {m: float(v.mean()) for m, v in per_user[name].items()}
        row["distinct_items"] = int(torch.unique(top[top >= 0]).numel())
        row["most_popular_share"] = float(torch.isin(top, popular).double().sum(dim=1).mean() / k)
        if name != "most_popular":
            row["vs_most_popular"] = versus(name, "most_popular")
        if teacher is not None and name not in ("most_popular", teacher, *baselines):
            row["share_of_teacher"] = {
                m: row[m] / report[teacher][m] if report[teacher][m] > 0 else float("nan")
                for m in ("ndcg@10", "recall@10")
            }
            row["vs_teacher"] = versus(name, teacher)
            row["top10_overlap"] = top_overlap(top, lists[teacher][:, :k], k)
        report[name] = row
    return report


@torch.no_grad()
def compare_with_teacher(
    teacher: nn.Module,
    layout: TokenLayout,
    catalog: SIDCatalog,
    examples: Examples,
    models: Mapping[str, AcceleratedRecommender],
    popular: torch.Tensor,
    beam_size: int = 50,
    batch_size: int = 64,
    seed: int = 0,
    baselines: Optional[Mapping[str, torch.Tensor]] = None,
) -> dict[str, Any]:
    """The teacher's constrained attention decode and each accelerated model on `examples`, with
    most-popular (`popular`, its top-10 list) beside them: {"users", "beam", "models": quality_report
    (each model also with "seconds")}. `baselines` adds already ranked (N, >= 10) lists of other
    recommenders (e.g. {"sasrec": ...}) as baseline rows: against most-popular, not the teacher."""
    if not isinstance(examples, Examples) or len(examples) == 0:
        raise InvalidInput("examples must be a non-empty Examples (from build_examples)")
    ranked, seconds, t0 = [], {}, time.perf_counter()
    for lo in range(0, len(examples), batch_size):
        ids, mask, _, _ = examples.batch(torch.arange(lo, min(len(examples), lo + batch_size)))
        ranked.append(attention_beam_search(teacher, layout, catalog, ids, mask, beam_size, 10).items)
    lists = {"teacher": torch.cat(ranked)}
    seconds["teacher"] = time.perf_counter() - t0
    for name, rec in models.items():
        m = evaluate_recommender(rec, examples, beam_size=beam_size, top_n=10)
        lists[name], seconds[name] = m["items"], m["seconds"]
    baselines = dict(baselines or {})
    clash = sorted(set(baselines) & set(lists))
    if clash:
        raise InvalidInput(f"baselines and models share the names {clash}")
    lists.update(baselines)
    report = quality_report(lists, examples.target_items, popular, teacher="teacher", baselines=tuple(baselines),
                            seed=seed)
    for name, value in seconds.items():
        report[name]["seconds"] = value
    return {"users": len(examples), "beam": beam_size, "models": report}


def format_comparison(results: Mapping[str, Any]) -> str:
    """A markdown table of compare_with_teacher's results: most-popular, the teacher, the students."""
    lines = [
        "| model | Recall@10 | NDCG@10 | NDCG@10 vs most-popular (95%) | NDCG@10 vs teacher (95%) "
        "| distinct items | most-popular share of top-10 | top-10 overlap with teacher | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def interval(v: Optional[list[float]]) -> str:
        return "" if v is None else f"{v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}]"

    for name, r in results["models"].items():
        share = r.get("share_of_teacher", {})
        cells = [f"{r[m]:.4f}" + (f" ({100 * share[m]:.1f}%)" if m in share else "") for m in ("recall@10", "ndcg@10")]
        cells.append(interval(r.get("vs_most_popular", {}).get("ndcg@10")))
        cells.append(interval(r.get("vs_teacher", {}).get("ndcg@10")))
        cells.append(str(r["distinct_items"]))
        cells.append(f"{r['most_popular_share']:.2f}")
        cells.append(f"{r['top10_overlap']:.3f}" if "top10_overlap" in r else "")
        cells.append(f"{r['seconds']:.2f}" if "seconds" in r else "")
        shown = "most-popular" if name == "most_popular" else name
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def most_popular_baseline(
    sequences: list[list[int]], examples: Examples, extra: Optional[list[int]] = None, ks: tuple[int, ...] = (5, 10)
) -> dict[str, float]:
    """Recall/NDCG@k of recommending the globally most frequent items (counts from sequences + extra)."""
    ranked = most_popular_items(sequences, max(ks), extra).unsqueeze(0).expand(len(examples), -1)
    return evaluate_ranking(ranked, examples.target_items, ks=ks)


def most_popular_for(split, part: str, n: int = 10) -> torch.Tensor:
    """Most-popular list for evaluating `part` ('valid' or 'test') of a leave-last-out split: counts
    over the training sequences, plus the validation targets when testing (what a model trained
    up to the validation item has seen)."""
    if part not in ("valid", "test"):
        raise InvalidInput(f"part must be 'valid' or 'test', got {part!r}")
    return most_popular_items(split.train_sequences, n, list(split.valid_targets) if part == "test" else None)


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
