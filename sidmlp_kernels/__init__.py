"""sidmlp-kernels: fast catalog-constrained decoding for Semantic-ID generative recommenders."""

from importlib import import_module
from typing import Any

from .catalog import SIDCatalog
from .decoding import GenerationOutput
from .metrics import evaluate_ranking, ndcg_at_k, recall_at_k

__version__ = "0.1.0"

# Heavier entry points (they pull in transformers) load on first use.
_LAZY = {
    "accelerate": "accelerate",
    "AcceleratedRecommender": "accelerate",
    "SIDMLP": "student",
    "TokenLayout": "layout",
    "load_teacher": "teacher",
    "build_t5_teacher": "teacher",
    "adapter_for": "adapters",
    "FastT5Encoder": "fast_encoder",
    "SASRec": "sasrec",
    "load_prepared": "prepare",
    "prepare": "prepare",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'sidmlp_kernels' has no attribute {name!r}")


__all__ = [
    "SIDCatalog",
    "GenerationOutput",
    "evaluate_ranking",
    "ndcg_at_k",
    "recall_at_k",
    "__version__",
    *_LAZY,
]
