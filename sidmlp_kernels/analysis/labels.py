"""Memorization / generalization instance labels from training transitions (arXiv 2603.19809).

Transitions are pooled over all users' training sequences. R_h[a] is the set of items
seen 1..h positions after a in some training sequence (cumulative in h), Rrev_h[a] the
items seen 1..h positions before a. For an instance (history H, target v):

* memorization: v in R_1[H[-1]]. Checked first and exclusive: no other type is recorded.
* otherwise, for h = 1..max_hop (h <= len(H)), over the last h history items u:
  substitutability (h >= 2): v in R_h[u];
  symmetry: u in R_h[v];
  transitivity: R_h[u] & Rrev_h[v] non-empty;
  2nd-order symmetry: R_h[v] & Rrev_h[u], R_h[v] & R_h[u] or Rrev_h[v] & Rrev_h[u]
  non-empty.
  Each type keeps its smallest h. The label is generalization if any type holds, else
  uncategorized.

Every condition only grows with h (more u's, larger R_h), so "smallest h" is the first
h at which the condition holds. The work is sparse-matrix row algebra: the union of
R_h rows over the last h items is one sparse product (selector @ R_h), and each
"A & B non-empty" is a row-wise count of an element-wise sparse product.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from ..errors import InvalidInput

__all__ = [
    "GENERALIZATION_TYPES",
    "LABELS",
    "TransitionGraph",
    "InstanceLabels",
    "build_transition_graph",
    "label_instances",
    "label_shares",
    "metrics_by_label",
]

LABELS = ("memorization", "generalization", "uncategorized")
GENERALIZATION_TYPES = ("substitutability", "symmetry", "transitivity", "second_order_symmetry")


def check_sequences(sequences: Sequence[Sequence[int]], num_items: int, name: str) -> None:
    """Raise ValueError unless sequences is a list of lists of ids in [0, num_items)."""
    for i, seq in enumerate(sequences):
        if len(seq) == 0:
            continue
        arr = np.asarray(seq)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise InvalidInput(f"{name}[{i}] must be a 1-D list of integer item ids")
        if arr.min() < 0 or arr.max() >= num_items:
            raise InvalidInput(
                f"{name}[{i}] holds item ids outside [0, {num_items}): "
                f"min {int(arr.min())}, max {int(arr.max())}"
            )


def _flatten(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate sequences: (items, sequence index of each item)."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    items = np.fromiter((x for s in sequences for x in s), dtype=np.int64, count=total)
    owner = np.repeat(np.arange(len(sequences), dtype=np.int64), lengths)
    return items, owner


@dataclass
class TransitionGraph:
    """Cumulative h-hop transition sets as boolean CSR matrices: forward[h-1][a, b] = b in R_h[a]."""

    num_items: int
    max_hop: int
    forward: list[sp.csr_matrix]
    backward: list[sp.csr_matrix]  # backward[h-1] = forward[h-1].T, i.e. Rrev_h

    def reach(self, h: int) -> sp.csr_matrix:
        """R_h as a boolean CSR matrix."""
        if not 1 <= h <= self.max_hop:
            raise InvalidInput(f"h must be in [1, {self.max_hop}], got {h}")
        return self.forward[h - 1]


def build_transition_graph(
    sequences: Sequence[Sequence[int]], num_items: int, max_hop: int = 4
) -> TransitionGraph:
    """Build R_1..R_max_hop (and their transposes) from training sequences pooled over users."""
    if isinstance(num_items, bool) or not isinstance(num_items, (int, np.integer)) or num_items < 1:
        raise InvalidInput(f"num_items must be a positive int, got {num_items!r}")
    if isinstance(max_hop, bool) or not isinstance(max_hop, (int, np.integer)) or max_hop < 1:
        raise InvalidInput(f"max_hop must be a positive int, got {max_hop!r}")
    check_sequences(sequences, num_items, "sequences")
    items, owner = _flatten(sequences)
    forward, backward = [], []
    acc = sp.csr_matrix((num_items, num_items), dtype=bool)
    for d in range(1, max_hop + 1):
        # Pairs exactly d apart inside one sequence: (items[i], items[i + d]).
        same = owner[:-d] == owner[d:] if items.size > d else np.zeros(0, dtype=bool)
        src, dst = items[:-d][same], items[d:][same]
        exact = sp.csr_matrix(
            (np.ones(src.size, dtype=bool), (src, dst)), shape=(num_items, num_items)
        )
        exact.sum_duplicates()
        acc = (acc + exact).tocsr()
        acc.sort_indices()
        forward.append(acc)
        back = acc.T.tocsr()
        back.sort_indices()
        backward.append(back)
    return TransitionGraph(int(num_items), int(max_hop), forward, backward)


@dataclass
class InstanceLabels:
    """Per-instance labels and, per generalization type, the smallest hop at which it holds (0 = never)."""

    label: np.ndarray  # (N,) str: 'memorization' | 'generalization' | 'uncategorized'
    hops: dict[str, np.ndarray] = field(default_factory=dict)  # type -> (N,) int

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def mask(self, label: str) -> np.ndarray:
        """Boolean (N,) mask of instances with this label."""
        if label not in LABELS:
            raise InvalidInput(f"label must be one of {LABELS}, got {label!r}")
        return self.label == label

    def to_rows(self) -> list[dict[str, object]]:
        """One dict per instance: {'label': ..., '<type>_hop': ...} (a plain table)."""
        return [
            {"label": str(self.label[i]), **{f"{t}_hop": int(self.hops[t][i]) for t in GENERALIZATION_TYPES}}
            for i in range(len(self))
        ]


def lookup_items(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """matrix[rows[i], cols[i]] != 0 for each i, as a bool array."""
    if rows.size == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(matrix[rows, cols]).ravel() != 0


def _any_common(a: sp.csr_matrix, b: sp.csr_matrix) -> np.ndarray:
    """Row-wise: do rows a[i] and b[i] share a non-zero column?"""
    return a.multiply(b).getnnz(axis=1) > 0


def _selector(last: np.ndarray, valid: np.ndarray, num_items: int) -> sp.csr_matrix:
    """(B, num_items) 0/1 matrix with row i selecting items last[i, j] where valid[i, j]."""
    r, c = np.nonzero(valid)
    m = sp.csr_matrix(
        (np.ones(r.size, dtype=np.float32), (r, last[r, c])), shape=(last.shape[0], num_items)
    )
    m.sum_duplicates()
    return m


def label_instances(
    train_sequences: Sequence[Sequence[int]] | None,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int] | np.ndarray | torch.Tensor,
    num_items: int,
    max_hop: int = 4,
    graph: TransitionGraph | None = None,
    chunk_size: int = 1024,
) -> InstanceLabels:
    """Label each (history, target) instance as memorization / generalization / uncategorized."""
    if graph is None:
        if train_sequences is None:
            raise InvalidInput("train_sequences must be given when graph is None")
        graph = build_transition_graph(train_sequences, num_items, max_hop)
    else:
        if graph.num_items != num_items:
            raise InvalidInput(f"graph has {graph.num_items} items but num_items is {num_items}")
        if graph.max_hop < max_hop:
            raise InvalidInput(f"graph covers {graph.max_hop} hops but max_hop is {max_hop}")
    if chunk_size < 1:
        raise InvalidInput(f"chunk_size must be >= 1, got {chunk_size}")
    targets_np = np.asarray(torch.as_tensor(targets).cpu() if isinstance(targets, torch.Tensor) else targets)
    if targets_np.ndim != 1 or (targets_np.size and not np.issubdtype(targets_np.dtype, np.integer)):
        raise InvalidInput(f"targets must be a 1-D sequence of integer item ids, got shape {targets_np.shape}")
    targets_np = targets_np.astype(np.int64)
    n = len(histories)
    if targets_np.shape[0] != n:
        raise InvalidInput(f"targets has {targets_np.shape[0]} entries but histories has {n}")
    if n and (targets_np.min() < 0 or targets_np.max() >= num_items):
        raise InvalidInput(f"targets must be item ids in [0, {num_items})")
    for i, hist in enumerate(histories):
        if len(hist) == 0:
            raise InvalidInput(f"histories[{i}] is empty; every instance needs at least one item")
    check_sequences(histories, num_items, "histories")

    # last[i, j] = H_i[-(j+1)] for j < min(max_hop, len(H_i)); -1 beyond.
    last = np.full((n, max_hop), -1, dtype=np.int64)
    for i, hist in enumerate(histories):
        tail = list(hist[-max_hop:])[::-1]
        last[i, : len(tail)] = tail
    length = (last >= 0).sum(axis=1)

    hops = {t: np.zeros(n, dtype=np.int64) for t in GENERALIZATION_TYPES}
    memo = lookup_items(graph.forward[0], last[:, 0], targets_np) if n else np.zeros(0, dtype=bool)

    for h in range(1, max_hop + 1):
        fwd, bwd = graph.forward[h - 1], graph.backward[h - 1]
        fwd_f, bwd_f = fwd.astype(np.float32), bwd.astype(np.float32)
        active = ~memo & (length >= h)
        # Pairwise lookups over the last h items: substitutability and symmetry.
        for j in range(h):
            idx = np.nonzero(active)[0]
            u = last[idx, j]
            if h >= 2:
                todo = hops["substitutability"][idx] == 0
                hit = lookup_items(fwd, u[todo], targets_np[idx[todo]])
                hops["substitutability"][idx[todo][hit]] = h
            todo = hops["symmetry"][idx] == 0
            hit = lookup_items(fwd, targets_np[idx[todo]], u[todo])
            hops["symmetry"][idx[todo][hit]] = h
        # Set intersections, only for instances that still lack one of these types.
        pending = active & (
            (hops["transitivity"] == 0) | (hops["second_order_symmetry"] == 0)
        )
        idx_all = np.nonzero(pending)[0]
        valid_cols = np.arange(max_hop) < h
        for start in range(0, idx_all.size, chunk_size):
            idx = idx_all[start : start + chunk_size]
            sel = _selector(last[idx], (last[idx] >= 0) & valid_cols, num_items)
            out_u = sel @ fwd_f  # union of R_h[u] over the last h items
            in_u = sel @ bwd_f  # union of Rrev_h[u]
            v = targets_np[idx]
            out_v, in_v = fwd_f[v], bwd_f[v]
            need_t = hops["transitivity"][idx] == 0
            trans = need_t & _any_common(out_u, in_v)
            hops["transitivity"][idx[trans]] = h
            need_s = hops["second_order_symmetry"][idx] == 0
            sym2 = need_s & (
                _any_common(out_v, in_u) | _any_common(out_v, out_u) | _any_common(in_v, in_u)
            )
            hops["second_order_symmetry"][idx[sym2]] = h

    general = np.zeros(n, dtype=bool)
    for t in GENERALIZATION_TYPES:
        general |= hops[t] > 0
    label = np.where(memo, "memorization", np.where(general, "generalization", "uncategorized"))
    return InstanceLabels(label=label.astype(object).astype(str), hops=hops)


def label_shares(labels: InstanceLabels) -> dict[str, float]:
    """Fraction of instances per label, plus per generalization type (any hop) as 'type:<name>'."""
    n = len(labels)
    if n == 0:
        raise InvalidInput("labels must hold at least one instance")
    out = {lab: float((labels.label == lab).mean()) for lab in LABELS}
    for t in GENERALIZATION_TYPES:
        out[f"type:{t}"] = float((labels.hops[t] > 0).mean())
    return out


def metrics_by_label(
    labels: InstanceLabels,
    ranked: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    k: int = 10,
) -> dict[str, dict[str, float]]:
    """Recall@k / NDCG@k overall, per label, per generalization type and per type x smallest hop.

    Keys: 'all', 'memorization', 'generalization', 'uncategorized', '<type>' (any hop) and
    '<type>/h<h>'; each value is {'n': count, 'share': fraction, 'recall@k': ..., 'ndcg@k': ...}
    (metrics are NaN for empty groups).
    """
    from ..metrics import ndcg_at_k, recall_at_k

    ranked = torch.as_tensor(ranked)
    targets = torch.as_tensor(targets)
    if ranked.dim() != 2 or ranked.shape[0] != len(labels):
        raise InvalidInput(
            f"ranked must be (N={len(labels)}, list length), got shape {tuple(ranked.shape)}"
        )
    if targets.dim() != 1 or targets.shape[0] != len(labels):
        raise InvalidInput(f"targets must be (N={len(labels)},), got shape {tuple(targets.shape)}")
    recall = recall_at_k(ranked, targets, k, per_instance=True).numpy()
    ndcg = ndcg_at_k(ranked, targets, k, per_instance=True).numpy()
    n = len(labels)

    def group(mask: np.ndarray) -> dict[str, float]:
        cnt = int(mask.sum())
        return {
            "n": cnt,
            "share": cnt / n if n else float("nan"),
            f"recall@{k}": float(recall[mask].mean()) if cnt else float("nan"),
            f"ndcg@{k}": float(ndcg[mask].mean()) if cnt else float("nan"),
        }

    out = {"all": group(np.ones(n, dtype=bool))}
    for lab in LABELS:
        out[lab] = group(labels.label == lab)
    top = max(int(labels.hops[t].max(initial=0)) for t in GENERALIZATION_TYPES)
    for t in GENERALIZATION_TYPES:
        hop = labels.hops[t]
        out[t] = group(hop > 0)
        # Substitutability is defined from h = 2 (h = 1 is memorization).
        for h in range(2 if t == "substitutability" else 1, top + 1):
            out[f"{t}/h{h}"] = group(hop == h)
    return out
