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


@dataclass
class GenerateOutput:
    """generate()'s result in HF's convention, plus this package's ranked items.

    sequences (B * N, S) int64: the teacher's own token ids as HF generate lays them out for it
    (encoder-decoder: [decoder start, digits..., EOS]; decoder-only: the prompt, then the new
    tokens); the N rows of a user follow each other, best first.
    sequences_scores (B * N,) or None: HF's beam score, summed log-probs / new_tokens**length_penalty
    (None unless output_scores, as HF gives it).
    items (B, N), codes (B, N, L), scores (B, N): as GenerationOutput (summed log-probs). Unlike
    HF's `scores` (per-step log-probs), `scores` is this package's per-item score.
    Slots past the number of valid items: item -1, codes -1, score -inf, digit tokens = pad.
    """

    sequences: torch.Tensor
    sequences_scores: Optional[torch.Tensor]
    items: torch.Tensor
    codes: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return int(self.items.shape[0])


def check_beam_args(beam_size: int, top_n: int, names: tuple[str, str] = ("beam_size", "top_n")) -> None:
    """Validate beam_size and top_n (ints, 1 <= top_n <= beam_size); errors use `names` (HF: num_beams, ...)."""
    for name, value in zip(names, (beam_size, top_n)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputType(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise InvalidInput(f"{name} must be >= 1, got {value}")
    if top_n > beam_size:
        raise InvalidInput(f"{names[1]} must be <= {names[0]} ({beam_size}), got {top_n}")


def check_generate_args(num_beams: int, num_return_sequences: int, length_penalty: float = 1.0) -> None:
    """HF generate's beam arguments: ints, 1 <= num_return_sequences <= num_beams; a real length_penalty."""
    check_beam_args(num_beams, num_return_sequences, ("num_beams", "num_return_sequences"))
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
        raise InvalidInputType(f"length_penalty must be a float, got {type(length_penalty).__name__}")
