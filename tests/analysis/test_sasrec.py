"""SASRec baseline: learns a deterministic pattern, scores/recommends, saves and loads."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch

from sidmlp_kernels.analysis.sasrec import SASRec, SASRecConfig, _windows, fit, sasrec_histories


def cyclic_split(num_items=30, users=120, seed=0, max_history=5):
    """Every item i is followed by (i + 1) % num_items; leave-last-out layout."""
    rng = random.Random(seed)
    split = SimpleNamespace(train_sequences=[], valid_histories=[], valid_targets=[],
                            test_histories=[], test_targets=[], max_history=max_history)
    for _ in range(users):
        start, length = rng.randrange(num_items), rng.randint(5, 15)
        seq = [(start + j) % num_items for j in range(length)]
        split.train_sequences.append(seq[:-2])
        split.valid_histories.append(seq[:-2][-max_history:])
        split.valid_targets.append(seq[-2])
        split.test_histories.append(seq[:-1][-max_history:])
        split.test_targets.append(seq[-1])
    return split


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    split = cyclic_split()
    cfg = SASRecConfig(num_items=30, hidden=32, layers=1, heads=2, max_len=10, dropout=0.1)
    model = fit(split, 30, cfg, epochs=30, batch_size=32, lr=5e-3, patience=5, progress=False)
    return split, model


def test_learns_successor_pattern(trained):
    from sidmlp_kernels.metrics import recall_at_k

    split, model = trained
    _, test_hist = sasrec_histories(split, model.config.max_len)
    ranked = model.recommend(test_hist, 10)
    assert ranked.shape == (len(test_hist), 10)
    assert recall_at_k(ranked, torch.tensor(split.test_targets), 10) > 0.95
    assert model.train_log and "valid_ndcg@10" in model.train_log[-1]


def test_score_shapes_and_determinism(trained):
    _, model = trained
    logits = model.score([[1, 2, 3], [4]])
    assert logits.shape == (2, 30)
    assert torch.equal(logits, model.score([[1, 2, 3], [4]]))
    # Only the last max_len items matter.
    long = list(range(25)) + [1, 2, 3]
    assert torch.allclose(model.score([long]), model.score([long[-10:]]))
    items, scores, msp = model.top_k([[1, 2, 3]], k=5)
    assert items.shape == scores.shape == (1, 5) and 0 < float(msp[0]) <= 1


def test_padding_does_not_leak():
    # A history scores the same alone or batched next to a longer one (left padding is masked).
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=12, hidden=16, layers=2, heads=2, max_len=6, dropout=0.0))
    alone = model.score([[3, 4]])
    batched = model.score([[3, 4], [1, 2, 3, 4, 5, 6]])[:1]
    assert torch.allclose(alone, batched, atol=1e-5)


def test_save_load_roundtrip(trained, tmp_path):
    _, model = trained
    model.save(tmp_path / "m")
    again = SASRec.load(tmp_path / "m")
    assert torch.allclose(again.score([[1, 2, 3]]), model.score([[1, 2, 3]]))
    assert again.config == model.config and again.train_log == model.train_log
    meta = json.loads((tmp_path / "m" / "sasrec.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "m" / "sasrec.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format_version"):
        SASRec.load(tmp_path / "m")
    with pytest.raises(ValueError, match="holds no"):
        SASRec.load(tmp_path / "missing")


def test_histories_are_extended_from_train_sequences():
    split = cyclic_split(max_history=3)
    valid, test = sasrec_histories(split, 8)
    for i in range(len(valid)):
        assert valid[i] == split.train_sequences[i][-8:]
        assert test[i] == (split.train_sequences[i] + [split.valid_targets[i]])[-8:]
    split.valid_histories[0] = [0]  # not the leave-last-out layout: fall back
    valid, _ = sasrec_histories(split, 8)
    assert valid[0] == [0]


def test_windows_cover_every_transition_once():
    x, y = _windows([[0, 1, 2, 3, 4, 5, 6]], max_len=3)
    pairs = sorted(
        (int(a) - 1, int(b)) for xi, yi in zip(x, y) for a, b in zip(xi, yi) if b >= 0
    )
    assert pairs == [(i, i + 1) for i in range(6)]


def test_bad_input():
    model = SASRec(SASRecConfig(num_items=5, hidden=8, layers=1, heads=2, max_len=4))
    with pytest.raises(ValueError, match="histories"):
        model.score([[]])
    with pytest.raises(ValueError, match="histories"):
        model.score([[7]])
    with pytest.raises(ValueError, match="k must"):
        model.top_k([[1]], k=6)
    with pytest.raises(ValueError, match="divisible"):
        SASRecConfig(num_items=5, hidden=9, heads=2).validate()
    with pytest.raises(ValueError, match="num_items"):
        fit(cyclic_split(), 0)
    with pytest.raises(ValueError, match="train_sequences"):
        fit(cyclic_split(num_items=30), 10, progress=False)


def test_fit_stops_on_its_time_budget_and_leaves_the_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    cfg = SASRecConfig(num_items=30, hidden=16, layers=1, heads=2, max_len=10)
    model = fit(cyclic_split(), 30, cfg, epochs=5, batch_size=32, max_seconds=0)
    assert torch.equal(torch.rand(2), expected)
    # A zero budget: one step, then the validation the budget stop runs, then stop.
    assert len(model.train_log) == 1 and not model.training
    assert set(model.train_log[0]) == {"epoch", "loss", "valid_ndcg@10", "valid_recall@10", "seconds"}
    again = fit(cyclic_split(), 30, cfg, epochs=5, batch_size=32, max_seconds=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
