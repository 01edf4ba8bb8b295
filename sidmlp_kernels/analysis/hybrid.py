"""Memorization-aware fusion of an item-ID model and a GR model (arXiv 2603.19809).

Per instance the ID model's max softmax probability (MSP, over all items) says how sure
it is; alpha = sigmoid(q * (MSP - tau)) is the ID model's weight. Each model's top-K
scores are min-max normalised within the instance over its valid entries (all 1 when
max == min), candidates are the union of both lists, a model that did not list an item
gives it 0, and the fused score alpha * s_id + (1 - alpha) * s_gr ranks the top k.

Padding: an entry is invalid when its item is < 0 or its score is -inf (dead beams).
Repeated items inside one list keep only their first (best) entry. Ties in the fused
score break by rank in the model with the larger weight (the ID model when alpha >= 0.5),
then by rank in the other, so alpha = 1 (0) reproduces the ID (GR) model's own ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from ..errors import InvalidInput

__all__ = [
    "DEFAULT_QS",
    "DEFAULT_TAUS",
    "DEFAULT_ALPHAS",
    "max_softmax_probability",
    "minmax_normalize",
    "adaptive_alpha",
    "fuse_rankings",
    "grid_search_adaptive",
    "grid_search_fixed",
]

DEFAULT_QS = (1.0, 5.0, 9.0, 13.0, 17.0, 21.0, 25.0)
DEFAULT_TAUS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
DEFAULT_ALPHAS = tuple(i / 10 for i in range(11))


def max_softmax_probability(logits: torch.Tensor) -> torch.Tensor:
    """Max softmax probability over all items per row of (N, num_items) logits."""
    logits = torch.as_tensor(logits)
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise InvalidInput(f"logits must be (N, num_items), got shape {tuple(logits.shape)}")
    if not logits.dtype.is_floating_point:
        raise InvalidInput(f"logits must be floating point, got {logits.dtype}")
    return torch.softmax(logits.float(), dim=1).max(dim=1).values


def _check_list(items: torch.Tensor, scores: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate one model's (items, scores) and return (items, float scores, valid mask)."""
    items = torch.as_tensor(items)
    scores = torch.as_tensor(scores)
    if items.dim() != 2:
        raise InvalidInput(f"{name}_items must be (N, K), got shape {tuple(items.shape)}")
    if items.dtype.is_floating_point or items.dtype == torch.bool:
        raise InvalidInput(f"{name}_items must hold integer item ids, got {items.dtype}")
    if scores.shape != items.shape:
        raise InvalidInput(
            f"{name}_scores must have the shape of {name}_items {tuple(items.shape)}, got {tuple(scores.shape)}"
        )
    if not scores.dtype.is_floating_point:
        raise InvalidInput(f"{name}_scores must be floating point, got {scores.dtype}")
    scores = scores.double()
    if torch.isnan(scores).any() or (scores == float("inf")).any():
        raise InvalidInput(f"{name}_scores must not contain NaN or +inf")
    items = items.long()
    valid = (items >= 0) & torch.isfinite(scores)
    k = items.shape[1]
    if k > 1:
        # Repeated item in one list: keep the first (best-ranked) entry only.
        same = (items.unsqueeze(2) == items.unsqueeze(1)) & valid.unsqueeze(2) & valid.unsqueeze(1)
        earlier = torch.tril(torch.ones(k, k, dtype=torch.bool), diagonal=-1)
        valid = valid & ~(same & earlier).any(dim=2)
    return items, scores, valid


def minmax_normalize(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Min-max normalise each row over its valid entries to [0, 1] (all 1 if max == min); invalid -> 0."""
    scores = torch.as_tensor(scores).double()
    if scores.dim() != 2:
        raise InvalidInput(f"scores must be (N, K), got shape {tuple(scores.shape)}")
    if valid is None:
        valid = torch.isfinite(scores)
    valid = torch.as_tensor(valid, dtype=torch.bool)
    if valid.shape != scores.shape:
        raise InvalidInput(f"valid must have the shape of scores {tuple(scores.shape)}, got {tuple(valid.shape)}")
    inf = torch.tensor(float("inf"), dtype=scores.dtype)
    lo = torch.where(valid, scores, inf).min(dim=1, keepdim=True).values
    hi = torch.where(valid, scores, -inf).max(dim=1, keepdim=True).values
    span = hi - lo
    flat = span <= 0
    norm = (scores - lo) / torch.where(flat, torch.ones_like(span), span)
    norm = torch.where(flat, torch.ones_like(norm), norm)
    return torch.where(valid, norm, torch.zeros_like(norm))


def adaptive_alpha(msp: torch.Tensor, q: float, tau: float) -> torch.Tensor:
    """ID-model weight alpha = sigmoid(q * (msp - tau)) per instance."""
    msp = torch.as_tensor(msp).double()
    if msp.dim() != 1:
        raise InvalidInput(f"msp must be (N,), got shape {tuple(msp.shape)}")
    return torch.sigmoid(q * (msp - tau))


@dataclass
class _Union:
    """Both candidate orders (ID list first / GR list first) with each model's normalised score."""

    items: tuple[torch.Tensor, torch.Tensor]
    s_id: tuple[torch.Tensor, torch.Tensor]
    s_gr: tuple[torch.Tensor, torch.Tensor]
    valid: tuple[torch.Tensor, torch.Tensor]


def _build_union(id_items, id_scores, gr_items, gr_scores) -> _Union:
    """Normalise both lists and lay out the union of their candidates in both tie-break orders."""
    a_items, a_scores, a_valid = _check_list(id_items, id_scores, "id")
    b_items, b_scores, b_valid = _check_list(gr_items, gr_scores, "gr")
    if a_items.shape[0] != b_items.shape[0]:
        raise InvalidInput(f"id_items has {a_items.shape[0]} rows but gr_items has {b_items.shape[0]}")
    na = minmax_normalize(a_scores, a_valid)
    nb = minmax_normalize(b_scores, b_valid)
    eq = (a_items.unsqueeze(2) == b_items.unsqueeze(1)) & a_valid.unsqueeze(2) & b_valid.unsqueeze(1)
    b_for_a = (eq.double() * nb.unsqueeze(1)).amax(dim=2) if b_items.shape[1] else torch.zeros_like(na)
    a_for_b = (eq.double() * na.unsqueeze(2)).amax(dim=1) if a_items.shape[1] else torch.zeros_like(nb)
    b_in_a = eq.any(dim=1)
    a_in_b = eq.any(dim=2)
    za, zb = torch.zeros_like(na), torch.zeros_like(nb)
    id_first = (
        torch.cat([a_items, b_items], 1),
        torch.cat([na, zb], 1),
        torch.cat([b_for_a, nb], 1),
        torch.cat([a_valid, b_valid & ~b_in_a], 1),
    )
    gr_first = (
        torch.cat([b_items, a_items], 1),
        torch.cat([a_for_b, na], 1),
        torch.cat([nb, za], 1),
        torch.cat([b_valid, a_valid & ~a_in_b], 1),
    )
    return _Union(*zip(id_first, gr_first))


def _fuse(u: _Union, alpha: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k fused item ids (N, k), -1 padded, for per-row alpha."""
    n = u.items[0].shape[0]
    alpha = alpha.double().reshape(-1, 1).expand(n, 1)
    pick_id = alpha >= 0.5
    items = torch.where(pick_id, u.items[0], u.items[1])
    s_id = torch.where(pick_id, u.s_id[0], u.s_id[1])
    s_gr = torch.where(pick_id, u.s_gr[0], u.s_gr[1])
    valid = torch.where(pick_id, u.valid[0], u.valid[1])
    fused = alpha * s_id + (1.0 - alpha) * s_gr
    fused = torch.where(valid, fused, torch.full_like(fused, float("-inf")))
    top = min(k, fused.shape[1])
    order = torch.sort(fused, dim=1, descending=True, stable=True).indices[:, :top]
    out = torch.gather(items, 1, order)
    out = torch.where(torch.gather(valid, 1, order), out, torch.full_like(out, -1))
    if top < k:
        out = torch.cat([out, torch.full((n, k - top), -1, dtype=out.dtype)], 1)
    return out


def _alpha_tensor(alpha: float | torch.Tensor, n: int) -> torch.Tensor:
    """alpha as an (N,) double tensor in [0, 1], or ValueError."""
    a = torch.as_tensor(alpha, dtype=torch.float64)
    if a.dim() == 0:
        a = a.expand(n)
    if a.shape != (n,):
        raise InvalidInput(f"alpha must be a float or an (N={n},) tensor, got shape {tuple(a.shape)}")
    if torch.isnan(a).any() or (a < 0).any() or (a > 1).any():
        raise InvalidInput("alpha must lie in [0, 1]")
    return a


def fuse_rankings(
    id_items: torch.Tensor,
    id_scores: torch.Tensor,
    gr_items: torch.Tensor,
    gr_scores: torch.Tensor,
    alpha: float | torch.Tensor,
    k: int = 10,
) -> torch.Tensor:
    """Fused top-k item ids (N, k), -1 padded: alpha * norm(id) + (1 - alpha) * norm(gr) over the union."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInput(f"k must be a positive int, got {k!r}")
    u = _build_union(id_items, id_scores, gr_items, gr_scores)
    return _fuse(u, _alpha_tensor(alpha, u.items[0].shape[0]), k)


def _ndcg(ranked: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    from ..metrics import ndcg_at_k

    return float(ndcg_at_k(ranked, targets, k))


def _check_targets(targets, n: int) -> torch.Tensor:
    t = torch.as_tensor(targets)
    if t.dim() != 1 or t.shape[0] != n or t.dtype.is_floating_point:
        raise InvalidInput(f"targets must be (N={n},) integer item ids, got shape {tuple(t.shape)}")
    return t.long()


def grid_search_adaptive(
    id_items: torch.Tensor,
    id_scores: torch.Tensor,
    msp: torch.Tensor,
    gr_items: torch.Tensor,
    gr_scores: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    qs: Sequence[float] = DEFAULT_QS,
    taus: Sequence[float] = DEFAULT_TAUS,
    k: int = 10,
) -> dict:
    """Pick (q, tau) maximising NDCG@k of the MSP-weighted fusion; returns best params and the full grid."""
    u = _build_union(id_items, id_scores, gr_items, gr_scores)
    n = u.items[0].shape[0]
    targets = _check_targets(targets, n)
    msp = torch.as_tensor(msp).double()
    if msp.shape != (n,):
        raise InvalidInput(f"msp must be (N={n},), got shape {tuple(msp.shape)}")
    if not qs or not taus:
        raise InvalidInput("qs and taus must be non-empty")
    grid: list[dict[str, float]] = []
    best = None
    for q in qs:
        for tau in taus:
            score = _ndcg(_fuse(u, adaptive_alpha(msp, q, tau), k), targets, k)
            grid.append({"q": float(q), "tau": float(tau), f"ndcg@{k}": score})
            if best is None or score > best[f"ndcg@{k}"]:
                best = grid[-1]
    return {"q": best["q"], "tau": best["tau"], f"ndcg@{k}": best[f"ndcg@{k}"], "grid": grid}


def grid_search_fixed(
    id_items: torch.Tensor,
    id_scores: torch.Tensor,
    gr_items: torch.Tensor,
    gr_scores: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    k: int = 10,
) -> dict:
    """Pick the fixed alpha maximising NDCG@k of the fusion (the non-adaptive baseline)."""
    u = _build_union(id_items, id_scores, gr_items, gr_scores)
    n = u.items[0].shape[0]
    targets = _check_targets(targets, n)
    if not alphas:
        raise InvalidInput("alphas must be non-empty")
    grid: list[dict[str, float]] = []
    best = None
    for a in alphas:
        score = _ndcg(_fuse(u, _alpha_tensor(a, n), k), targets, k)
        grid.append({"alpha": float(a), f"ndcg@{k}": score})
        if best is None or score > best[f"ndcg@{k}"]:
            best = grid[-1]
    return {"alpha": best["alpha"], f"ndcg@{k}": best[f"ndcg@{k}"], "grid": grid}
