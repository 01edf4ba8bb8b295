"""Token-level (SID prefix) support against hand cases and a set-based oracle."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from sidmlp_kernels.analysis.labels import label_instances
from sidmlp_kernels.analysis.token_level import prefix_ids, token_level_table, token_support

CODES = torch.tensor(
    [
        [0, 0, 0],  # item 0
        [1, 0, 0],  # item 1
        [1, 0, 1],  # item 2
        [1, 1, 0],  # item 3
        [2, 0, 0],  # item 4
    ]
)


def brute_support(train, history, target, codes, max_hop=4):
    """hops per level n straight from the definition (pure Python)."""
    codes = [tuple(c) for c in np.asarray(codes).tolist()]
    out = []
    for n in range(1, len(codes[0]) + 1):
        pref = lambda i: codes[i][:n]  # noqa: E731
        reach = {h: {} for h in range(1, max_hop + 1)}
        for seq in train:
            p = [pref(i) for i in seq]
            for i in range(len(p)):
                for d in range(1, max_hop + 1):
                    if i + d < len(p):
                        for h in range(d, max_hop + 1):
                            reach[h].setdefault(p[i], set()).add(p[i + d])
        found = 0
        for h in range(1, min(max_hop, len(history)) + 1):
            if any(pref(target) in reach[h].get(pref(u), set()) for u in history[-h:]):
                found = h
                break
        out.append(found)
    return out


def test_prefix_ids():
    assert prefix_ids(CODES, 1).tolist() == [0, 1, 1, 1, 2]
    assert prefix_ids(CODES, 2).tolist() == [0, 1, 1, 2, 3]
    assert prefix_ids(CODES, 3).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="n must"):
        prefix_ids(CODES, 4)


def test_hand_cases():
    train = [[0, 2]]  # item 0 -> item 2: prefixes (0) -> (1), (0,0) -> (1,0)
    histories = [[0], [0], [0], [0], [0, 4], [4]]
    targets = [2, 1, 3, 0, 1, 1]
    sup = token_support(train, histories, targets, CODES)
    assert sup.hops.tolist() == [
        [1, 1, 1],  # item-level memorization
        [1, 1, 0],  # shares (1, 0) with item 2
        [1, 0, 0],  # shares only (1)
        [0, 0, 0],  # nothing follows into prefix (0)
        [2, 2, 0],  # needs the 2nd to last item: hop 2
        [0, 0, 0],  # history too short for hop 2
    ]
    assert sup.depth.tolist() == [3, 2, 1, 0, 2, 0]
    assert sup.num_levels == 3


def test_hop_limit():
    train = [[0, 4, 4, 4, 4, 2]]  # 0 -> 2 five steps apart; prefix (2) repeats in between
    sup = token_support(train, [[0]], [1], CODES)
    assert sup.hops.tolist() == [[0, 0, 0]]


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force(seed):
    rng = random.Random(seed)
    n_items, levels = rng.choice([(8, 2), (20, 3)])
    codes = torch.tensor([[rng.randrange(3) for _ in range(levels)] for _ in range(n_items)])
    train = [[rng.randrange(n_items) for _ in range(rng.randint(0, 6))] for _ in range(rng.randint(1, 6))]
    histories = [[rng.randrange(n_items) for _ in range(rng.randint(1, 6))] for _ in range(40)]
    targets = [rng.randrange(n_items) for _ in histories]
    sup = token_support(train, histories, targets, codes)
    for i in range(len(histories)):
        assert sup.hops[i].tolist() == brute_support(train, histories[i], targets[i], codes)
    assert (sup.depth == np.where(sup.hops > 0, np.arange(1, levels + 1), 0).max(1)).all()


def test_table_counts():
    train = [[0, 2]]
    histories, targets = [[0], [0], [0], [0]], [2, 1, 3, 0]
    labels = label_instances(train, histories, targets, 5)
    sup = token_support(train, histories, targets, CODES)
    table = token_level_table(labels, sup)
    assert table["memorization"] == [0, 0, 0, 1]
    # Items 1 and 3 never appear in training: uncategorized at item level, yet their
    # prefixes follow item 0's (depth 2 and 1): token-level memorization. Target 0 == the
    # last item shares its own successor (2nd-order symmetry) but has no prefix support.
    assert table["generalization"] == [1, 0, 0, 0]
    assert table["uncategorized"] == [0, 1, 1, 0]
    assert table["all"] == [1, 1, 1, 1]


def test_bad_input():
    with pytest.raises(ValueError, match="codes"):
        token_support([[0]], [[0]], [0], torch.zeros(3))
    with pytest.raises(ValueError, match="targets"):
        token_support([[0]], [[0]], [9], CODES)
    with pytest.raises(ValueError, match="histories"):
        token_support([[0]], [[]], [0], CODES)
    with pytest.raises(ValueError, match="labels"):
        token_level_table(label_instances([[0, 1]], [[0]], [1], 5), token_support([[0]], [[0], [1]], [0, 1], CODES))


@pytest.mark.slow
def test_ml100k_random_codes():
    from sidmlp_kernels.data.movielens import leave_last_out, load_movielens

    data = load_movielens("ml-100k")
    split = leave_last_out(data)
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (data.num_items, 3), generator=gen)
    labels = label_instances(split.train_sequences, split.test_histories, split.test_targets, data.num_items)
    sup = token_support(split.train_sequences, split.test_histories, split.test_targets, codes)
    table = token_level_table(labels, sup)
    assert sum(table["all"]) == len(split.test_targets)


def test_depth_within_hop():
    train = [[0, 2]]
    sup = token_support(train, [[0, 4], [0]], [1, 1], CODES)
    assert sup.depth.tolist() == [2, 2]
    assert sup.depth_within(1).tolist() == [0, 2]  # the first needs hop 2
    labels = label_instances(train, [[0, 4], [0]], [1, 1], 5)
    assert token_level_table(labels, sup, max_hop=1)["all"] == [1, 0, 1, 0]
