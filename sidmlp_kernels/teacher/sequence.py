"""Full-sequence training of a decoder-only teacher: one causal pass per window of a user's items.

A window is ``[user, SIDs of i_1, ..., SIDs of i_n]`` (no EOS between or after items: the prompt
format "items", see adapters.PROMPT_FORMATS). Every SID token of every item after the user
token is predicted in the same pass (next-token cross-entropy over the full vocabulary, as
TIGER trains), so all n items and all their digit prefixes cost one forward pass. The
per-prefix objective (teacher/models.teacher_loss) runs one pass per (history, target) pair:
on ML-100K 97,171 passes of about the same length against 5,299 windows, about 18x the
compute per epoch for the same transitions.

Windows cover every transition of every training sequence once, like SASRec's: each sequence
is cut from its end into windows of `window` items that overlap by one item, so an item that
starts a window is also the last target of the window before it. The default window is
split.max_history + 1 items: the longest context any position sees is the history length
that validation and test prompts have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..data.catalog import SIDCatalog
from ..data.layout import TokenLayout
from ..data.movielens import Split
from ..errors import InvalidInput
from .adapters import prompt_format

__all__ = ["SequenceWindows", "build_windows", "positions_needed", "sequence_loss"]


@dataclass
class SequenceWindows:
    """N training windows: tokens/mask (N, T), right-padded, ``[user, SIDs of each item...]``."""

    tokens: torch.Tensor
    mask: torch.Tensor
    num_items: int  # transitions (predicted items) in all windows, for reports

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, mask) of the windows at `index`, trimmed to their longest row."""
        tokens, mask = self.tokens[index], self.mask[index]
        width = int(mask.sum(dim=1).max()) if tokens.shape[0] else 0
        return tokens[:, :width], mask[:, :width]


def _windows(sequence: list[int], window: int) -> list[list[int]]:
    """Windows of up to `window` items cut from the end, overlapping by one item (all of a short sequence)."""
    out = []
    end = len(sequence)
    while end > 1:
        start = max(0, end - window)
        out.append(sequence[start:end])
        end = start + 1
    if not out and sequence:
        out.append(list(sequence))
    return out[::-1]


def build_windows(
    split: Split,
    catalog: SIDCatalog,
    layout: TokenLayout,
    window: Optional[int] = None,
    user_tokens: bool = False,
) -> SequenceWindows:
    """The training windows of split.train_sequences (default window: split.max_history + 1 items)."""
    window = split.max_history + 1 if window is None else window
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise InvalidInput(f"window must be an int >= 2 (items per training window), got {window!r}")
    chunks: list[list[int]] = []
    users: list[int] = []
    for user, seq in enumerate(split.train_sequences):
        for chunk in _windows(list(seq), window):
            chunks.append(chunk)
            users.append(user)
    if not chunks:
        raise InvalidInput("split.train_sequences holds no items to train on")
    ids, mask = layout.encode_histories(chunks, catalog, users=users if user_tokens else None,
                                        padding_side="right")
    # encode_histories ends each row with EOS: drop it (the "items" prompt format has none).
    lengths = torch.tensor([len(c) for c in chunks])
    eos_col = 1 + lengths * layout.num_levels
    rows = torch.arange(len(chunks))
    ids[rows, eos_col] = layout.pad_id
    mask[rows, eos_col] = 0
    ids, mask = ids[:, :-1], mask[:, :-1]
    return SequenceWindows(tokens=ids, mask=mask, num_items=int(lengths.sum()))


def positions_needed(layout: TokenLayout, max_history: int, windows: Optional[SequenceWindows] = None) -> int:
    """Positions a decoder-only teacher needs: its longest training window, or the longest prompt
    ([user, max_history items, EOS]) plus the L digits decoded after it, with one to spare (the
    size train-teacher has always given GPT-2 teachers, so --init-from keeps working)."""
    prompt = 2 + max_history * layout.num_levels + layout.num_levels + 1
    return max(prompt, 0 if windows is None else int(windows.tokens.shape[1]))


def sequence_loss(model: nn.Module, layout: TokenLayout, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every SID token of right-padded windows, in one causal pass."""
    if getattr(model.config, "is_encoder_decoder", False) or prompt_format(model) != "items":
        raise InvalidInput("the full-sequence objective needs a decoder-only teacher with prompt format 'items' "
                           "(build_gpt2_teacher(..., prompt='items'))")
    device = next(model.parameters()).device
    tokens, mask = tokens.to(device), mask.to(device)
    logits = model(input_ids=tokens, attention_mask=mask).logits[:, :-1]
    labels = tokens[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
