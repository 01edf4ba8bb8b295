"""The one beam-search driver: every decode in the package runs this loop (docs/architecture.md, "Decoding semantics").

The driver owns the beams: prefixes (B, W, l), scores (B, W), and the parent of each kept
beam. A strategy (`BeamSteps`) owns what the digits may be and how a step is scored:

    reference.ReferenceSteps        catalog.valid_children + beam_step_reference + finalize_beams
    constrained.IndexSteps          the C++ index: ConstrainedIndex.beam_step on trie node states
    backends (cpu, triton)          IndexSteps with folded-head logits; the fused Triton step
    attention_decode.UnconstrainedSteps  every code allowed, ranked by rank_beams

Strategies that take arbitrary logits read them from a StepFn(level, prefixes, parents).
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch

from .types import GenerationOutput, StepFn, check_beam_args
from ..errors import InvalidInput, InvalidInputType

__all__ = ["BeamStep", "BeamSteps", "beam_search", "extend_prefixes", "step_logits"]

# One step's result: new scores (float32), parent beams and tokens (int64), each (B, beam_size).
BeamStep = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class BeamSteps(Protocol):
    """A constraint strategy: the beam step and the final ranking the driver calls."""

    device: torch.device  # where prefixes, scores and parents live
    num_levels: int

    def start(self, batch_size: int) -> None:
        """Reset per-search state (one live root beam per user)."""

    def step(self, level: int, prefixes: torch.Tensor, parents: Optional[torch.Tensor], scores: torch.Tensor,
             beam_size: int) -> BeamStep:
        """Digit `level` for beams (B, W): new scores, parent beams and tokens, each (B, beam_size)."""

    def finalize(self, prefixes: torch.Tensor, scores: torch.Tensor, top_n: int) -> GenerationOutput:
        """Final beams (B, W, L), sorted by score -> the top_n results per user."""


def extend_prefixes(prefixes: torch.Tensor, parents: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Kept beams' prefixes (B, beam, l + 1): each parent's prefix plus the chosen digit."""
    level = prefixes.shape[2]
    parent_prefix = torch.gather(prefixes, 1, parents.unsqueeze(-1).expand(-1, -1, level))
    return torch.cat([parent_prefix, tokens.unsqueeze(-1)], dim=2)


def step_logits(
    step_fn: StepFn, level: int, prefixes: torch.Tensor, parents: Optional[torch.Tensor], k: int
) -> torch.Tensor:
    """step_fn's logits for digit `level`, checked to have shape (B, W, k)."""
    logits = step_fn(level, prefixes, parents)
    expected = (prefixes.shape[0], prefixes.shape[1], k)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InvalidInput(f"step_fn must return logits of shape {expected}, got {got}")
    return logits


def beam_search(steps: BeamSteps, batch_size: int, beam_size: int = 50, top_n: int = 10) -> GenerationOutput:
    """Beam search over `steps`' digits from one empty prefix per user; returns steps.finalize's results."""
    check_beam_args(beam_size, top_n)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise InvalidInputType(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    prefixes = torch.zeros(batch_size, 1, 0, dtype=torch.long, device=steps.device)
    scores = torch.zeros(batch_size, 1, dtype=torch.float32, device=steps.device)
    parents: Optional[torch.Tensor] = None
    steps.start(batch_size)
    for level in range(steps.num_levels):
        scores, parents, tokens = steps.step(level, prefixes, parents, scores, beam_size)
        prefixes = extend_prefixes(prefixes, parents, tokens)
    return steps.finalize(prefixes, scores, top_n)
