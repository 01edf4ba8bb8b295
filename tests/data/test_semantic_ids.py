"""Semantic IDs: uniqueness, range, determinism, dedup digit, overflow, train-only fitting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidmlp_kernels.data.semantic_ids import build_semantic_ids


def clustered(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Gaussian blobs: closer to real item embeddings than pure noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, dim))
    return (centers[rng.integers(0, 8, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


def assert_valid(codes: np.ndarray, n: int, levels: int, k: int) -> None:
    assert codes.shape == (n, levels) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < k
    assert len(np.unique(codes, axis=0)) == n


@pytest.mark.parametrize("levels,k,pca", [(4, 16, None), (3, 32, None), (2, 64, None), (4, 16, 8)])
def test_codes_unique_in_range_and_deterministic(levels, k, pca):
    emb = clustered(400)
    train = np.arange(300)
    a = build_semantic_ids(emb, train, num_levels=levels, codebook_size=k, pca_dim=pca, seed=3)
    b = build_semantic_ids(emb, train, num_levels=levels, codebook_size=k, pca_dim=pca, seed=3)
    assert_valid(a.codes, 400, levels, k)
    np.testing.assert_array_equal(a.codes, b.codes)
    s = a.stats
    assert s["num_train_items"] == 300 and s["distinct_prefixes"][-1] == 400
    assert len(s["code_usage"]) == levels and all(0 < u <= 1 for u in s["code_usage"])
    assert s["max_dedup_digit"] == a.codes[:, -1].max()
    assert s["reconstruction_mse"] >= 0 and 0 <= s["reconstruction_rel"] <= 1
    assert len(a.codebooks) == levels - 1


def test_dedup_digit_follows_item_order_and_stats():
    # Items 1, 3 and 4 are identical: same (L-1)-prefix, dedup digits 0, 1, 2 in id order.
    emb = clustered(6)
    emb[[3, 4]] = emb[1]
    r = build_semantic_ids(emb, np.arange(6), num_levels=3, codebook_size=4)
    assert (r.codes[1, :-1] == r.codes[3, :-1]).all() and (r.codes[1, :-1] == r.codes[4, :-1]).all()
    assert r.codes[[1, 3, 4], -1].tolist() == [0, 1, 2]
    assert r.stats["collision_items"] >= 3 and r.stats["max_dedup_digit"] >= 2
    assert_valid(r.codes, 6, 3, 4)


def test_overflow_raises_with_count_and_hint():
    emb = np.ones((10, 4), dtype=np.float32)  # 10 identical items, only 4 dedup codes
    with pytest.raises(ValueError, match=r"10 items share .*bigger codebook_size"):
        build_semantic_ids(emb, np.arange(10), num_levels=2, codebook_size=4)
    r = build_semantic_ids(emb, np.arange(10), num_levels=2, codebook_size=10)
    assert r.codes[:, -1].tolist() == list(range(10))


def test_fewer_train_items_than_codebook():
    emb = clustered(20)
    r = build_semantic_ids(emb, np.array([0, 5, 7]), num_levels=3, codebook_size=256)
    assert_valid(r.codes, 20, 3, 256)
    assert all(cb.shape[0] == 3 for cb in r.codebooks)  # min(K, n_train) centroids


def test_codebooks_fitted_on_train_items_only():
    emb = clustered(300)
    train = np.arange(200)
    moved = emb.copy()
    moved[200:] = clustered(100, seed=9) * 3.0  # changing non-train items must not move any centroid
    a = build_semantic_ids(emb, train, num_levels=3, codebook_size=16)
    b = build_semantic_ids(moved, train, num_levels=3, codebook_size=16)
    for ca, cb in zip(a.codebooks, b.codebooks):
        np.testing.assert_array_equal(ca, cb)
    np.testing.assert_array_equal(a.codes[:200, :-1], b.codes[:200, :-1])
    assert_valid(b.codes, 300, 3, 16)


def test_seed_changes_codes():
    emb = clustered(400)
    a = build_semantic_ids(emb, np.arange(400), codebook_size=16, seed=0)
    b = build_semantic_ids(emb, np.arange(400), codebook_size=16, seed=1)
    assert not np.array_equal(a.codes, b.codes)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_levels=1), "num_levels"),
    (dict(codebook_size=1), "codebook_size"),
    (dict(pca_dim=0), "pca_dim"),
    (dict(pca_dim=17), "pca_dim"),
    (dict(train_items=np.array([0, 50])), "train_items"),
    (dict(train_items=np.array([-1])), "train_items"),
    (dict(train_items=np.array([], dtype=np.int64)), "train_items"),
    (dict(embeddings=np.ones(5)), "embeddings"),
    (dict(embeddings=np.full((5, 2), np.nan)), "embeddings"),
])
def test_bad_arguments(kwargs, match):
    args = dict(embeddings=clustered(20), train_items=np.arange(20), codebook_size=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_semantic_ids(**args)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 60), levels=st.integers(2, 4), k=st.integers(2, 12), seed=st.integers(0, 3))
def test_property_unique_or_overflow(n, levels, k, seed):
    emb = clustered(n, dim=6, seed=seed)
    train = np.arange(0, n, 2)
    try:
        r = build_semantic_ids(emb, train, num_levels=levels, codebook_size=k, seed=seed)
    except ValueError as e:
        assert "bigger codebook_size" in str(e)
        return
    assert_valid(r.codes, n, levels, k)
