"""Catalog index lookups: C++ index vs the PyTorch catalog (SIDCatalog) for the per-beam queries of a search.

lookup     full codes of the final beams (B*W, L) -> item ids
valid_mask each beam's catalog-valid next digits (B, W, K) at the deepest level
finalize   final beams -> top-n distinct items (index.finalize vs sidmlp_kernels.decode.reference.finalize_beams)
"""

import pytest
import torch

from conftest import L

TOP_N = 10


@pytest.mark.parametrize("provider", ("ext", "reference"))
def test_lookup(benchmark, levels, catalog, index, provider):
    codes = levels[L].prefixes.reshape(-1, L).contiguous()
    benchmark.group = f"lookup ({codes.shape[0]} codes, {catalog.num_items} items)"
    fn = (lambda: index.lookup(codes)) if provider == "ext" else (lambda: catalog.lookup(codes))
    with torch.inference_mode():
        benchmark(fn)


@pytest.mark.parametrize("provider", ("ext", "reference"))
def test_valid_mask(benchmark, levels, catalog, index, provider):
    lv = levels[L - 1]
    batch, width = lv.nodes.shape
    benchmark.group = f"valid_mask level {L - 1} (B={batch}, W={width})"
    if provider == "ext":
        fn = lambda: index.valid_mask(lv.nodes, L - 1)  # noqa: E731
    else:
        fn = lambda: catalog.valid_children(lv.prefixes.reshape(batch * width, L - 1))  # noqa: E731
    with torch.inference_mode():
        benchmark(fn)


@pytest.mark.parametrize("provider", ("ext", "reference"))
def test_finalize(benchmark, levels, catalog, index, provider):
    from sidmlp_kernels.decode.constrained import PrefixState
    from sidmlp_kernels.decode.reference import finalize_beams

    lv = levels[L]
    benchmark.group = f"finalize (B={lv.nodes.shape[0]}, W={lv.nodes.shape[1]}, top {TOP_N})"
    if provider == "ext":
        state = PrefixState(lv.nodes, L)
        fn = lambda: index.finalize(state, lv.scores, TOP_N)  # noqa: E731
    else:
        fn = lambda: finalize_beams(catalog, lv.prefixes, lv.scores, TOP_N)  # noqa: E731
    with torch.inference_mode():
        benchmark(fn)
