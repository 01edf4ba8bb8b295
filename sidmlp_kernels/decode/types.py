"""Types and argument checks every decode path shares: results, step functions, beam arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from ..errors import InvalidInput, InvalidInputType


@dataclass
class Encoded:
    """Encoded user context: states (B, T, D) and mask (B, T) bool, True = real token.

    `input_ids` is kept by causal-LM adapters, whose digit_logits re-run the
    prompt (left padded); encoder-decoder adapters leave it None.
    """

    states: torch.Tensor
    mask: torch.Tensor
    input_ids: Optional[torch.Tensor] = None


# step_fn(level, prefixes (B, W, level), parents (B, W) or None) -> logits (B, W, K_level).
# `parents` says which previous beam each current beam came from, so stateful
# decoders (KV caches) can reorder; it is None at level 0.
StepFn = Callable[[int, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


@dataclass
class GenerationOutput:
    """Ranked results per user: items (B, N), codes (B, N, L), scores (B, N).

    Slots past the number of valid items hold item -1, codes -1 and score -inf.
    """

    items: torch.Tensor
    codes: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return int(self.items.shape[0])


def check_beam_args(beam_size: int, top_n: int) -> None:
    """Validate beam_size and top_n (ints, 1 <= top_n <= beam_size)."""
    for name, value in (("beam_size", beam_size), ("top_n", top_n)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputType(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise InvalidInput(f"{name} must be >= 1, got {value}")
    if top_n > beam_size:
        raise InvalidInput(f"top_n must be <= beam_size ({beam_size}), got {top_n}")
