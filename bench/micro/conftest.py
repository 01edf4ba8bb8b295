"""Fixtures of the micro benchmarks (pytest-benchmark): catalogs, recorded beam-step inputs, folded heads.

    python -m pytest bench/micro --benchmark-only                 # all ops
    python -m pytest bench/micro --benchmark-only -k head --benchmark-group-by=group
    SIDMLP_BENCH_THREADS=1 SIDMLP_BENCH_ITEMS=1000000 python -m pytest bench/micro --benchmark-only

Not part of the test suite (testpaths = tests); needs the installed package (`pip install -e .`).
Shapes: batch 32, beam 50, K 256, L 4 and the paper head sizes (context 128, hidden 512, code
embeddings 128) unless overridden by env: SIDMLP_BENCH_BATCH, SIDMLP_BENCH_BEAM,
SIDMLP_BENCH_ITEMS (catalog size), SIDMLP_BENCH_THREADS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

import common  # bench/common.py: bench/conftest.py, loaded first, put bench/ on sys.path

BATCH = int(os.environ.get("SIDMLP_BENCH_BATCH", 32))
BEAM = int(os.environ.get("SIDMLP_BENCH_BEAM", 50))
ITEMS = int(os.environ.get("SIDMLP_BENCH_ITEMS", 100_000))
K, L = 256, 4
CTX, HIDDEN, EMB = 128, 512, 128


def pytest_configure(config) -> None:
    common.set_threads(int(os.environ.get("SIDMLP_BENCH_THREADS", 2)))


def pytest_benchmark_update_machine_info(config, machine_info) -> None:
    machine_info["sidmlp"] = common.machine_info()


@dataclass
class Level:
    """Inputs of one digit of a real search: prefixes (B, W, l), beam scores (B, W), logits (B, W, K)."""

    level: int
    prefixes: torch.Tensor
    scores: torch.Tensor
    logits: torch.Tensor
    nodes: torch.Tensor  # trie states of the prefixes (B, W)


@pytest.fixture(scope="session")
def catalog():
    return common.synthetic_catalog(ITEMS, K, L, seed=0)


@pytest.fixture(scope="session")
def index(catalog):
    from sidmlp_kernels.decode.constrained import ConstrainedIndex, has_extension

    if not has_extension():
        raise RuntimeError("sidmlp_kernels._C is not built: run `pip install --no-build-isolation -e .`")
    return ConstrainedIndex.from_catalog(catalog)


@pytest.fixture(scope="session")
def student():
    from sidmlp_kernels.distill.student import SIDMLP, SIDMLPConfig

    torch.manual_seed(0)
    cfg = SIDMLPConfig(encoder_dim=CTX, codebook_sizes=(K,) * L, embed_dims=(EMB,) * (L - 1), head_hidden=HIDDEN)
    return SIDMLP(cfg, [torch.randn(K, EMB) * 0.1 for _ in range(L - 1)]).eval()


@pytest.fixture(scope="session")
def folded(student):
    return student.fold()


@pytest.fixture(scope="session")
def ctx():
    return torch.randn(BATCH, CTX, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def levels(catalog, index, folded, ctx) -> list[Level]:
    """Each digit's inputs, recorded from one reference search over the folded heads' logits."""
    from sidmlp_kernels.decode.folded import folded_logits, project_context
    from sidmlp_kernels.decode.reference import beam_step_reference
    from sidmlp_kernels.decode.search import extend_prefixes

    proj = project_context(folded, ctx)
    out = []
    prefixes = torch.zeros(BATCH, 1, 0, dtype=torch.long)
    scores = torch.zeros(BATCH, 1)
    with torch.inference_mode():
        for level in range(L):
            logits = folded_logits(folded, level, proj[level], prefixes).contiguous()
            out.append(Level(level, prefixes, scores, logits, index.prefix_state(prefixes).nodes))
            width = prefixes.shape[1]
            valid = catalog.valid_children(prefixes.reshape(BATCH * width, level)).reshape(BATCH, width, K)
            valid &= torch.isfinite(scores).unsqueeze(-1)
            scores, parents, tokens = beam_step_reference(logits, scores, valid, BEAM)
            prefixes = extend_prefixes(prefixes, parents, tokens)
    out.append(Level(L, prefixes, scores, torch.empty(0), index.prefix_state(prefixes).nodes))
    return out


def pytest_benchmark_update_json(config, benchmarks, output_json) -> None:
    # Keep the saved JSON small (stats only): the raw per-round samples run to megabytes.
    for bench in output_json.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)
