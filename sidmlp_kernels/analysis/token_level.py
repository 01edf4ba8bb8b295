"""Token-level (SID prefix) memorization: does the target's code prefix follow a history prefix?

For n = 1..L every item is mapped to its length-n code prefix pref_n, training sequences
become prefix sequences, and the item-level forward reachability R_h is rebuilt over
prefix ids. An instance has prefix support at level n and hop h when, for some u among
the last h history items, pref_n(v) is in R_h[pref_n(u)] (h = 1..max_hop, h <= len(H)).
Support is monotone in n (a shared length-n prefix implies a shared shorter prefix), so
the per-instance depth is the largest supported n, 0 when none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .labels import LABELS, InstanceLabels, check_sequences, build_transition_graph, lookup_items
from ..errors import InvalidInput

__all__ = ["TokenSupport", "prefix_ids", "token_support", "token_level_table"]


def _codes_array(codes: torch.Tensor | np.ndarray) -> np.ndarray:
    """codes as an int64 (n_items, L) array, or ValueError."""
    arr = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InvalidInput(f"codes must be a non-empty (n_items, L) integer array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInput(f"codes must hold integers, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise InvalidInput(f"codes must be non-negative, got min {int(arr.min())}")
    return arr.astype(np.int64)


def prefix_ids(codes: torch.Tensor | np.ndarray, n: int) -> np.ndarray:
    """Dense id in [0, #distinct prefixes) of each item's length-n code prefix."""
    arr = _codes_array(codes)
    if not 1 <= n <= arr.shape[1]:
        raise InvalidInput(f"n must be in [1, {arr.shape[1]}], got {n}")
    _, inverse = np.unique(arr[:, :n], axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


@dataclass
class TokenSupport:
    """hops[i, n-1]: smallest hop with prefix support at level n (0 = none); depth[i]: largest supported n."""

    hops: np.ndarray  # (N, L) int
    depth: np.ndarray  # (N,) int in [0, L]

    @property
    def num_levels(self) -> int:
        """Number of SID digits L."""
        return int(self.hops.shape[1])

    def depth_within(self, max_hop: int) -> np.ndarray:
        """Largest n with prefix support at hop <= max_hop (max_hop=1: strict token-level memorization)."""
        if max_hop < 1:
            raise InvalidInput(f"max_hop must be >= 1, got {max_hop}")
        ok = (self.hops > 0) & (self.hops <= max_hop)
        levels = np.arange(1, self.num_levels + 1)
        return np.where(ok, levels, 0).max(axis=1, initial=0).astype(np.int64)


def token_support(
    train_sequences: Sequence[Sequence[int]],
    histories: Sequence[Sequence[int]],
    targets: Sequence[int] | np.ndarray | torch.Tensor,
    codes: torch.Tensor | np.ndarray,
    max_hop: int = 4,
) -> TokenSupport:
    """Per instance and prefix length n, the smallest hop at which pref_n(target) follows a history prefix."""
    arr = _codes_array(codes)
    num_items, num_levels = arr.shape
    if isinstance(max_hop, bool) or not isinstance(max_hop, (int, np.integer)) or max_hop < 1:
        raise InvalidInput(f"max_hop must be a positive int, got {max_hop!r}")
    check_sequences(train_sequences, num_items, "train_sequences")
    check_sequences(histories, num_items, "histories")
    tgt = np.asarray(targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets)
    if tgt.ndim != 1 or (tgt.size and not np.issubdtype(tgt.dtype, np.integer)):
        raise InvalidInput(f"targets must be a 1-D sequence of integer item ids, got shape {tgt.shape}")
    tgt = tgt.astype(np.int64)
    n_inst = len(histories)
    if tgt.shape[0] != n_inst:
        raise InvalidInput(f"targets has {tgt.shape[0]} entries but histories has {n_inst}")
    if n_inst and (tgt.min() < 0 or tgt.max() >= num_items):
        raise InvalidInput(f"targets must be item ids in [0, {num_items})")
    last = np.full((n_inst, max_hop), -1, dtype=np.int64)
    for i, hist in enumerate(histories):
        if len(hist) == 0:
            raise InvalidInput(f"histories[{i}] is empty; every instance needs at least one item")
        tail = list(hist[-max_hop:])[::-1]
        last[i, : len(tail)] = tail

    length = (last >= 0).sum(axis=1)
    hops = np.zeros((n_inst, num_levels), dtype=np.int64)
    for n in range(1, num_levels + 1):
        pid = prefix_ids(arr, n)
        n_prefixes = int(pid.max()) + 1
        seqs = [pid[np.asarray(s, dtype=np.int64)].tolist() for s in train_sequences]
        graph = build_transition_graph(seqs, n_prefixes, max_hop)
        level = hops[:, n - 1]
        pv = pid[tgt]
        for h in range(1, max_hop + 1):
            reach = graph.forward[h - 1]
            for j in range(h):
                idx = np.nonzero((level == 0) & (length >= h))[0]
                hit = lookup_items(reach, pid[last[idx, j]], pv[idx])
                level[idx[hit]] = h
    supported = hops > 0
    # Largest supported n (support is monotone in n, but take the max to be safe).
    levels = np.arange(1, num_levels + 1)
    depth = np.where(supported, levels, 0).max(axis=1) if n_inst else np.zeros(0, dtype=np.int64)
    return TokenSupport(hops=hops, depth=depth.astype(np.int64))


def token_level_table(labels: InstanceLabels, support: TokenSupport, max_hop: int | None = None) -> dict[str, list[int]]:
    """Counts of item-level label x token depth: {label: [count at depth 0, 1, ..., L]}, plus 'all'.

    max_hop=None uses support.depth (hop <= the max_hop it was built with); an int uses
    depth_within(max_hop), e.g. 1 for adjacent prefix transitions only.
    """
    if len(labels) != support.depth.shape[0]:
        raise InvalidInput(
            f"labels has {len(labels)} instances but support has {support.depth.shape[0]}"
        )
    depth = support.depth if max_hop is None else support.depth_within(max_hop)
    width = support.num_levels + 1
    table = {lab: np.bincount(depth[labels.label == lab], minlength=width).tolist() for lab in LABELS}
    table["all"] = np.bincount(depth, minlength=width).tolist()
    return table
