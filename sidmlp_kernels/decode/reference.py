"""Reference catalog-constrained beam search (docs/architecture.md, "Decoding semantics"), plain PyTorch.

This module defines correct results. Fast paths are tested against it; it is
never edited to match them. `beam_search_reference` is the package's one
beam-search loop (search.beam_search) with the `ReferenceSteps` strategy.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..data.catalog import SIDCatalog
from .search import BeamStep, beam_search, step_logits
from .types import GenerationOutput, StepFn
from ..errors import InvalidInput


def masked_log_softmax(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the valid entries of the last dim; invalid entries are -inf."""
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    masked = torch.where(valid, logits, neg_inf)
    lse = torch.logsumexp(masked, dim=-1, keepdim=True)
    # A row with no valid entry has lse = -inf; keep it finite so no NaN appears.
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    return torch.where(valid, masked - lse, neg_inf)


def check_finite_logits(logits: torch.Tensor, valid: torch.Tensor) -> None:
    """ValueError naming the first logit that is NaN or +inf at a valid candidate (the C++ ops' rule)."""
    bad = valid & (torch.isnan(logits) | (logits == float("inf")))
    if bool(bad.any()):
        b, w, c = (int(i) for i in bad.nonzero()[0])
        raise InvalidInput(f"non-finite logit: logits[{b}, {w}, {c}] is {float(logits[b, w, c])} at a "
                         "catalog-valid digit (logits must be finite or -inf)")


def beam_step_reference(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    valid: torch.Tensor,
    beam_size: int,
    renormalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One constrained beam step: returns new scores, parent beams and tokens, each (B, beam).

    Candidates are (beam, token) pairs with `valid` set; score = beam score +
    log-softmax of the logits over the valid tokens. The best `beam_size` are
    kept, ties broken by (beam index, token) ascending; missing candidates are
    dead (-inf score).

    renormalize=False: the logits are already log-probabilities (a log-softmax over a whole
    vocabulary) and are only masked, as HF generate with a `prefix_allowed_tokens_fn` and STATIC
    score (docs/architecture.md, "Decoding semantics").
    """
    batch, width, k = logits.shape
    check_finite_logits(logits, valid)
    if renormalize:
        logp = masked_log_softmax(logits.float(), valid)
    else:
        logp = torch.where(valid, logits.float(), torch.tensor(float("-inf"), device=logits.device))
    candidates = (beam_scores.float().unsqueeze(-1) + logp).reshape(batch, width * k)
    # Stable sort keeps flat index order (beam-major, then token) among equal scores.
    order = torch.sort(candidates, dim=1, descending=True, stable=True).indices[:, :beam_size]
    scores = torch.gather(candidates, 1, order)
    if order.shape[1] < beam_size:
        pad = beam_size - order.shape[1]
        order = torch.cat([order, order.new_zeros(batch, pad)], dim=1)
        scores = torch.cat([scores, scores.new_full((batch, pad), float("-inf"))], dim=1)
    return scores, order // k, order % k


class ReferenceSteps:
    """The reference strategy: catalog.valid_children masks, beam_step_reference, finalize_beams (CPU)."""

    device = torch.device("cpu")

    def __init__(self, step_fn: StepFn, catalog: SIDCatalog, renormalize: bool = True):
        self.step_fn = step_fn
        self.catalog = catalog
        self.num_levels = catalog.num_levels
        self.renormalize = bool(renormalize)

    def start(self, batch_size: int) -> None:
        """Nothing to reset: the prefixes say everything."""

    def allowed(self, level: int, prefixes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(B, W, K_level) bool: the catalog-valid children of each live beam's prefix."""
        batch, width = scores.shape
        k = self.catalog.codebook_sizes[level]
        valid = self.catalog.valid_children(prefixes.reshape(batch * width, level)).reshape(batch, width, k)
        return valid & torch.isfinite(scores).unsqueeze(-1)

    def step(self, level: int, prefixes: torch.Tensor, parents: Optional[torch.Tensor], scores: torch.Tensor,
             beam_size: int) -> BeamStep:
        """Scores, parents and tokens (B, beam_size) of digit `level` (see beam_step_reference)."""
        logits = step_logits(self.step_fn, level, prefixes, parents, self.catalog.codebook_sizes[level])
        return beam_step_reference(logits.cpu(), scores, self.allowed(level, prefixes, scores), beam_size,
                                   self.renormalize)

    def finalize(self, prefixes: torch.Tensor, scores: torch.Tensor, top_n: int) -> GenerationOutput:
        """The top_n catalog items of the final beams."""
        return finalize_beams(self.catalog, prefixes, scores, top_n)


def beam_search_reference(
    step_fn: StepFn,
    catalog: SIDCatalog,
    batch_size: int,
    beam_size: int = 50,
    top_n: int = 10,
    renormalize: bool = True,
) -> GenerationOutput:
    """Catalog-constrained beam search over `step_fn`'s logits; every result is a catalog item.

    renormalize=False: step_fn returns log-probabilities, only masked (see beam_step_reference).
    """
    return beam_search(ReferenceSteps(step_fn, catalog, renormalize), batch_size, beam_size, top_n)


def finalize_beams(
    catalog: SIDCatalog, codes: torch.Tensor, scores: torch.Tensor, top_n: int, keep: Optional[torch.Tensor] = None
) -> GenerationOutput:
    """Turn final beams (B, W, L) sorted by score into the top_n catalog items.

    keep (B, W) bool, optional: of the first top_n beams only these survive, moved to the
    front in their order (how the unconstrained decodes drop invalid and repeated beams).
    """
    batch, width, num_levels = codes.shape
    codes, scores = codes[:, :top_n], scores[:, :top_n]
    width = codes.shape[1]
    items = catalog.lookup(codes.reshape(-1, num_levels)).reshape(batch, -1)
    alive = torch.isfinite(scores)
    if keep is not None:
        alive = alive & keep[:, :top_n]
        order = torch.argsort((~alive).long() * width + torch.arange(width, device=alive.device), dim=1)
        alive, items, scores = (torch.gather(t, 1, order) for t in (alive, items, scores))
        codes = torch.gather(codes, 1, order.unsqueeze(-1).expand(-1, -1, num_levels))
    items = torch.where(alive, items, torch.full_like(items, -1))
    codes = torch.where(alive.unsqueeze(-1), codes, torch.full_like(codes, -1))
    scores = torch.where(alive, scores, torch.full_like(scores, float("-inf")))
    if width < top_n:
        pad = top_n - width
        items = torch.cat([items, items.new_full((batch, pad), -1)], dim=1)
        codes = torch.cat([codes, codes.new_full((batch, pad, num_levels), -1)], dim=1)
        scores = torch.cat([scores, scores.new_full((batch, pad), float("-inf"))], dim=1)
    return GenerationOutput(items=items, codes=codes, scores=scores)


def exhaustive_search(
    prefix_logits: Callable[[int, torch.Tensor], torch.Tensor],
    catalog: SIDCatalog,
    batch_size: int,
    top_n: int = 10,
) -> GenerationOutput:
    """Score every catalog item by its constrained path log-probability; the beam-search oracle.

    prefix_logits(level, prefixes (B, N, level)) -> logits (B, N, K_level).
    """
    codes = catalog.codes
    n = catalog.num_items
    total = torch.zeros(batch_size, n)
    for level in range(catalog.num_levels):
        prefixes = codes[:, :level].unsqueeze(0).expand(batch_size, -1, -1)
        logits = prefix_logits(level, prefixes).float().cpu()
        valid = catalog.valid_children(codes[:, :level]).unsqueeze(0).expand(batch_size, -1, -1)
        logp = masked_log_softmax(logits, valid)
        total += torch.gather(logp, 2, codes[:, level].view(1, n, 1).expand(batch_size, -1, -1)).squeeze(-1)
    # Order by score, then by code (the order beam search's tie-break produces).
    code_order = torch.argsort(catalog.pack(codes))
    ranked = torch.sort(total[:, code_order], dim=1, descending=True, stable=True)
    rows = code_order[ranked.indices[:, :top_n]]
    scores = ranked.values[:, :top_n]
    return finalize_beams(catalog, codes[rows], scores, top_n)
