import math

import pytest
import torch

from sidmlp_kernels.metrics import dedup_ranked, evaluate_ranking, ndcg_at_k, recall_at_k, target_ranks


def test_hand_computed():
    ranked = torch.tensor([[5, 3, 9], [1, 2, 3], [7, 7, 4], [-1, -1, -1]])
    targets = torch.tensor([3, 8, 4, 1])
    assert target_ranks(ranked, targets).tolist() == [2, 0, 2, 0]
    assert recall_at_k(ranked, targets, 1) == 0.0
    assert recall_at_k(ranked, targets, 2) == pytest.approx(0.5)
    per = ndcg_at_k(ranked, targets, 10, per_instance=True)
    assert per.tolist() == pytest.approx([1 / math.log2(3), 0.0, 1 / math.log2(3), 0.0])
    assert evaluate_ranking(ranked, targets, ks=(2,))["ndcg@2"] == pytest.approx(2 / math.log2(3) / 4)


def test_dedup():
    assert dedup_ranked(torch.tensor([[4, 4, 2, 4, 1]])).tolist() == [[4, 2, 1, -1, -1]]


def brute_force(ranked, targets, k):
    recalls, ndcgs = [], []
    for row, t in zip(ranked.tolist(), targets.tolist()):
        seen, clean = set(), []
        for item in row:
            if item >= 0 and item not in seen:
                seen.add(item)
                clean.append(item)
        rank = clean.index(t) + 1 if t in clean else 0
        hit = 0 < rank <= k
        recalls.append(float(hit))
        ndcgs.append(1 / math.log2(rank + 1) if hit else 0.0)
    return sum(recalls) / len(recalls), sum(ndcgs) / len(ndcgs)


@pytest.mark.parametrize("seed", range(5))
def test_against_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    ranked = torch.randint(-1, 15, (64, 12), generator=g)
    targets = torch.randint(0, 15, (64,), generator=g)
    for k in (1, 5, 10, 12):
        r, n = brute_force(ranked, targets, k)
        assert recall_at_k(ranked, targets, k) == pytest.approx(r)
        assert ndcg_at_k(ranked, targets, k) == pytest.approx(n)


def test_against_torchmetrics():
    import torchmetrics.functional.retrieval as tm

    g = torch.Generator().manual_seed(1)
    ranked = torch.stack([torch.randperm(30, generator=g)[:10] for _ in range(20)])
    targets = torch.randint(0, 30, (20,), generator=g)
    for k in (5, 10):
        rec, nd = [], []
        for row, t in zip(ranked, targets):
            preds = torch.linspace(1, 0, 10)
            target = row == t
            rec.append(float(tm.retrieval_hit_rate(preds, target, top_k=k)))
            nd.append(float(tm.retrieval_normalized_dcg(preds, target, top_k=k)))
        assert recall_at_k(ranked, targets, k) == pytest.approx(sum(rec) / 20)
        assert ndcg_at_k(ranked, targets, k) == pytest.approx(sum(nd) / 20)


def test_bad_input():
    with pytest.raises(ValueError, match="ranked must be 2-D"):
        recall_at_k(torch.tensor([1, 2]), torch.tensor([1]), 5)
    with pytest.raises(ValueError, match="targets must be 1-D with 1"):
        recall_at_k(torch.tensor([[1, 2]]), torch.tensor([1, 2]), 5)
    with pytest.raises(ValueError, match="k must be a positive int"):
        ndcg_at_k(torch.tensor([[1, 2]]), torch.tensor([1]), 0)


def test_paired_bootstrap_exact_cases_and_normal_approximation():
    from sidmlp_kernels.metrics import paired_bootstrap

    same = paired_bootstrap([0.0, 1.0, 0.5], [0.0, 1.0, 0.5], num_samples=500)
    assert same["mean_difference"] == 0.0 and same["ci_low"] == same["ci_high"] == 0.0
    assert same["share_not_better"] == 1.0
    shifted = paired_bootstrap([1.5, 2.0, 1.0], [0.5, 1.0, 0.0], num_samples=500)
    assert shifted["ci_low"] == pytest.approx(1.0) and shifted["ci_high"] == pytest.approx(1.0)
    assert shifted["share_not_better"] == 0.0
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2000, generator=g), torch.rand(2000, generator=g)
    r = paired_bootstrap(a + 0.05, b, num_samples=4000, seed=1)
    half = 1.96 * float((a + 0.05 - b).std()) / 2000**0.5
    assert r["mean_difference"] == pytest.approx(float((a + 0.05 - b).mean()))
    assert r["ci_low"] == pytest.approx(r["mean_difference"] - half, abs=0.15 * half)
    assert r["ci_high"] == pytest.approx(r["mean_difference"] + half, abs=0.15 * half)
    # Same seed, same interval; a 0.05 gain over 2000 users leaves almost no resample without a gain.
    assert paired_bootstrap(a + 0.05, b, num_samples=4000, seed=1) == r
    assert 0.0 <= r["share_not_better"] < 0.05
    for bad in (dict(a=[], b=[]), dict(a=[1.0], b=[1.0, 2.0]), dict(a=[[1.0]], b=[[1.0]])):
        with pytest.raises(ValueError, match="non-empty 1-D"):
            paired_bootstrap(**bad)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [0.0], confidence=1.0)
    with pytest.raises(ValueError, match="num_samples"):
        paired_bootstrap([1.0], [0.0], num_samples=0)
