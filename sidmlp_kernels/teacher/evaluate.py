"""Recall/NDCG of a teacher's own decodes (HF generate, cached attention beam search) over Examples."""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
from torch import nn

from ..data.catalog import SIDCatalog
from ..data.examples import Examples
from ..data.layout import TokenLayout
from ..metrics import evaluate_ranking
from .attention_decode import DecodeOutput, attention_beam_search, hf_generate
from ..errors import InvalidInput


@torch.no_grad()
def evaluate_teacher(
    model: nn.Module,
    layout: TokenLayout,
    catalog: SIDCatalog,
    examples: Examples,
    decode: str = "constrained",
    beam_size: int = 50,
    top_n: int = 10,
    batch_size: int = 64,
    max_users: Optional[int] = None,
    ks: tuple[int, ...] = (5, 10),
    progress: bool = False,
    return_items: bool = False,
) -> dict[str, Any]:
    """Recall/NDCG@k of one decode ('constrained', 'unconstrained' or 'hf') plus invalid-beam counts and seconds.

    return_items adds "items": the (N, top_n) ranked lists.
    """
    if decode not in ("constrained", "unconstrained", "hf"):
        raise InvalidInput(f"decode must be 'constrained', 'unconstrained' or 'hf', got {decode!r}")
    n = len(examples) if max_users is None else min(len(examples), max_users)
    ranked, targets = [], []
    invalid = duplicate = 0
    start = time.perf_counter()
    device = next(model.parameters()).device
    batches = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"eval {decode}", unit="batch", leave=False)
    for lo in batches:
        ids, mask, _, items = examples.batch(torch.arange(lo, min(n, lo + batch_size)))
        ids, mask = ids.to(device), mask.to(device)
        if decode == "hf":
            out: DecodeOutput = hf_generate(model, layout, catalog, ids, mask, beam_size, top_n)
        else:
            out = attention_beam_search(
                model, layout, catalog, ids, mask, beam_size, top_n, constrained=decode == "constrained"
            )
        ranked.append(out.items)
        targets.append(items)
        invalid += int(out.num_invalid.sum())
        duplicate += int(out.num_duplicate.sum())
    items = torch.cat(ranked)
    metrics: dict[str, Any] = evaluate_ranking(items, torch.cat(targets), ks=ks)
    if return_items:
        metrics["items"] = items
    metrics.update(
        num_users=n,
        invalid_beams=invalid,
        invalid_per_user=invalid / max(n, 1),
        duplicate_beams=duplicate,
        seconds=time.perf_counter() - start,
    )
    return metrics
