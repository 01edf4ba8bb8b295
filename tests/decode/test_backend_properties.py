"""Property-based: over random catalogs (1-5 digits, 1-64 codes per digit, 1-2,000 items, skewed
prefix trees), random folded heads and random beam/top_n, every backend returns valid, distinct
items, the reference's ranking, and exhaustive scoring when the beam covers the catalog."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidmlp_kernels import SIDCatalog
from sidmlp_kernels.decode.backends import decode_folded
from sidmlp_kernels.decode.folded import folded_logits
from sidmlp_kernels.decode.reference import exhaustive_search

from tests.decode.test_backends import assert_same_ranking, assert_valid_items, decode_on, make_ctx, make_heads
from tests.devices import OP_DEVICES, TRITON_DEVICES


def skewed_catalog(seed: int, n: int, sizes: list[int], skew: float) -> SIDCatalog:
    """Up to n distinct codes whose digits follow a Zipf-like law: a few wide prefixes, many narrow."""
    g = torch.Generator().manual_seed(seed)
    digits = []
    for k in sizes:
        weights = 1.0 / torch.arange(1, k + 1, dtype=torch.float64) ** skew
        digits.append(torch.multinomial(weights, n, replacement=True, generator=g))
    codes = torch.unique(torch.stack(digits, 1), dim=0)
    codes = codes[torch.randperm(codes.shape[0], generator=g)]
    ids = torch.randperm(3 * codes.shape[0], generator=g)[: codes.shape[0]]
    return SIDCatalog.from_codes(ids, codes, sizes)


@st.composite
def problems(draw, max_items: int, max_codes: int, max_beam: int):
    levels = draw(st.integers(1, 5))
    sizes = draw(st.lists(st.integers(1, max_codes), min_size=levels, max_size=levels))
    seed = draw(st.integers(0, 10_000))
    catalog = skewed_catalog(seed, draw(st.integers(1, max_items)), sizes, draw(st.sampled_from([0.0, 1.0, 2.0])))
    cover = draw(st.booleans()) and catalog.num_items <= max_beam
    beam = catalog.num_items if cover else draw(st.integers(1, max_beam))
    top_n = draw(st.integers(1, beam))
    return seed, catalog, beam, top_n, draw(st.integers(1, 3)), draw(st.sampled_from([4, 8, 16]))


def check_backend(problem, backend, device):
    seed, catalog, beam, top_n, batch, hidden = problem
    folded = make_heads(seed, catalog.codebook_sizes, hidden)
    ctx = make_ctx(seed, folded, batch)
    ref = decode_folded(folded, ctx, catalog, beam, top_n, backend="reference")
    assert_valid_items(ref, catalog)
    assert (ref.items >= 0).sum(dim=1).tolist() == [min(top_n, catalog.num_items)] * batch, \
        "a beam search over a catalog always fills min(top_n, items) slots"
    if beam >= catalog.num_items:
        oracle = exhaustive_search(lambda level, p: folded_logits(folded, level, ctx[level], p), catalog, batch, top_n)
        assert_same_ranking(ref, oracle)
    out = decode_on(device, folded, ctx, catalog, beam, top_n, backend)
    assert_valid_items(out, catalog)
    assert_same_ranking(out, ref)


@pytest.mark.parametrize("device", OP_DEVICES)
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_items=2000, max_codes=64, max_beam=64))
def test_cpu_backend_properties(device, problem):
    check_backend(problem, "cpu", device)


# The Triton interpreter runs the kernel element by element in Python: fewer, smaller problems.
@pytest.mark.parametrize("device", TRITON_DEVICES)
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_items=300, max_codes=24, max_beam=16))
def test_triton_backend_properties(device, problem):
    check_backend(problem, "triton", device)
