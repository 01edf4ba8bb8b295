"""Training / evaluation examples (history -> next item) in a token layout.

`build_examples(split, catalog, layout, part="train")` is the `train_data` that
teacher training, distillation and `accelerate()` consume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from .catalog import SIDCatalog
from .movielens import Split
from .layout import PADDING_SIDES, TokenLayout
from ..errors import InvalidInput

PARTS = ("train", "valid", "test")


@dataclass
class Examples:
    """N (history, target) pairs: input_ids/attention_mask (N, T), target_codes (N, L), target_items (N,).

    `users` (N,) is the split's user index of each example; `padding_side` says
    where input_ids are padded ("right": real tokens start at column 0).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_codes: torch.Tensor
    target_items: torch.Tensor
    users: Optional[torch.Tensor] = None
    padding_side: str = "right"

    def __post_init__(self) -> None:
        n = self.input_ids.shape[0]
        if self.input_ids.dim() != 2 or tuple(self.attention_mask.shape) != tuple(self.input_ids.shape):
            raise InvalidInput(
                f"input_ids and attention_mask must both be (N, T), got {tuple(self.input_ids.shape)} "
                f"and {tuple(self.attention_mask.shape)}"
            )
        if self.target_codes.dim() != 2 or self.target_codes.shape[0] != n:
            raise InvalidInput(f"target_codes must be (N={n}, L), got {tuple(self.target_codes.shape)}")
        if tuple(self.target_items.shape) != (n,):
            raise InvalidInput(f"target_items must be (N={n},), got {tuple(self.target_items.shape)}")
        if self.users is not None and tuple(self.users.shape) != (n,):
            raise InvalidInput(f"users must be (N={n},), got {tuple(self.users.shape)}")
        if self.padding_side not in PADDING_SIDES:
            raise InvalidInput(f"padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batch(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, target_codes, target_items) of a subset, trimmed to its longest row."""
        ids, mask = self.input_ids[index], self.attention_mask[index]
        width = int(mask.sum(dim=1).max()) if ids.shape[0] else 0
        if self.padding_side == "right":
            ids, mask = ids[:, :width], mask[:, :width]
        else:
            ids, mask = ids[:, ids.shape[1] - width :], mask[:, mask.shape[1] - width :]
        return ids, mask, self.target_codes[index], self.target_items[index]

    def subset(self, index: torch.Tensor) -> "Examples":
        """The examples at `index` (a long or bool tensor), untrimmed."""
        return Examples(
            self.input_ids[index],
            self.attention_mask[index],
            self.target_codes[index],
            self.target_items[index],
            None if self.users is None else self.users[index],
            self.padding_side,
        )

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: Optional[torch.Generator] = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Iterate over trimmed batches, optionally in a random order."""
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield self.batch(order[start : start + batch_size])


def train_pairs(
    sequences: Sequence[Sequence[int]], max_history: int, cap: Optional[int], seed: int
) -> tuple[list[list[int]], list[int], list[int]]:
    """Every (seq[:t][-max_history:], seq[t]) for t >= 1, at most `cap` random ones per user (seeded):
    (histories, targets, users), the training pairs build_examples encodes (also for other prompt formats)."""
    rng = np.random.default_rng(seed)
    histories: list[list[int]] = []
    targets: list[int] = []
    users: list[int] = []
    for user, seq in enumerate(sequences):
        steps = np.arange(1, len(seq))
        if cap is not None and len(steps) > cap:
            steps = np.sort(rng.choice(steps, size=cap, replace=False))
        for t in steps.tolist():
            histories.append(list(seq[max(0, t - max_history) : t]))
            targets.append(int(seq[t]))
            users.append(user)
    return histories, targets, users


def build_examples(
    split: Split,
    catalog: SIDCatalog,
    layout: TokenLayout,
    part: str = "train",
    max_prefixes_per_user: Optional[int] = None,
    seed: int = 0,
    padding_side: str = "right",
    user_tokens: bool = False,
) -> Examples:
    """Examples of one split part; train = every prefix of each train sequence (optionally capped per user).

    user_tokens=True hashes the split's user index into the layout's user
    buckets; by default every input starts with user bucket 0 (a bos token).
    """
    if part not in PARTS:
        raise InvalidInput(f"part must be one of {PARTS}, got {part!r}")
    if max_prefixes_per_user is not None and max_prefixes_per_user < 1:
        raise InvalidInput(f"max_prefixes_per_user must be None or >= 1, got {max_prefixes_per_user}")
    layout.validate_against(catalog)
    if part == "train":
        histories, targets, users = train_pairs(
            split.train_sequences, split.max_history, max_prefixes_per_user, seed
        )
    elif part == "valid":
        histories, targets = split.valid_histories, split.valid_targets
        users = list(range(len(targets)))
    else:
        histories, targets = split.test_histories, split.test_targets
        users = list(range(len(targets)))
    if len(targets) == 0:
        raise InvalidInput(f"split part {part!r} holds no examples")
    input_ids, attention_mask = layout.encode_histories(
        histories,
        catalog,
        users=users if user_tokens else None,
        padding_side=padding_side,
        max_history=split.max_history,
    )
    target_items = torch.tensor(targets, dtype=torch.long)
    target_codes = catalog.codes[_catalog_rows(catalog, target_items)]
    return Examples(
        input_ids=input_ids,
        attention_mask=attention_mask,
        target_codes=target_codes,
        target_items=target_items,
        users=torch.tensor(users, dtype=torch.long),
        padding_side=padding_side,
    )


def _catalog_rows(catalog: SIDCatalog, items: torch.Tensor) -> torch.Tensor:
    """Catalog row of each item id (ValueError for unknown items)."""
    order = torch.argsort(catalog.item_ids)
    sorted_ids = catalog.item_ids[order]
    pos = torch.searchsorted(sorted_ids, items).clamp(max=len(sorted_ids) - 1)
    found = sorted_ids[pos] == items
    if not found.all():
        raise InvalidInput(f"targets contain item {int(items[~found][0])}, which is not in the catalog")
    return order[pos]


def synthetic_data(
    codebook_sizes: Sequence[int] = (8, 6, 5),
    num_items: int = 80,
    num_users: int = 120,
    seq_len: int = 10,
    max_history: int = 5,
    follow: float = 0.8,
    seed: int = 0,
) -> tuple[SIDCatalog, Split]:
    """A tiny learnable catalog + leave-last-out split: users mostly step item -> succ(item) (for tests, demos).

    Codes are drawn at random and deduplicated, so the catalog may hold fewer than
    num_items items; with probability `follow` the next item is a fixed random
    successor of the current one, else a uniform random item.
    """
    if seq_len < 3:
        raise InvalidInput(f"seq_len must be >= 3 (train, valid and test items), got {seq_len}")
    g = torch.Generator().manual_seed(seed)
    raw = torch.stack([torch.randint(0, int(k), (num_items,), generator=g) for k in codebook_sizes], 1)
    codes = torch.unique(raw, dim=0)
    n = codes.shape[0]
    catalog = SIDCatalog.from_codes(torch.arange(n), codes, list(codebook_sizes))
    succ = torch.randperm(n, generator=g)
    sequences = []
    for _ in range(num_users):
        x = int(torch.randint(0, n, (1,), generator=g))
        seq = [x]
        for _ in range(seq_len - 1):
            if float(torch.rand(1, generator=g)) < follow:
                x = int(succ[x])
            else:
                x = int(torch.randint(0, n, (1,), generator=g))
            seq.append(x)
        sequences.append(seq)
    split = Split(
        train_sequences=[s[:-2] for s in sequences],
        valid_histories=[s[:-2][-max_history:] for s in sequences],
        valid_targets=[s[-2] for s in sequences],
        test_histories=[s[:-1][-max_history:] for s in sequences],
        test_targets=[s[-1] for s in sequences],
        max_history=max_history,
    )
    return catalog, split
