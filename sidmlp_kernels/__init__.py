"""sidmlp-kernels: fast catalog-constrained decoding for Semantic-ID generative recommenders."""

from .catalog import SIDCatalog
from .decoding import GenerationOutput
from .metrics import evaluate_ranking, ndcg_at_k, recall_at_k

__version__ = "0.1.0"

__all__ = [
    "SIDCatalog",
    "GenerationOutput",
    "evaluate_ranking",
    "ndcg_at_k",
    "recall_at_k",
    "__version__",
]
