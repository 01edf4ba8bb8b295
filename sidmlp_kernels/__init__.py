"""sidmlp-kernels: fast catalog-constrained decoding for Semantic-ID generative recommenders.

The public API is the table below. Names resolve on first access (so `import sidmlp_kernels`
and `sidmlp --help` do not pay for torch and transformers), and no public name is also the
name of a submodule, so a name means the same object whatever was imported before
(tests/test_public_api.py checks both). See docs/architecture.md for where each concept lives.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "accelerate": "accelerated",
    "AccelerateConfig": "accelerated",
    "AcceleratedRecommender": "accelerated",
    "SIDCatalog": "data.catalog",
    "TokenLayout": "data.layout",
    "Examples": "data.examples",
    "build_examples": "data.examples",
    "prepare": "data.prepare",
    "load_prepared": "data.prepare",
    "GenerationOutput": "decode.types",
    "GenerateOutput": "decode.types",
    "constrained_generate": "teacher.exact_generate",
    "load_teacher": "teacher.models",
    "save_teacher": "teacher.models",
    "import_teacher": "teacher.importers",
    "build_t5_teacher": "teacher.models",
    "adapter_for": "teacher.adapters",
    "llm_teacher": "teacher.llm",
    "load_llm_teacher": "teacher.llm_import",
    "FastT5Encoder": "teacher.fast_encoder",
    "SIDMLP": "distill.student",
    "SASRec": "analysis.sasrec",
    "evaluate_ranking": "metrics",
    "ndcg_at_k": "metrics",
    "recall_at_k": "metrics",
}

if TYPE_CHECKING:  # static analysers and IDEs see the explicit imports
    from .accelerated import AccelerateConfig, AcceleratedRecommender, accelerate
    from .analysis.sasrec import SASRec
    from .data.catalog import SIDCatalog
    from .data.examples import Examples, build_examples
    from .data.layout import TokenLayout
    from .data.prepare import load_prepared, prepare
    from .decode.types import GenerateOutput, GenerationOutput
    from .distill.student import SIDMLP
    from .metrics import evaluate_ranking, ndcg_at_k, recall_at_k
    from .teacher.adapters import adapter_for
    from .teacher.exact_generate import constrained_generate
    from .teacher.fast_encoder import FastT5Encoder
    from .teacher.importers import import_teacher
    from .teacher.llm import llm_teacher
    from .teacher.llm_import import load_llm_teacher
    from .teacher.models import build_t5_teacher, load_teacher, save_teacher


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'sidmlp_kernels' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


__all__ = sorted(_PUBLIC) + ["__version__"]
