"""The C++ constrained index and beam step (sidmlp_kernels._C) against the PyTorch reference.

CI builds the extension, so these tests import it directly and fail if it is missing. The op
tests take a `device` (tests/devices.py): the C++ ops on CPU tensors, and the same tests on CUDA
tensors run the CUDA ops (marker `cuda`, GPU machines only).
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sidmlp_kernels import SIDCatalog
from sidmlp_kernels import _C  # noqa: F401  (fails loudly when the extension is not built)
from sidmlp_kernels.decode.dispatch import BACKEND_ENV
from sidmlp_kernels.decode.constrained import (
    ConstrainedIndex,
    PrefixState,
    constrained_beam_search,
    has_extension,
    index_for,
)
from sidmlp_kernels.decode.reference import beam_search_reference, beam_step_reference, exhaustive_search
from sidmlp_kernels.decode.types import GenerationOutput
from tests.devices import OP_DEVICES, to_device

TOL = 1e-5


# ---- helpers ------------------------------------------------------------------


def random_catalog(seed, n, sizes):
    g = torch.Generator().manual_seed(seed)
    raw = torch.stack([torch.randint(0, k, (n,), generator=g) for k in sizes], 1)
    codes = torch.unique(raw, dim=0)
    codes = codes[torch.randperm(codes.shape[0], generator=g)]  # the index must not rely on order
    ids = torch.randperm(10 * codes.shape[0], generator=g)[: codes.shape[0]]
    return SIDCatalog.from_codes(ids, codes, sizes)


def chain_catalog(sizes):
    """Every prefix has exactly one child except the first digit: single-child paths."""
    k0 = sizes[0]
    codes = torch.stack([torch.tensor([d] + [(d * 7 + j) % k for j, k in enumerate(sizes[1:])]) for d in range(k0)])
    return SIDCatalog.from_codes(torch.arange(k0) * 3, codes, sizes)


def table_logits(seed, batch, sizes, neg_inf_rate=0.0, dtype=torch.float32):
    """A stateless model: logits depend on (user, prefix) through a random hash table."""
    g = torch.Generator().manual_seed(seed)
    tables = []
    for k in sizes:
        t = torch.randn(batch, 97, k, generator=g) * 2
        if neg_inf_rate:
            t[torch.rand(t.shape, generator=g) < neg_inf_rate] = float("-inf")
        tables.append(t.to(dtype))

    def prefix_logits(level, prefixes):
        key = torch.zeros(prefixes.shape[:2], dtype=torch.long)
        for j in range(level):
            key = key * 31 + prefixes[:, :, j] + 1
        key = key % 97
        return torch.gather(tables[level], 1, key.unsqueeze(-1).expand(-1, -1, sizes[level]))

    return prefix_logits


def cpu(values):
    """Op outputs (tensors, tuples of them, a PrefixState's nodes) back on the CPU for comparison."""
    if isinstance(values, PrefixState):
        return PrefixState(values.nodes.cpu(), values.level)
    if isinstance(values, GenerationOutput):
        return GenerationOutput(values.items.cpu(), values.codes.cpu(), values.scores.cpu())
    return to_device(values, "cpu")


def assert_same_search(out, ref):
    torch.testing.assert_close(out.scores.cpu(), ref.scores, atol=TOL, rtol=TOL)
    assert torch.equal(out.items.cpu(), ref.items)
    assert torch.equal(out.codes.cpu(), ref.codes)


def assert_same_step(got, ref, tol=TOL):
    """Scores close; parents/tokens equal wherever a score is not within tol of another."""
    scores, parents, tokens = got
    ref_scores, ref_parents, ref_tokens = ref
    torch.testing.assert_close(scores, ref_scores, atol=tol, rtol=tol)
    for b in range(scores.shape[0]):
        s = ref_scores[b].tolist()
        for r, value in enumerate(s):
            if math.isinf(value):
                # Dead slots follow the flat order exactly.
                assert parents[b, r] == ref_parents[b, r] and tokens[b, r] == ref_tokens[b, r]
                continue
            neighbours = [s[j] for j in (r - 1, r + 1) if 0 <= j < len(s)]
            if all(abs(value - v) > tol for v in neighbours):
                assert (parents[b, r], tokens[b, r]) == (ref_parents[b, r], ref_tokens[b, r]), (b, r)


def random_level_inputs(cat, seed, level, batch, width, dead_rate=0.2):
    """Prefixes (some outside the catalog), beam scores (some dead) and logits at `level`."""
    g = torch.Generator().manual_seed(seed)
    k = cat.codebook_sizes[level]
    rows = torch.randint(0, cat.num_items, (batch * width,), generator=g)
    prefixes = cat.codes[rows, :level].clone()
    if level:
        scramble = torch.rand(batch * width, generator=g) < 0.2
        random_prefixes = torch.stack(
            [torch.randint(0, cat.codebook_sizes[j], (batch * width,), generator=g) for j in range(level)], 1
        )
        prefixes[scramble] = random_prefixes[scramble]
    prefixes = prefixes.reshape(batch, width, level)
    scores = -torch.rand(batch, width, generator=g) * 3
    scores[torch.rand(batch, width, generator=g) < dead_rate] = float("-inf")
    logits = torch.randn(batch, width, k, generator=g) * 2
    return prefixes, scores, logits


def reference_step(cat, prefixes, scores, logits, beam):
    batch, width, level = prefixes.shape
    valid = cat.valid_children(prefixes.reshape(batch * width, level)).reshape(batch, width, -1)
    valid &= torch.isfinite(scores).unsqueeze(-1)
    return beam_step_reference(logits, scores, valid, beam)


SHAPES = [[5, 7, 3, 6], [3, 3], [7, 2, 5, 3, 4], [6, 10, 3], [2, 2, 2, 2, 2], [256, 3]]


# ---- build and lookup -----------------------------------------------------------


def test_has_extension():
    assert has_extension()


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("sizes", SHAPES)
def test_lookup_matches_catalog(sizes, device):
    cat = random_catalog(1, 300, sizes)
    index = ConstrainedIndex.from_catalog(cat, device=device)
    assert index.num_items == cat.num_items
    assert torch.equal(index.lookup(cat.codes.to(device)).cpu(), cat.item_ids)
    g = torch.Generator().manual_seed(2)
    probe = torch.stack([torch.randint(0, k, (500,), generator=g) for k in sizes], 1)
    assert torch.equal(index.lookup(probe.to(device)).cpu(), cat.lookup(probe))
    for level in range(cat.num_levels + 1):
        assert index.num_nodes(level) == cat.num_prefixes(level)
    # Prefix states are -1 exactly where valid_children says the prefix is not in the catalog.
    for level in range(1, cat.num_levels):
        p = probe[:, :level]
        state = cpu(index.prefix_state(p.to(device)))
        assert state.level == level
        parent_valid = cat.valid_children(p[:, :-1])[torch.arange(500), p[:, -1]]
        assert torch.equal(state.nodes >= 0, parent_valid)


def test_dense_tables_bounded_and_optional():
    cat = random_catalog(3, 2000, [256, 256, 256, 16])
    full = ConstrainedIndex.from_catalog(cat)
    none = ConstrainedIndex.from_catalog(cat, dense_depth=0)
    small = ConstrainedIndex.from_catalog(cat, dense_depth=4, dense_limit=1000)
    dense_sizes = [t.numel() for t in (full.tensors[3], none.tensors[3], small.tensors[3])]
    assert dense_sizes == [256 + cat.num_prefixes(1) * 256, 0, 256]
    # O(items) memory: no K^3 table; CSR part is a few ints per node.
    nodes = sum(cat.num_prefixes(level) for level in range(cat.num_levels + 1))
    assert none.nbytes <= 4 * 3 * (nodes + 1) + 8 * cat.num_items
    for index in (full, none, small):
        assert torch.equal(index.lookup(cat.codes), cat.item_ids)


def test_index_moves_and_reprs():
    cat = random_catalog(4, 50, [4, 5, 3])
    index = ConstrainedIndex.from_catalog(cat)
    assert index.to("cpu") is index
    assert "num_items" in repr(index)
    assert index_for(cat) is index_for(cat)


# ---- one beam step -------------------------------------------------------------


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("sizes", SHAPES)
@pytest.mark.parametrize("beam", [1, 4, 50])
def test_step_matches_reference(sizes, beam, device):
    cat = random_catalog(sum(sizes) + beam, 400, sizes)
    index = ConstrainedIndex.from_catalog(cat)
    on_device = index.to(device)
    for level in range(cat.num_levels):
        for width in (1, 7):
            prefixes, scores, logits = random_level_inputs(cat, 100 * level + width, level, 5, width)
            state = index.prefix_state(prefixes)
            got = cpu(on_device.beam_step(*to_device((logits, scores, state.nodes), device), beam, level=level))
            ref = reference_step(cat, prefixes, scores, logits, beam)
            assert_same_step(got[:3], ref)
            new_state = got[3]
            assert new_state.level == level + 1
            # New states are the trie nodes of the reference's new prefixes.
            ref_prefix = torch.cat(
                [torch.gather(prefixes, 1, ref[1].unsqueeze(-1).expand(-1, -1, level)), ref[2].unsqueeze(-1)], 2
            )
            expect = index.prefix_state(ref_prefix).nodes
            alive = torch.isfinite(ref[0])
            assert torch.equal(new_state.nodes[alive], expect[alive])
            assert (new_state.nodes[~alive] == -1).all()


@pytest.mark.parametrize("device", OP_DEVICES)
def test_step_tie_break_and_dead_beams(device):
    # Mirrors test_decoding.test_step_tie_break_and_dead_beams through the index.
    cat = SIDCatalog.from_codes([0, 1, 2], [[0, 0], [0, 1], [1, 1]], [2, 3])
    index = ConstrainedIndex.from_catalog(cat, device=device)
    state = index.prefix_state(torch.tensor([[[0], [1]]], device=device))
    scores, parents, tokens, new = cpu(index.beam_step(torch.zeros(1, 2, 3, device=device),
                                                       torch.zeros(1, 2, device=device), state, 4))
    assert parents[0, :3].tolist() == [1, 0, 0]
    assert tokens[0, :3].tolist() == [1, 0, 1]
    assert scores[0, 3] == float("-inf")
    assert new.nodes[0, 3] == -1
    ref = reference_step(cat, torch.tensor([[[0], [1]]]), torch.zeros(1, 2), torch.zeros(1, 2, 3), 4)
    assert torch.equal(parents, ref[1]) and torch.equal(tokens, ref[2])


@pytest.mark.parametrize("device", OP_DEVICES)
def test_step_exact_ties_follow_flat_order(device):
    cat = random_catalog(9, 200, [4, 4, 4])
    index = ConstrainedIndex.from_catalog(cat, device=device)
    prefixes, _, _ = random_level_inputs(cat, 9, 2, 3, 6, dead_rate=0.0)
    scores = torch.zeros(3, 6)
    logits = torch.zeros(3, 6, 4)
    got = cpu(index.beam_step(*to_device((logits, scores, index.prefix_state(prefixes.to(device)).nodes), device),
                              10, level=2))
    ref = reference_step(cat, prefixes, scores, logits, 10)
    for a, b in zip(got[:3], ref):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_step_neg_inf_logits_and_all_dead(device):
    cat = random_catalog(10, 100, [5, 4, 3])
    index = ConstrainedIndex.from_catalog(cat, device=device)
    prefixes, scores, logits = random_level_inputs(cat, 10, 1, 4, 5)
    logits[torch.rand(logits.shape, generator=torch.Generator().manual_seed(0)) < 0.5] = float("-inf")

    def step(logits, scores, prefixes, beam):
        state = index.prefix_state(prefixes.to(device))
        return cpu(index.beam_step(logits.to(device), scores.to(device), state, beam))

    got = step(logits, scores, prefixes, 12)
    assert_same_step(got[:3], reference_step(cat, prefixes, scores, logits, 12))
    scores.fill_(float("-inf"))
    got = step(logits, scores, prefixes, 12)
    ref = reference_step(cat, prefixes, scores, logits, 12)
    for a, b in zip(got[:3], ref):
        assert torch.equal(a, b)
    # width * K < beam: padded like the reference.
    got = step(logits[:, :1], scores[:, :1], prefixes[:, :1], 7)
    ref = reference_step(cat, prefixes[:, :1], scores[:, :1], logits[:, :1], 7)
    for a, b in zip(got[:3], ref):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_step_half_logits_equal_upcast(dtype, device):
    cat = random_catalog(11, 300, [6, 5, 4])
    index = ConstrainedIndex.from_catalog(cat, device=device)
    prefixes, scores, logits = random_level_inputs(cat, 11, 1, 4, 6)
    half = logits.to(dtype)
    state = index.prefix_state(prefixes.to(device))
    got = cpu(index.beam_step(half.to(device), scores.to(device), state, 8))
    want = cpu(index.beam_step(half.float().to(device), scores.to(device), state, 8))
    for a, b in zip(got[:3], want[:3]):
        assert torch.equal(a, b)
    assert_same_step(got[:3], reference_step(cat, prefixes, scores, half, 8))


@pytest.mark.parametrize("device", OP_DEVICES)
def test_step_non_contiguous_inputs(device):
    cat = random_catalog(12, 300, [6, 5, 4])
    index = ConstrainedIndex.from_catalog(cat, device=device)
    prefixes, scores, logits = to_device(random_level_inputs(cat, 12, 1, 4, 6), device)
    state = index.prefix_state(prefixes)
    want = index.beam_step(logits, scores, state, 8)
    logits_nc = logits.transpose(0, 1).contiguous().transpose(0, 1)
    scores_nc = scores.t().contiguous().t()
    nodes_nc = torch.stack([state.nodes, state.nodes], -1)[..., 0]
    assert not logits_nc.is_contiguous() and not scores_nc.is_contiguous() and not nodes_nc.is_contiguous()
    got = index.beam_step(logits_nc, scores_nc, PrefixState(nodes_nc, 1), 8)
    for a, b in zip(got[:3], want[:3]):
        assert torch.equal(a, b)
    assert torch.equal(got[3].nodes, want[3].nodes)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_step_empty_batch_and_width(device):
    cat = random_catalog(13, 50, [4, 5])
    index = ConstrainedIndex.from_catalog(cat, device=device)
    scores, parents, tokens, state = cpu(index.beam_step(
        *to_device((torch.zeros(0, 3, 5), torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long)), device), 4, level=1
    ))
    assert scores.shape == parents.shape == tokens.shape == state.nodes.shape == (0, 4)
    scores, parents, tokens, state = cpu(index.beam_step(
        *to_device((torch.zeros(2, 0, 5), torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.long)), device), 3, level=1
    ))
    assert torch.isinf(scores).all() and (state.nodes == -1).all() and (parents == 0).all()


# ---- full beam search ----------------------------------------------------------


CATALOG_CASES = [
    ("one item", lambda: SIDCatalog.from_codes([42], [[1, 2, 0]], [3, 4, 2])),
    ("single-child paths", lambda: chain_catalog([6, 5, 7, 3])),
    ("K not a power of two", lambda: random_catalog(20, 200, [7, 11, 5])),
    ("L=2", lambda: random_catalog(21, 30, [9, 6])),
    ("L=5", lambda: random_catalog(22, 400, [3, 4, 3, 5, 2])),
    ("wide first digit", lambda: random_catalog(23, 500, [256, 4, 3])),
    ("all singleton codebooks", lambda: SIDCatalog.from_codes([5], [[0, 0, 0]], [1, 1, 1])),
]


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("name, make", CATALOG_CASES, ids=[c[0] for c in CATALOG_CASES])
@pytest.mark.parametrize("beam, top_n", [(1, 1), (5, 3), (50, 10), (200, 50)])
def test_search_matches_reference(name, make, beam, top_n, device):
    cat = make()
    index = ConstrainedIndex.from_catalog(cat, device=device)
    for seed in range(3):
        fn = table_logits(seed, 4, list(cat.codebook_sizes), neg_inf_rate=0.1 * (seed == 2))
        out = constrained_beam_search(lambda l, p, parents: fn(l, p), index, 4, beam, top_n)
        ref = beam_search_reference(lambda l, p, parents: fn(l, p), cat, 4, beam, top_n)
        assert_same_search(out, ref)
        assert out.items.device.type == torch.device(device).type
        items, codes = out.items.cpu(), out.codes.cpu()
        valid = items >= 0
        assert torch.equal(cat.lookup(codes[valid]), items[valid])


@pytest.mark.parametrize("device", OP_DEVICES)
@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=2, max_size=5),
    n=st.integers(1, 120),
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 3),
    beam=st.integers(1, 40),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_search_matches_reference_hypothesis(device, sizes, n, seed, batch, beam, dtype):
    cat = random_catalog(seed, n, sizes)
    top_n = max(1, beam // 2)
    fn = table_logits(seed, batch, sizes, neg_inf_rate=0.05, dtype=dtype)
    out = constrained_beam_search(lambda l, p, parents: fn(l, p.cpu()), index_for(cat, device), batch, beam, top_n)
    ref = beam_search_reference(lambda l, p, parents: fn(l, p), cat, batch, beam, top_n)
    assert_same_search(out, ref)


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("seed, sizes, n", [(0, [4, 5, 3], 30), (2, [7, 2, 5, 3, 4], 60), (3, [5, 4], 1)])
def test_full_beam_equals_exhaustive(seed, sizes, n, device):
    cat = random_catalog(seed, n, sizes)
    fn = table_logits(seed, 3, sizes)
    beam = cat.num_items
    out = constrained_beam_search(lambda l, p, parents: fn(l, p.cpu()), cat, 3, beam_size=beam, top_n=beam,
                                  device=device)
    oracle = exhaustive_search(fn, cat, 3, top_n=beam)
    torch.testing.assert_close(out.scores.cpu(), oracle.scores)
    assert torch.equal(out.items.cpu(), oracle.items)


def test_search_passes_parents_like_reference():
    cat = random_catalog(30, 80, [4, 5, 3])
    fn = table_logits(30, 2, [4, 5, 3])
    seen = {"ext": [], "ref": []}

    def recorder(tag):
        def step(level, prefixes, parents):
            seen[tag].append((prefixes.clone(), None if parents is None else parents.clone()))
            return fn(level, prefixes)

        return step

    constrained_beam_search(recorder("ext"), cat, 2, 6, 3)
    beam_search_reference(recorder("ref"), cat, 2, 6, 3)
    for (p1, q1), (p2, q2) in zip(seen["ext"], seen["ref"]):
        assert torch.equal(p1, p2)
        assert (q1 is None and q2 is None) or torch.equal(q1, q2)


def test_search_backend_env_forces_reference(monkeypatch, caplog):
    cat = random_catalog(31, 40, [4, 3])
    fn = table_logits(31, 2, [4, 3])
    monkeypatch.setenv(BACKEND_ENV, "reference")
    out = constrained_beam_search(lambda l, p, parents: fn(l, p), cat, 2, 5, 2)
    ref = beam_search_reference(lambda l, p, parents: fn(l, p), cat, 2, 5, 2)
    assert_same_search(out, ref)
    monkeypatch.setenv(BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match=BACKEND_ENV):
        constrained_beam_search(lambda l, p, parents: fn(l, p), cat, 2, 5, 2)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_finalize_dedups_and_skips_dead(device):
    cat = SIDCatalog.from_codes([10, 11, 12], [[0, 1], [0, 2], [2, 0]], [3, 3])
    index = ConstrainedIndex.from_catalog(cat, device=device)
    state = PrefixState(torch.tensor([[1, 1, -1, 0, 2]], device=device), 2)
    scores = torch.tensor([[-1.0, -1.0, 0.0, -2.0, float("-inf")]], device=device)
    out = cpu(index.finalize(state, scores, 4))
    assert out.items.tolist() == [[11, 10, -1, -1]]
    assert out.codes.tolist() == [[[0, 2], [0, 1], [-1, -1], [-1, -1]]]
    assert out.scores[0, :2].tolist() == [-1.0, -2.0] and torch.isinf(out.scores[0, 2:]).all()


# ---- adversarial inputs -----------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    cat = random_catalog(40, 60, [4, 5, 3])
    index = ConstrainedIndex.from_catalog(cat)
    prefixes, scores, logits = random_level_inputs(cat, 40, 1, 2, 3, dead_rate=0.0)
    return cat, index, prefixes, scores, logits


def test_bad_step_arguments(small):
    cat, index, prefixes, scores, logits = small
    state = index.prefix_state(prefixes)
    cases = [
        (TypeError, "logits", lambda: index.beam_step(logits.long(), scores, state, 3)),
        (TypeError, "logits", lambda: index.beam_step(logits.double(), scores, state, 3)),
        (TypeError, "logits", lambda: index.beam_step(logits.tolist(), scores, state, 3)),
        (TypeError, "beam_scores", lambda: index.beam_step(logits, scores.double(), state, 3)),
        (TypeError, "prefix_state", lambda: index.beam_step(logits, scores, PrefixState(state.nodes.int(), 1), 3)),
        (TypeError, "beam_size", lambda: index.beam_step(logits, scores, state, 3.0)),
        (ValueError, "beam_size", lambda: index.beam_step(logits, scores, state, 0)),
        (ValueError, "level", lambda: index.beam_step(logits, scores, PrefixState(state.nodes, 3), 3)),
        (ValueError, "level", lambda: index.beam_step(logits, scores, state.nodes, 3)),
        (ValueError, "K = 5", lambda: index.beam_step(logits[..., :4], scores, state, 3)),
        (ValueError, "logits must be 3-D", lambda: index.beam_step(logits[0], scores, state, 3)),
        (ValueError, "beam_scores must have shape", lambda: index.beam_step(logits, scores[:, :2], state, 3)),
        (ValueError, "states must have shape", lambda: index.beam_step(logits, scores, PrefixState(state.nodes[:1], 1), 3)),
        (ValueError, "on meta", lambda: index.beam_step(logits.to("meta"), scores, state, 3)),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()


@pytest.mark.parametrize("device", OP_DEVICES)
def test_bad_step_data(small, device):
    cat, index, prefixes, scores, logits = small
    index = index.to(device)
    prefixes, scores, logits = to_device((prefixes, scores, logits), device)
    nodes = index.prefix_state(prefixes).nodes.clone()
    for bad in (index.num_nodes(1), 10**12, -2):
        broken = nodes.clone()
        broken[1, 2] = bad
        with pytest.raises(ValueError, match=r"states\[1, 2\]"):
            index.beam_step(logits, scores, PrefixState(broken, 1), 3)
    nan_logits = logits.clone()
    nan_logits[:] = float("nan")
    with pytest.raises(ValueError, match="logits"):
        index.beam_step(nan_logits, scores, PrefixState(nodes, 1), 3)
    inf_logits = logits.clone()
    inf_logits[:] = float("inf")
    with pytest.raises(ValueError, match="logits"):
        index.beam_step(inf_logits, scores, PrefixState(nodes, 1), 3)
    bad_scores = scores.clone()
    bad_scores[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"beam_scores\[0, 0\]"):
        index.beam_step(logits, bad_scores, PrefixState(nodes, 1), 3)
    # NaN at positions that are not valid children is ignored, like the reference's mask.
    valid = cat.valid_children(prefixes.cpu().reshape(-1, 1)).reshape(logits.shape).to(device)
    masked = logits.clone()
    masked[~valid] = float("nan")
    got = index.beam_step(masked, scores, PrefixState(nodes, 1), 3)
    want = index.beam_step(logits, scores, PrefixState(nodes, 1), 3)
    for a, b in zip(got[:3], want[:3]):
        assert torch.equal(a, b)


def test_bad_lookup_inputs(small):
    cat, index, prefixes, scores, logits = small
    with pytest.raises(ValueError, match=r"prefixes\[0, 1\] = 5 is outside the codebook \[0, 5\)"):
        index.prefix_state(torch.tensor([[0, 5]]))
    with pytest.raises(ValueError, match="outside the codebook"):
        index.lookup(torch.tensor([[0, 0, -1]]))
    with pytest.raises(ValueError, match="codes must have shape"):
        index.lookup(torch.tensor([[0, 0]]))
    with pytest.raises(TypeError, match="codes must be int64"):
        index.lookup(torch.tensor([[0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="at most 3 digits"):
        index.prefix_state(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="level 3"):
        index.lookup(PrefixState(torch.zeros(2, dtype=torch.long), 2))
    with pytest.raises(ValueError, match="states holds"):
        index.lookup(PrefixState(torch.tensor([cat.num_items]), 3))
    state = PrefixState(torch.zeros(1, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="top_n"):
        index.finalize(state, torch.zeros(1, 2), 0)
    with pytest.raises(ValueError, match="scores must have the shape"):
        index.finalize(state, torch.zeros(1, 3), 2)
    with pytest.raises(ValueError, match=r"scores\[0, 1\]"):
        index.finalize(state, torch.tensor([[0.0, float("nan")]]), 2)
    with pytest.raises(ValueError, match="not a node of level 3"):
        index.finalize(PrefixState(torch.tensor([[0, -5]]), 3), torch.zeros(1, 2), 2)
    # Empty inputs are fine.
    assert index.lookup(torch.zeros(0, 3, dtype=torch.long)).shape == (0,)
    assert index.finalize(PrefixState(torch.zeros(0, 2, dtype=torch.long), 3), torch.zeros(0, 2), 2).items.shape == (0, 2)


def test_corrupt_index_is_rejected(small):
    cat, index, prefixes, scores, logits = small
    tensors, meta = index.tensors, index.meta
    bad_ptr = [t.clone() for t in tensors]
    bad_ptr[0][1] = 10**6  # child range far outside the next level
    with pytest.raises(ValueError, match="corrupt"):
        ConstrainedIndex(bad_ptr, meta)
    # Without validation the op still refuses to read out of bounds.
    unchecked = ConstrainedIndex(bad_ptr, meta, validate=False)
    with pytest.raises(ValueError):
        unchecked.beam_step(logits[:, :, :4][:, :1], scores[:, :1], unchecked.root_state(2), 3)
    bad_tok = [t.clone() for t in tensors]
    bad_tok[1][1:] = 99
    with pytest.raises(ValueError, match="corrupt|codebook"):
        ConstrainedIndex(bad_tok, meta)
    unchecked = ConstrainedIndex(bad_tok, meta, validate=False)
    with pytest.raises(ValueError, match="corrupt"):
        unchecked.beam_step(torch.zeros(2, 1, 4), torch.zeros(2, 1), unchecked.root_state(2), 3)
    with pytest.raises(ValueError, match="meta"):
        ConstrainedIndex(tensors, meta[:-1])
    with pytest.raises(ValueError, match="child_ptr"):
        ConstrainedIndex([tensors[0][:-1]] + tensors[1:], meta)
    with pytest.raises(TypeError, match="int32"):
        ConstrainedIndex([tensors[0].long()] + tensors[1:], meta)
    with pytest.raises(ValueError, match="5 tensors"):
        torch.ops.sidmlp.beam_step(logits, scores, index.prefix_state(prefixes).nodes, tensors[:4], meta, 1, 3)


def test_bad_catalog_inputs_to_build():
    with pytest.raises(ValueError, match="unique"):
        torch.ops.sidmlp.build_index(torch.tensor([[0, 1], [0, 1]]), torch.tensor([1, 2]), [2, 2], 2, 100)
    with pytest.raises(ValueError, match="outside the codebook"):
        torch.ops.sidmlp.build_index(torch.tensor([[0, 2]]), torch.tensor([1]), [2, 2], 2, 100)
    with pytest.raises(TypeError, match="codes must be int64"):
        torch.ops.sidmlp.build_index(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), [2, 2], 2, 100)
    with pytest.raises(ValueError, match="codebook_sizes"):
        torch.ops.sidmlp.build_index(torch.tensor([[0, 1]]), torch.tensor([1]), [2], 2, 100)
    with pytest.raises(TypeError, match="SIDCatalog"):
        ConstrainedIndex.from_catalog(torch.zeros(3))


def test_search_argument_errors():
    cat = random_catalog(50, 30, [4, 3])
    fn = table_logits(50, 2, [4, 3])
    with pytest.raises(ValueError, match="top_n"):
        constrained_beam_search(lambda l, p, q: fn(l, p), cat, 2, 3, 4)
    with pytest.raises(ValueError, match="batch_size"):
        constrained_beam_search(lambda l, p, q: fn(l, p), cat, 0, 3, 2)
    with pytest.raises(ValueError, match="step_fn must return logits of shape"):
        constrained_beam_search(lambda l, p, q: fn(l, p)[..., :2], cat, 2, 3, 2)
    with pytest.raises(TypeError, match="index"):
        constrained_beam_search(lambda l, p, q: fn(l, p), "catalog", 2, 3, 2)


# ---- torch.library / torch.compile -------------------------------------------------


def test_opcheck(small):
    cat, index, prefixes, scores, logits = small
    nodes = index.prefix_state(prefixes).nodes
    t, meta = index.tensors, index.meta
    torch.library.opcheck(torch.ops.sidmlp.beam_step.default, (logits, scores, nodes, t, meta, 1, 4))
    torch.library.opcheck(torch.ops.sidmlp.prefix_states.default, (prefixes.reshape(-1, 1), t, meta))
    leaves = index.prefix_state(cat.codes[:5]).nodes
    torch.library.opcheck(torch.ops.sidmlp.leaf_items.default, (leaves, t, meta))
    torch.library.opcheck(
        torch.ops.sidmlp.finalize.default, (leaves.reshape(1, 5), torch.zeros(1, 5), t, meta, 3)
    )


def test_torch_compile_fullgraph(small):
    cat, index, prefixes, scores, logits = small
    state = index.prefix_state(prefixes)

    def step(logits, scores, nodes):
        s, p, tok, new = index.beam_step(torch.log_softmax(logits, -1), scores, PrefixState(nodes, 1), 4)
        return s * 2, p, tok, new.nodes

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(logits, scores, state.nodes), step(logits, scores, state.nodes)):
        assert torch.equal(a, b)


# ---- valid_mask / advance_states / child_logits (the Triton and cpu decode paths) -----


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("sizes", SHAPES)
@pytest.mark.parametrize("dense_depth", [0, 2, 5])
def test_valid_mask_matches_catalog(sizes, dense_depth, device):
    cat = random_catalog(sum(sizes) + dense_depth, 300, sizes)
    index = ConstrainedIndex.from_catalog(cat, dense_depth=dense_depth)
    on_device = index.to(device)
    for level in range(cat.num_levels):
        prefixes, scores, _ = random_level_inputs(cat, 7 * level + 1, level, 4, 6)
        state = index.prefix_state(prefixes)
        nodes = state.nodes.clone()
        nodes[0, 0] = -1  # an explicitly dead beam
        want = cat.valid_children(prefixes.reshape(4 * 6, level)).reshape(4, 6, -1)
        want[0, 0] = False
        got = on_device.valid_mask(PrefixState(nodes.to(device), level))
        assert got.dtype == torch.bool and got.shape == (4, 6, sizes[level]) and got.device.type == device
        assert torch.equal(got.cpu(), want)
        assert torch.equal(on_device.valid_mask(nodes.to(device), level).cpu(), want)


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("sizes", SHAPES)
def test_advance_states_matches_prefix_states(sizes, device):
    cat = random_catalog(sum(sizes) + 1, 300, sizes)
    index = ConstrainedIndex.from_catalog(cat)
    on_device = index.to(device)

    def advance(*args):
        return cpu(on_device.advance_states(*to_device(args, device), level=level))
    g = torch.Generator().manual_seed(3)
    for level in range(cat.num_levels):
        batch, width, beam = 3, 5, 9
        prefixes, _, _ = random_level_inputs(cat, 11 * level + 2, level, batch, width)
        state = index.prefix_state(prefixes)
        k = sizes[level]
        parents = torch.randint(0, width, (batch, beam), generator=g)
        tokens = torch.randint(0, k, (batch, beam), generator=g)
        # Half of the slots pick a valid child of their parent, so both outcomes occur.
        valid = index.valid_mask(state)
        for b in range(batch):
            for r in range(0, beam, 2):
                children = valid[b, parents[b, r]].nonzero().flatten()
                if children.numel():
                    tokens[b, r] = children[torch.randint(0, children.numel(), (1,), generator=g)]
        extended = torch.cat([torch.gather(prefixes, 1, parents.unsqueeze(-1).expand(-1, -1, level)), tokens.unsqueeze(-1)], 2)
        want = index.prefix_state(extended).nodes
        got = advance(state.nodes, parents, tokens)
        assert got.level == level + 1
        assert torch.equal(got.nodes, want)
        # Alive exactly where the mask says the digit is a valid child.
        assert torch.equal(got.nodes >= 0, torch.gather(valid, 1, parents.unsqueeze(-1).expand(-1, -1, k)).gather(2, tokens.unsqueeze(-1)).squeeze(-1))
        # With scores, -inf slots are dead whatever they point at.
        scores = torch.zeros(batch, beam)
        scores[:, ::3] = float("-inf")
        dead = advance(state.nodes, parents, tokens, scores).nodes
        assert (dead[:, ::3] == -1).all()
        keep = torch.isfinite(scores)
        assert torch.equal(dead[keep], want[keep])


@pytest.mark.parametrize("device", OP_DEVICES)
def test_valid_mask_and_advance_match_beam_step(device):
    """valid_mask -> beam_step_reference -> advance_states reproduces the C++/CUDA beam_step exactly."""
    cat = random_catalog(60, 400, [6, 5, 4, 3])
    index = ConstrainedIndex.from_catalog(cat, device=device)
    for level in range(cat.num_levels):
        prefixes, scores, logits = to_device(random_level_inputs(cat, 60 + level, level, 4, 7), device)
        state = index.prefix_state(prefixes)
        valid = index.valid_mask(state) & torch.isfinite(scores).unsqueeze(-1)
        ref = beam_step_reference(logits, scores, valid, 10)
        got = index.beam_step(logits, scores, state, 10)
        assert_same_step(got[:3], ref)
        new = index.advance_states(state, ref[1], ref[2], ref[0])
        alive = torch.isfinite(ref[0])
        assert torch.equal(new.nodes[alive], got[3].nodes[alive])
        assert (new.nodes[~alive] == -1).all()


def test_child_logits_match_dense_at_valid_children():
    cat = random_catalog(61, 300, [6, 7, 5])
    index = ConstrainedIndex.from_catalog(cat)
    g = torch.Generator().manual_seed(61)
    for level in range(cat.num_levels):
        prefixes, _, _ = random_level_inputs(cat, 61 + level, level, 3, 5)
        state = index.prefix_state(prefixes)
        k, h = cat.codebook_sizes[level], 19  # H not a multiple of the 8-wide partial sums
        out_w, out_b = torch.randn(k, h, generator=g), torch.randn(k, generator=g)
        live = state.nodes.reshape(-1) >= 0
        hidden = torch.randn(int(live.sum()), h, generator=g)
        rows = torch.where(live, torch.cumsum(live, 0) - 1, -1).reshape(3, 5)
        got = index.child_logits(hidden, rows, out_w, out_b, state)
        dense = torch.zeros(15, k)
        dense[live] = hidden @ out_w.T + out_b
        valid = index.valid_mask(state)
        torch.testing.assert_close(got[valid], dense.reshape(3, 5, k)[valid], atol=1e-5, rtol=1e-5)
        assert (got[~valid] == 0).all()


def test_mask_ops_bad_inputs(small):
    cat, index, prefixes, scores, logits = small
    state = index.prefix_state(prefixes)  # (2, 3) at level 1
    parents = torch.zeros(2, 4, dtype=torch.long)
    tokens = torch.zeros(2, 4, dtype=torch.long)
    broken = state.nodes.clone()
    broken[1, 2] = index.num_nodes(1)
    t, meta = index.tensors, index.meta
    cases = [
        (ValueError, r"states\[1, 2\] = \d+ is not a node of level 1", lambda: index.valid_mask(broken, 1)),
        (ValueError, "level must be in", lambda: index.valid_mask(state.nodes, 3)),
        (ValueError, "level is required", lambda: index.valid_mask(state.nodes)),
        (TypeError, "int64", lambda: index.valid_mask(state.nodes.int(), 1)),
        (ValueError, r"\(B, W\)", lambda: index.valid_mask(state.nodes[0], 1)),
        (ValueError, "states must be 2-D", lambda: torch.ops.sidmlp.valid_mask(state.nodes[0], t, meta, 1)),
        (ValueError, r"parents\[0, 1\] = 3 is not a beam of states \(expected \[0, 3\)\)",
         lambda: index.advance_states(state, parents.index_fill(1, torch.tensor([1]), 3), tokens)),
        (ValueError, r"tokens\[1, 0\] = 5 is outside the codebook \[0, 5\) of level 1",
         lambda: index.advance_states(state, parents, tokens.index_fill(0, torch.tensor([1]), 5))),
        (ValueError, r"states\[1, 2\]", lambda: index.advance_states(PrefixState(broken, 1), parents + 2, tokens)),
        (ValueError, "tokens must have the shape", lambda: index.advance_states(state, parents, tokens[:, :2])),
        (ValueError, "parents must have shape", lambda: index.advance_states(state, parents[:1], tokens[:1])),
        (TypeError, "parents must be int64", lambda: index.advance_states(state, parents.int(), tokens)),
        (TypeError, "scores must be float32", lambda: index.advance_states(state, parents, tokens, torch.zeros(2, 4, dtype=torch.float64))),
        (ValueError, r"scores\[0, 0\] is nan", lambda: index.advance_states(state, parents, tokens, torch.full((2, 4), float("nan")))),
        (ValueError, "scores must have the shape", lambda: torch.ops.sidmlp.advance_states(state.nodes, parents, tokens, t, meta, 1, torch.zeros(2, 3))),
        (ValueError, "rows must have the shape",
         lambda: index.child_logits(torch.zeros(6, 4), torch.zeros(2, 2, dtype=torch.long), torch.zeros(5, 4), torch.zeros(5), state)),
        (ValueError, r"rows\[0, 0\] = 6 is not a row of hidden",
         lambda: index.child_logits(torch.zeros(6, 4), torch.full((2, 3), 6), torch.zeros(5, 4), torch.zeros(5), state)),
        (ValueError, r"out_w must have shape \(5, 4\)",
         lambda: index.child_logits(torch.zeros(6, 4), torch.zeros(2, 3, dtype=torch.long), torch.zeros(4, 4), torch.zeros(5), state)),
        (TypeError, "float32",
         lambda: index.child_logits(torch.zeros(6, 4).double(), torch.zeros(2, 3, dtype=torch.long), torch.zeros(5, 4), torch.zeros(5), state)),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()
    # Dead slots (-inf) are placeholders: out-of-range parents/tokens there are fine.
    dead = index.advance_states(state, parents + 7, tokens + 9, torch.full((2, 4), float("-inf")))
    assert (dead.nodes == -1).all()


def test_mask_ops_empty_and_opcheck(small):
    cat, index, prefixes, scores, logits = small
    state = index.prefix_state(prefixes)
    assert index.valid_mask(torch.zeros(0, 3, dtype=torch.long), 1).shape == (0, 3, 5)
    assert index.advance_states(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long),
                                torch.zeros(2, 0, dtype=torch.long), level=1).nodes.shape == (2, 0)
    t, meta = index.tensors, index.meta
    parents = torch.tensor([[0, 1, 2, 0], [2, 1, 0, 0]])
    tokens = torch.tensor([[0, 1, 2, 3], [4, 0, 1, 2]])
    torch.library.opcheck(torch.ops.sidmlp.valid_mask.default, (state.nodes, t, meta, 1))
    torch.library.opcheck(torch.ops.sidmlp.advance_states.default, (state.nodes, parents, tokens, t, meta, 1))
    torch.library.opcheck(
        torch.ops.sidmlp.advance_states.default, (state.nodes, parents, tokens, t, meta, 1, torch.zeros(2, 4))
    )
    rows = torch.arange(6).reshape(2, 3)
    torch.library.opcheck(
        torch.ops.sidmlp.child_logits.default, (torch.randn(6, 4), rows, torch.randn(5, 4), torch.randn(5), state.nodes, t, meta, 1)
    )
