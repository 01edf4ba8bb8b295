"""Ranking metrics: Recall@K and NDCG@K with one target per instance, top-k overlap of two rankers,
and a paired bootstrap for "is A better than B on the same users"."""

from __future__ import annotations

import torch
from .errors import InvalidInput, InvalidInputType


def _check(ranked: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ranked = torch.as_tensor(ranked)
    targets = torch.as_tensor(targets)
    if ranked.dim() != 2:
        raise InvalidInput(f"ranked must be 2-D (instances, list length), got shape {tuple(ranked.shape)}")
    if targets.dim() != 1 or targets.shape[0] != ranked.shape[0]:
        raise InvalidInput(
            f"targets must be 1-D with {ranked.shape[0]} entries, got shape {tuple(targets.shape)}"
        )
    if ranked.dtype.is_floating_point or targets.dtype.is_floating_point:
        raise InvalidInputType("ranked and targets must hold integer item ids")
    return ranked.long(), targets.long()


def dedup_ranked(ranked: torch.Tensor) -> torch.Tensor:
    """Drop repeated items in each ranked list (first occurrence wins), pad with -1 at the end."""
    ranked, _ = _check(ranked, torch.zeros(torch.as_tensor(ranked).shape[0], dtype=torch.long))
    n, m = ranked.shape
    if m == 0:
        return ranked.clone()
    same = ranked.unsqueeze(2) == ranked.unsqueeze(1)  # (n, m, m)
    earlier = torch.tril(torch.ones(m, m, dtype=torch.bool), diagonal=-1)
    repeated = (same & earlier).any(dim=2) | (ranked < 0)
    # Move kept entries to the front, preserving their order.
    keys = repeated.long() * m + torch.arange(m)
    order = torch.argsort(keys, dim=1)
    out = torch.gather(ranked, 1, order)
    return torch.where(torch.gather(repeated, 1, order), torch.full_like(out, -1), out)


def target_ranks(ranked: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each target in its deduplicated list; 0 where it is absent."""
    ranked, targets = _check(ranked, targets)
    deduped = dedup_ranked(ranked)
    hit = (deduped == targets.unsqueeze(1)) & (targets.unsqueeze(1) >= 0)
    positions = torch.arange(1, ranked.shape[1] + 1).expand_as(hit)
    return torch.where(hit, positions, torch.zeros_like(positions)).max(dim=1).values


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInput(f"k must be a positive int, got {k!r}")


def recall_at_k(ranked, targets, k: int, per_instance: bool = False):
    """Recall@k (= hit rate with one target); mean, or a float tensor per instance."""
    _check_k(k)
    ranks = target_ranks(ranked, targets)
    values = ((ranks >= 1) & (ranks <= k)).float()
    return values if per_instance else float(values.mean()) if values.numel() else 0.0


def ndcg_at_k(ranked, targets, k: int, per_instance: bool = False):
    """NDCG@k with one target: 1/log2(rank+1) if rank <= k else 0."""
    _check_k(k)
    ranks = target_ranks(ranked, targets)
    inside = (ranks >= 1) & (ranks <= k)
    values = torch.where(inside, 1.0 / torch.log2(ranks.float() + 1.0), torch.zeros(ranks.shape))
    return values if per_instance else float(values.mean()) if values.numel() else 0.0


def evaluate_ranking(ranked, targets, ks: tuple[int, ...] = (5, 10)) -> dict[str, float]:
    """Recall@k and NDCG@k for each k, as a flat dict like {'recall@10': ..., 'ndcg@10': ...}."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(ranked, targets, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranked, targets, k)
    return out


def top_overlap(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> float:
    """Mean |top-k(a) & top-k(b)| / k over users, two (N, >=k) ranked item lists (-1 slots ignored)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0]:
        raise InvalidInput(f"a and b must be (N, M) ranked lists for the same N users, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    _check_k(k)
    total = 0.0
    for ra, rb in zip(a[:, :k].tolist(), b[:, :k].tolist()):
        total += len({i for i in ra if i >= 0} & {i for i in rb if i >= 0}) / k
    return total / max(1, a.shape[0])


def paired_bootstrap(
    a, b, num_samples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean of a - b over paired per-instance values, with a percentile bootstrap interval.

    share_not_better is the fraction of resamples whose mean difference is <= 0 (a one-sided
    bootstrap p-value for "a beats b").
    """
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    if a.dim() != 1 or a.shape != b.shape or a.numel() == 0:
        raise InvalidInput(f"a and b must be non-empty 1-D with the same length, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if not 0.0 < confidence < 1.0:
        raise InvalidInput(f"confidence must be in (0, 1), got {confidence}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise InvalidInput(f"num_samples must be a positive int, got {num_samples!r}")
    diff = a - b
    gen = torch.Generator().manual_seed(seed)
    means = torch.cat([
        diff[torch.randint(0, diff.numel(), (min(1000, num_samples - lo), diff.numel()), generator=gen)].mean(1)
        for lo in range(0, num_samples, 1000)
    ])
    tail = (1.0 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return dict(mean_difference=float(diff.mean()), ci_low=low, ci_high=high,
                share_not_better=float((means <= 0).double().mean()), num_samples=num_samples,
                confidence=confidence)
