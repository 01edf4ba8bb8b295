"""MSP-weighted fusion of an ID model and a GR model: hand-computed cases and grid search."""

from __future__ import annotations

import math

import pytest
import torch

from sidmlp_kernels.analysis.hybrid import (
    adaptive_alpha,
    fuse_rankings,
    grid_search_adaptive,
    grid_search_fixed,
    max_softmax_probability,
    minmax_normalize,
)

NEG = float("-inf")
ID_ITEMS = torch.tensor([[1, 2, 3]])
ID_SCORES = torch.tensor([[3.0, 2.0, 1.0]])  # normalised: 1, 0.5, 0
GR_ITEMS = torch.tensor([[3, 4, -1]])
GR_SCORES = torch.tensor([[-1.0, -2.0, NEG]])  # normalised: 1, 0, (padding)


def test_minmax_normalize():
    got = minmax_normalize(torch.tensor([[3.0, 2.0, 1.0], [-1.0, -3.0, NEG], [2.0, 2.0, NEG]]))
    want = torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    assert torch.equal(got, want)


def test_single_valid_entry_normalises_to_one():
    assert minmax_normalize(torch.tensor([[5.0, NEG]])).tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize(
    "alpha, want",
    [
        # fused: 1 -> a, 2 -> a/2, 3 -> 1-a, 4 -> 0 (missing scores count as 0)
        (0.5, [1, 3, 2, 4, -1]),  # 1 and 3 tie at 0.5: the ID list (weight >= 0.5) breaks it
        (0.25, [3, 1, 2, 4, -1]),
        (1.0, [1, 2, 3, 4, -1]),  # the ID ranking, then GR-only items at 0
        (0.0, [3, 4, 1, 2, -1]),  # the GR ranking, then ID-only items at 0
    ],
)
def test_fuse_hand_computed(alpha, want):
    assert fuse_rankings(ID_ITEMS, ID_SCORES, GR_ITEMS, GR_SCORES, alpha, k=5).tolist() == [want]


def test_union_scores_add_when_both_models_list_the_item():
    # Item 7 is second in both lists; 9 is first in ID only, 8 first in GR only.
    got = fuse_rankings(
        torch.tensor([[9, 7, 5]]), torch.tensor([[3.0, 2.9, 1.0]]),
        torch.tensor([[8, 7, 6]]), torch.tensor([[0.0, -0.1, -1.0]]),
        0.5, k=3,
    )
    assert got.tolist() == [[7, 9, 8]]  # 7: 0.5*0.95 + 0.5*0.9 beats 0.5


def test_per_row_alpha_and_duplicates():
    id_items = torch.tensor([[1, 2], [1, 2]])
    id_scores = torch.tensor([[2.0, 1.0], [2.0, 1.0]])
    gr_items = torch.tensor([[5, 5, 2], [5, 5, 2]])  # repeated 5: the second entry is dropped
    gr_scores = torch.tensor([[0.0, -0.5, -1.0], [0.0, -0.5, -1.0]])
    got = fuse_rankings(id_items, id_scores, gr_items, gr_scores, torch.tensor([1.0, 0.0]), k=3)
    assert got.tolist() == [[1, 2, 5], [5, 2, 1]]


@pytest.mark.parametrize("seed", range(3))
def test_alpha_extremes_reproduce_each_model(seed):
    gen = torch.Generator().manual_seed(seed)
    n, k, items = 20, 50, 500
    id_items = torch.stack([torch.randperm(items, generator=gen)[:k] for _ in range(n)])
    gr_items = torch.stack([torch.randperm(items, generator=gen)[:k] for _ in range(n)])
    id_scores = torch.sort(torch.randn(n, k, generator=gen), dim=1, descending=True).values
    gr_scores = torch.sort(-torch.rand(n, k, generator=gen) * 10, dim=1, descending=True).values
    gr_scores[:, 40:] = NEG
    gr_items[:, 40:] = -1
    assert torch.equal(fuse_rankings(id_items, id_scores, gr_items, gr_scores, 1.0), id_items[:, :10])
    assert torch.equal(fuse_rankings(id_items, id_scores, gr_items, gr_scores, 0.0), gr_items[:, :10])


def test_msp_and_alpha():
    assert max_softmax_probability(torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])).tolist() == pytest.approx([0.5, 0.75])
    a = adaptive_alpha(torch.tensor([0.1, 0.5, 0.9]), q=5.0, tau=0.5)
    assert a.tolist() == pytest.approx([1 / (1 + math.exp(2.0)), 0.5, 1 / (1 + math.exp(-2.0))])


def test_grid_search_prefers_adaptive_weight():
    # Instance 0: ID model sure (MSP 0.9) and right; instance 1: ID unsure and wrong, GR right.
    id_items = torch.tensor([[10, 11], [20, 21]])
    id_scores = torch.tensor([[5.0, 1.0], [5.0, 1.0]])
    gr_items = torch.tensor([[12, 10], [22, 20]])
    gr_scores = torch.tensor([[-0.1, -3.0], [-0.1, -3.0]])
    targets = torch.tensor([10, 22])
    msp = torch.tensor([0.9, 0.05])
    res = grid_search_adaptive(id_items, id_scores, msp, gr_items, gr_scores, targets)
    assert res["ndcg@10"] == pytest.approx(1.0)
    assert len(res["grid"]) == 7 * 6
    fixed = grid_search_fixed(id_items, id_scores, gr_items, gr_scores, targets)
    assert fixed["ndcg@10"] < 1.0
    assert len(fixed["grid"]) == 11


def test_bad_input():
    with pytest.raises(ValueError, match="gr_scores"):
        fuse_rankings(ID_ITEMS, ID_SCORES, GR_ITEMS, GR_SCORES[:, :2], 0.5)
    with pytest.raises(ValueError, match="id_items"):
        fuse_rankings(ID_ITEMS.float(), ID_SCORES, GR_ITEMS, GR_SCORES, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        fuse_rankings(ID_ITEMS, ID_SCORES, GR_ITEMS, GR_SCORES, 1.5)
    with pytest.raises(ValueError, match="k must"):
        fuse_rankings(ID_ITEMS, ID_SCORES, GR_ITEMS, GR_SCORES, 0.5, k=0)
    with pytest.raises(ValueError, match="id_scores"):
        fuse_rankings(ID_ITEMS, torch.tensor([[1.0, float("nan"), 0.0]]), GR_ITEMS, GR_SCORES, 0.5)
    with pytest.raises(ValueError, match="msp"):
        grid_search_adaptive(ID_ITEMS, ID_SCORES, torch.tensor([0.1, 0.2]), GR_ITEMS, GR_SCORES, torch.tensor([1]))
    with pytest.raises(ValueError, match="logits"):
        max_softmax_probability(torch.zeros(3))


# ---------------------------------------------------------------- end-to-end report (tiny)
def _tiny_prepared(num_items=40, users=60, seed=0):
    import random
    from types import SimpleNamespace

    from sidmlp_kernels.data.catalog import SIDCatalog
    from sidmlp_kernels.data.movielens import InteractionData, leave_last_out

    rng = random.Random(seed)
    seqs = []
    for _ in range(users):
        start = rng.randrange(num_items)
        seqs.append([(start + j * rng.choice([1, 1, 2])) % num_items for j in range(rng.randint(4, 12))])
    data = InteractionData("tiny", [str(i) for i in range(num_items)], ["x"] * num_items,
                           [str(u) for u in range(users)], seqs)
    split = leave_last_out(data, max_history=5)
    codes = torch.stack([torch.arange(num_items) % 4, torch.arange(num_items) // 4], 1)
    catalog = SIDCatalog.from_codes(torch.arange(num_items), codes, (4, 10))
    return SimpleNamespace(data=data, split=split, catalog=catalog, config={"dataset": "tiny"})


def test_run_analysis_end_to_end(tmp_path):
    from sidmlp_kernels.analysis.report import run_analysis
    from sidmlp_kernels.analysis.sasrec import SASRecConfig

    torch.set_num_threads(1)
    prep = _tiny_prepared()
    n = len(prep.split.test_targets)
    gen = torch.Generator().manual_seed(0)

    def fake_gr():
        items = torch.stack([torch.randperm(40, generator=gen)[:20] for _ in range(n)])
        scores = torch.sort(-torch.rand(items.shape, generator=gen), dim=1, descending=True).values
        scores[:, -3:] = NEG  # dead beams
        items[:, -3:] = -1
        return items, scores

    gr = {"TIGER": {"valid": fake_gr(), "test": fake_gr()}, "SID-MLP": {"test": fake_gr()}}
    cfg = SASRecConfig(num_items=40, hidden=16, layers=1, heads=2, max_len=8, dropout=0.1)
    res = run_analysis(prep, tmp_path, gr, sasrec_epochs=2, sasrec_config=cfg, progress=False, num_bins=3)
    assert (tmp_path / "report.md").is_file() and (tmp_path / "analysis.png").stat().st_size > 0
    assert (tmp_path / "results.json").is_file() and (tmp_path / "sasrec" / "sasrec.json").is_file()
    assert set(res["models"]) == {"SASRec", "TIGER", "SID-MLP", "hybrid(SASRec+TIGER)"}
    assert "TIGER" in res["hybrid"] and "SID-MLP" not in res["hybrid"]
    assert len(res["msp_bins"]) == 3 and sum(b["n"] for b in res["msp_bins"]) == n
    assert sum(res["token_level"]["table"]["all"]) == n
    assert res["sasrec"]["trained"]
    text = (tmp_path / "report.md").read_text()
    assert "Label shares" in text and "Hybrid" in text and "SID-MLP" in text
    # The hybrid's test NDCG against each of its parts, paired over users.
    from sidmlp_kernels.metrics import ndcg_at_k

    targets = torch.as_tensor(prep.split.test_targets)
    hyb = res["hybrid"]["TIGER"]["adaptive"]["test"]
    assert set(hyb["vs"]) == {"SASRec", "TIGER"}
    tiger = ndcg_at_k(gr["TIGER"]["test"][0], targets, 10, per_instance=True)
    hybrid_mean = hyb["ndcg@10"]
    mean, lo, hi = hyb["vs"]["TIGER"]
    assert mean == pytest.approx(hybrid_mean - float(tiger.mean()), abs=1e-6) and lo <= mean <= hi
    assert "minus SASRec (95%)" in text
    # A rerun reloads the saved SASRec instead of training again.
    again = run_analysis(prep, tmp_path, None, sasrec_epochs=2, sasrec_config=cfg, progress=False, num_bins=3)
    assert not again["sasrec"]["trained"]
    assert again["sasrec"]["test"] == res["sasrec"]["test"]
    # Another seed (or other data) trains a fresh one.
    other = run_analysis(prep, tmp_path, None, sasrec_epochs=1, seed=1, sasrec_config=cfg, progress=False, num_bins=3)
    assert other["sasrec"]["trained"]


def test_run_analysis_rejects_bad_rankings(tmp_path):
    from sidmlp_kernels.analysis.report import run_analysis

    prep = _tiny_prepared()
    with pytest.raises(ValueError, match="gr_rankings"):
        run_analysis(prep, tmp_path, {"TIGER": {"valid": (torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, 5))}})
    with pytest.raises(ValueError, match="gr_rankings"):
        run_analysis(prep, tmp_path, {"TIGER": {"test": (torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, 5))}})
