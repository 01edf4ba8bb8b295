"""Instance labels (memorization / generalization types) against hand cases and a set-based oracle."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch

from sidmlp_kernels.analysis.labels import (
    GENERALIZATION_TYPES,
    build_transition_graph,
    label_instances,
    label_shares,
    metrics_by_label,
)


# ---------------------------------------------------------------- brute-force oracle
def brute_reach(sequences, max_hop):
    """R[h][a] = items seen 1..h positions after a (pure Python sets)."""
    fwd = {h: {} for h in range(1, max_hop + 1)}
    for seq in sequences:
        for i, a in enumerate(seq):
            for d in range(1, max_hop + 1):
                if i + d < len(seq):
                    for h in range(d, max_hop + 1):
                        fwd[h].setdefault(a, set()).add(seq[i + d])
    rev = {h: {} for h in fwd}
    for h, rel in fwd.items():
        for a, bs in rel.items():
            for b in bs:
                rev[h].setdefault(b, set()).add(a)
    return fwd, rev


def brute_label(sequences, history, target, max_hop=4):
    """(label, {type: smallest hop}) straight from the definitions."""
    fwd, rev = brute_reach(sequences, max_hop)
    R = lambda h, a: fwd[h].get(a, set())  # noqa: E731
    Rr = lambda h, a: rev[h].get(a, set())  # noqa: E731
    hops = {t: 0 for t in GENERALIZATION_TYPES}
    v = target
    if v in R(1, history[-1]):
        return "memorization", hops
    for h in range(1, min(max_hop, len(history)) + 1):
        for u in history[-h:]:
            found = {
                "substitutability": h >= 2 and v in R(h, u),
                "symmetry": u in R(h, v),
                "transitivity": bool(R(h, u) & Rr(h, v)),
                "second_order_symmetry": bool(
                    (R(h, v) & Rr(h, u)) or (R(h, v) & R(h, u)) or (Rr(h, v) & Rr(h, u))
                ),
            }
            for t, ok in found.items():
                if ok and hops[t] == 0:
                    hops[t] = h
    label = "generalization" if any(hops.values()) else "uncategorized"
    return label, hops


def label_one(train, history, target, num_items=10):
    out = label_instances(train, [history], [target], num_items)
    return str(out.label[0]), {t: int(out.hops[t][0]) for t in GENERALIZATION_TYPES}


def hops(**kw):
    base = {t: 0 for t in GENERALIZATION_TYPES}
    base.update(kw)
    return base


# ---------------------------------------------------------------- hand-built cases
def test_memorization():
    assert label_one([[0, 1]], [0], 1) == ("memorization", hops())


def test_memorization_is_exclusive():
    # 0 -> 1 seen (memorization) and 1 -> 0 seen (would be symmetry): only memorization is kept.
    assert brute_label([[0, 1], [1, 0]], [0], 1)[0] == "memorization"
    assert label_one([[0, 1], [1, 0]], [0], 1) == ("memorization", hops())


def test_memorization_needs_last_item():
    # 0 -> 1 seen, but 0 is not the last history item: substitutability-free, symmetry-free.
    label, h = label_one([[0, 1]], [0, 5], 1)
    assert label == "generalization" and h["substitutability"] == 2


def test_symmetry_h1():
    assert label_one([[1, 0]], [0], 1) == ("generalization", hops(symmetry=1))


def test_transitivity_h1():
    assert label_one([[0, 2], [2, 1]], [0], 1) == ("generalization", hops(transitivity=1))


def test_transitivity_h2_through_longer_reach():
    assert label_one([[0, 3, 2], [2, 1]], [5, 0], 1) == ("generalization", hops(transitivity=2))


def test_transitivity_needs_history_length():
    # Same data with a 1-item history: h = 2 is not allowed.
    assert label_one([[0, 3, 2], [2, 1]], [0], 1) == ("uncategorized", hops())


@pytest.mark.parametrize(
    "train",
    [
        [[1, 2], [2, 0]],  # R[v] & Rrev[u]: v -> w -> u
        [[0, 2], [1, 2]],  # R[v] & R[u]: common successor
        [[2, 0], [2, 1]],  # Rrev[v] & Rrev[u]: common predecessor
    ],
)
def test_second_order_symmetry_variants(train):
    assert label_one(train, [0], 1) == ("generalization", hops(second_order_symmetry=1))


def test_substitutability_h2():
    # 0 -> 5 -> 1: the target is 2 steps after the second to last item.
    label, h = label_one([[0, 5, 1]], [0, 3], 1)
    assert label == "generalization"
    assert h["substitutability"] == 2
    assert h == brute_label([[0, 5, 1]], [0, 3], 1)[1]


def test_substitutability_h3_and_h4():
    train = [[0, 7, 8, 1]]
    # Target 3 steps after item 0, which is the 3rd to last history item.
    assert label_one(train, [0, 4, 5], 1)[1]["substitutability"] == 3
    assert label_one(train, [4, 0, 5, 6], 1)[1]["substitutability"] == 3
    # Item 0 is the 4th to last: h = 4 even though the reach is only 3 steps.
    assert label_one(train, [0, 4, 5, 6], 1)[1]["substitutability"] == 4
    assert label_one([[0, 7, 8, 9, 1]], [0, 4, 5, 6], 1)[1]["substitutability"] == 4
    # Five steps away is beyond max_hop = 4.
    assert label_one([[0, 7, 8, 9, 2, 1]], [0, 4, 5, 6], 1)[1]["substitutability"] == 0


def test_smallest_hop_is_kept():
    # Symmetry holds at h = 1 (1 -> 0) and again at h = 3 (1 -> 7 -> 8 -> 0): 1 is kept.
    assert label_one([[1, 0], [1, 7, 8, 0]], [5, 6, 0], 1)[1]["symmetry"] == 1
    # Without the direct pair it first holds at h = 3; 2nd-order symmetry already at h = 2.
    label, h = label_one([[1, 7, 8, 0]], [5, 6, 0], 1)
    assert h == hops(symmetry=3, second_order_symmetry=2)
    assert (label, h) == brute_label([[1, 7, 8, 0]], [5, 6, 0], 1)


def test_uncategorized():
    assert label_one([[2, 3], [4, 5]], [0], 1) == ("uncategorized", hops())


def test_several_instances_and_shares():
    train = [[0, 1], [1, 0], [2, 3]]
    out = label_instances(train, [[0], [1], [4]], [1, 0, 9], 10)
    assert out.label.tolist() == ["memorization", "memorization", "uncategorized"]
    shares = label_shares(out)
    assert shares["memorization"] == pytest.approx(2 / 3)
    assert shares["uncategorized"] == pytest.approx(1 / 3)
    assert shares["generalization"] == 0.0
    assert len(out.to_rows()) == 3


def test_graph_is_cumulative_and_pooled():
    g = build_transition_graph([[0, 1, 2], [2, 0]], 3, max_hop=2)
    assert g.forward[0].toarray().astype(int).tolist() == [[0, 1, 0], [0, 0, 1], [1, 0, 0]]
    assert g.forward[1].toarray().astype(int).tolist() == [[0, 1, 1], [0, 0, 1], [1, 0, 0]]
    assert (g.backward[1].toarray() == g.forward[1].toarray().T).all()


# ---------------------------------------------------------------- oracle comparison
@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_on_random_data(seed):
    rng = random.Random(seed)
    num_items = rng.choice([6, 12, 25])
    train = [[rng.randrange(num_items) for _ in range(rng.randint(0, 7))] for _ in range(rng.randint(1, 8))]
    histories = [[rng.randrange(num_items) for _ in range(rng.randint(1, 6))] for _ in range(60)]
    targets = [rng.randrange(num_items) for _ in histories]
    out = label_instances(train, histories, targets, num_items, chunk_size=7)
    for i, (hist, tgt) in enumerate(zip(histories, targets)):
        label, h = brute_label(train, hist, tgt)
        assert out.label[i] == label, (train, hist, tgt)
        assert {t: int(out.hops[t][i]) for t in GENERALIZATION_TYPES} == h, (train, hist, tgt)


def test_random_data_covers_every_type_and_hop():
    # Guards the oracle test against being vacuous: the same generator hits all cases.
    seen = set()
    for seed in range(6):
        rng = random.Random(seed)
        num_items = rng.choice([6, 12, 25])
        train = [[rng.randrange(num_items) for _ in range(rng.randint(0, 7))] for _ in range(rng.randint(1, 8))]
        histories = [[rng.randrange(num_items) for _ in range(rng.randint(1, 6))] for _ in range(60)]
        targets = [rng.randrange(num_items) for _ in histories]
        out = label_instances(train, histories, targets, num_items)
        seen |= set(out.label.tolist())
        for t in GENERALIZATION_TYPES:
            seen |= {(t, int(h)) for h in out.hops[t] if h}
    assert {"memorization", "generalization", "uncategorized"} <= seen
    for t in GENERALIZATION_TYPES:
        assert {(t, h) for h in (2, 3)} <= seen, t


# ---------------------------------------------------------------- input checks and metrics
def test_bad_input():
    with pytest.raises(ValueError, match="histories"):
        label_instances([[0, 1]], [[]], [1], 3)
    with pytest.raises(ValueError, match="targets"):
        label_instances([[0, 1]], [[0]], [7], 3)
    with pytest.raises(ValueError, match="targets"):
        label_instances([[0, 1]], [[0]], [1, 2], 3)
    with pytest.raises(ValueError, match="sequences"):
        label_instances([[0, 5]], [[0]], [1], 3)
    with pytest.raises(ValueError, match="num_items"):
        build_transition_graph([[0]], 0)
    with pytest.raises(ValueError, match="max_hop"):
        build_transition_graph([[0]], 3, max_hop=0)


def test_metrics_by_label():
    train = [[0, 1], [1, 0]]
    out = label_instances(train, [[0], [2], [2]], [1, 3, 4], 5)
    assert out.label.tolist() == ["memorization", "uncategorized", "uncategorized"]
    ranked = torch.tensor([[1, 2], [3, -1], [0, 1]])
    res = metrics_by_label(out, ranked, torch.tensor([1, 3, 4]), k=10)
    assert res["memorization"]["n"] == 1 and res["memorization"]["recall@10"] == 1.0
    assert res["uncategorized"]["recall@10"] == 0.5
    assert res["uncategorized"]["ndcg@10"] == 0.5
    assert np.isnan(res["generalization"]["ndcg@10"])
    assert res["all"]["n"] == 3
    with pytest.raises(ValueError, match="ranked"):
        metrics_by_label(out, ranked[:2], torch.tensor([1, 3]))


@pytest.mark.slow
def test_ml1m_labelling_time():
    from sidmlp_kernels.data.movielens import leave_last_out, load_movielens

    data = load_movielens("ml-1m")
    split = leave_last_out(data)
    start = time.perf_counter()
    out = label_instances(split.train_sequences, split.test_histories, split.test_targets, data.num_items)
    elapsed = time.perf_counter() - start
    shares = label_shares(out)
    print(f"ML-1M test labelling: {elapsed:.1f}s, shares {shares}")
    assert elapsed < 120
    assert abs(sum(shares[k] for k in ("memorization", "generalization", "uncategorized")) - 1) < 1e-9
