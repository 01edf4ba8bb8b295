"""Semantic IDs: residual k-means over item embeddings plus a dedup digit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ..errors import InvalidInput, MissingDependency

__all__ = ["SemanticIDResult", "build_semantic_ids"]


@dataclass
class SemanticIDResult:
    """Codes (n_items, L) int64, quantiser statistics and the fitted codebooks."""

    codes: np.ndarray
    stats: dict[str, Any]
    codebooks: list[np.ndarray] = field(default_factory=list)  # L-1 arrays (k_l, dim), k_l <= K
    pca_mean: np.ndarray | None = None
    pca_components: np.ndarray | None = None  # (dim, pca_dim), whitening folded in


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid per row (exact, float64; first index wins ties)."""
    x64, c64 = x.astype(np.float64), centroids.astype(np.float64)
    d = (c64 * c64).sum(1)[None, :] - 2.0 * x64 @ c64.T
    return d.argmin(axis=1)


def _faiss():
    """faiss, imported only to build Semantic IDs: decoding (e.g. on a GPU machine without faiss) never needs it."""
    try:
        import faiss
    except ImportError as err:
        raise MissingDependency(
            "building Semantic IDs needs faiss (k-means): pip install faiss-cpu"
        ) from err
    return faiss


def _kmeans(x: np.ndarray, k: int, seed: int, niter: int) -> np.ndarray:
    """faiss k-means with a fixed seed; single-threaded so the float sums never reorder."""
    if k == 1:
        return x.mean(axis=0, keepdims=True)
    faiss = _faiss()
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        km.train(np.ascontiguousarray(x, dtype=np.float32))
    finally:
        faiss.omp_set_num_threads(threads)
    return np.asarray(km.centroids, dtype=np.float32)


class CodebookTooSmall(InvalidInput):
    """More items share one (L-1)-digit prefix than the dedup digit has codes."""


def auto_codebook_size(num_items: int, num_levels: int) -> int:
    """K for `codebook_size="auto"`: the smallest power of two >= 2 * num_items ** (1 / (L - 1)), at least 8.

    With K**(L-1) about 8x the catalog, the residual levels split the items into groups that share
    a prefix (ML-100K, K = 32: 1,682 items over 32 first digits) instead of nearly one item per
    2-digit prefix, as K = 256 gives.
    """
    if num_items < 1 or num_levels < 2:
        raise InvalidInput(f"need num_items >= 1 and num_levels >= 2, got {num_items}, {num_levels}")
    target = 2.0 * num_items ** (1.0 / (num_levels - 1))
    k = 8
    while k < target:
        k *= 2
    return k


def build_semantic_ids(
    embeddings: np.ndarray,
    train_items: np.ndarray,
    num_levels: int = 4,
    codebook_size: int = 256,
    pca_dim: int | None = None,
    seed: int = 0,
    niter: int = 25,
) -> SemanticIDResult:
    """Residual k-means (L-1 levels, fitted on train items) plus a dedup digit -> unique L-digit codes."""
    if num_levels < 2:
        raise InvalidInput(f"num_levels must be >= 2 (residual levels + dedup digit), got {num_levels}")
    if codebook_size < 2:
        raise InvalidInput(f"codebook_size must be >= 2, got {codebook_size}")
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise InvalidInput(f"embeddings must be a non-empty 2-D array (n_items, dim), got shape {emb.shape}")
    if not np.issubdtype(emb.dtype, np.number) or not np.isfinite(emb).all():
        raise InvalidInput("embeddings must hold finite numbers")
    n, dim = emb.shape
    train = np.unique(np.asarray(train_items).reshape(-1))
    if train.size == 0:
        raise InvalidInput("train_items must hold at least one item index")
    if not np.issubdtype(train.dtype, np.integer) or train[0] < 0 or train[-1] >= n:
        raise InvalidInput(f"train_items must be integer indices in [0, {n}), got range [{train[0]}, {train[-1]}]")
    if niter < 1:
        raise InvalidInput(f"niter must be >= 1, got {niter}")
    x = emb.astype(np.float32)

    mean = comps = None
    if pca_dim is not None:
        if not 1 <= pca_dim <= min(dim, train.size):
            raise InvalidInput(f"pca_dim must be in [1, min(dim, n_train) = {min(dim, train.size)}], got {pca_dim}")
        xt = x[train].astype(np.float64)
        mean = xt.mean(axis=0)
        _, s, vt = np.linalg.svd(xt - mean, full_matrices=False)
        # Whiten: unit variance per component on train items; eps guards null directions.
        scale = s[:pca_dim] / np.sqrt(max(train.size - 1, 1)) + 1e-8
        comps = (vt[:pca_dim].T / scale).astype(np.float32)
        mean = mean.astype(np.float32)
        x = (x - mean) @ comps

    residual = x.copy()
    codes = np.zeros((n, num_levels), dtype=np.int64)
    codebooks: list[np.ndarray] = []
    for level in range(num_levels - 1):
        # Tiny catalogs: fewer train items than K -> fewer centroids, codes stay < K.
        k = min(codebook_size, train.size)
        centroids = _kmeans(residual[train], k, seed + level, niter)
        codes[:, level] = _nearest(residual, centroids)
        residual -= centroids[codes[:, level]]
        codebooks.append(centroids)

    # Dedup digit: rank among items with the same (L-1)-prefix, in item-id order.
    prefix = codes[:, :-1]
    _, inverse, counts = np.unique(prefix, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.lexsort((np.arange(n), inverse))  # group by prefix, item id within group
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[inverse[order]]
    max_group = int(counts.max())
    if max_group > codebook_size:
        raise CodebookTooSmall(
            f"{max_group} items share one {num_levels - 1}-digit prefix, more than codebook_size="
            f"{codebook_size} dedup codes; use a bigger codebook_size (>= {max_group}) or more num_levels"
        )
    codes[:, -1] = rank

    sq = (x.astype(np.float64) ** 2).sum(1)
    err = (residual.astype(np.float64) ** 2).sum(1)
    stats: dict[str, Any] = {
        "num_items": n,
        "num_train_items": int(train.size),
        "num_levels": num_levels,
        "codebook_size": codebook_size,
        "pca_dim": pca_dim,
        "seed": seed,
        "code_usage": [len(np.unique(codes[:, l])) / codebook_size for l in range(num_levels)],
        "distinct_prefixes": [len(np.unique(codes[:, : l + 1], axis=0)) for l in range(num_levels)],
        "collision_items": int(counts[counts > 1].sum()),  # items sharing a full (L-1)-prefix
        "collision_groups": int((counts > 1).sum()),
        "max_dedup_digit": int(rank.max()),
        "reconstruction_mse": float(err.mean()),  # mean squared residual norm, all items
        "reconstruction_mse_train": float(err[train].mean()),
        "reconstruction_rel": float(err.sum() / max(sq.sum(), 1e-30)),
    }
    return SemanticIDResult(codes=codes, stats=stats, codebooks=codebooks, pca_mean=mean, pca_components=comps)
