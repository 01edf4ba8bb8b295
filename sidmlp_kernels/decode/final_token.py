"""One scored token after the L digits (EOS): HF generate's last step with max_new_tokens = L + 1.

HF generate run with a catalog trie as `prefix_allowed_tokens_fn` allows only EOS after the L
digits and adds its log-probability (over the whole vocabulary) to every beam, which can reorder
the final beams. `FinalTokenSteps` wraps any strategy of search.py: the digits run on it
unchanged, then `final_logp(prefixes (B, W, L), parents (B, W)) -> (B, W)` scores the final
token of every kept beam (`parents` says which beam of the last step each came from, for KV
caches), and the beams are re-ranked by their total (ties keep the beam order) before
reference.finalize_beams turns them into catalog items.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..data.catalog import SIDCatalog
from .reference import finalize_beams
from .search import BeamStep, BeamSteps
from .types import GenerationOutput

__all__ = ["FinalLogp", "FinalTokenSteps"]

# final_logp(prefixes (B, W, L), parents (B, W)) -> (B, W) log-probability of the final token.
FinalLogp = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class FinalTokenSteps:
    """A strategy (search.BeamSteps): `inner`'s digit steps, then `final_logp` added and the beams re-ranked."""

    def __init__(self, inner: BeamSteps, final_logp: FinalLogp, catalog: SIDCatalog):
        self.inner = inner
        self.final_logp = final_logp
        self.catalog = catalog
        self.device = inner.device
        self.num_levels = inner.num_levels
        self.parents: Optional[torch.Tensor] = None  # the last digit step's parents

    def start(self, batch_size: int) -> None:
        """Reset the inner strategy."""
        self.inner.start(batch_size)
        self.parents = None

    def step(self, level: int, prefixes: torch.Tensor, parents: Optional[torch.Tensor], scores: torch.Tensor,
             beam_size: int) -> BeamStep:
        """The inner strategy's step (its parents are kept for the final token)."""
        out = self.inner.step(level, prefixes, parents, scores, beam_size)
        self.parents = out[1]
        return out

    def finalize(self, prefixes: torch.Tensor, scores: torch.Tensor, top_n: int) -> GenerationOutput:
        """Beams re-ranked by score + final_logp, then the top_n catalog items (dead beams stay dead)."""
        extra = self.final_logp(prefixes, self.parents).to(scores.device, torch.float32)
        total = torch.where(torch.isfinite(scores), scores + extra, scores)
        order = torch.sort(total, dim=1, descending=True, stable=True).indices
        total = torch.gather(total, 1, order)
        prefixes = torch.gather(prefixes, 1, order.unsqueeze(-1).expand(-1, -1, prefixes.shape[2]))
        return finalize_beams(self.catalog, prefixes.cpu(), total.cpu(), top_n)
