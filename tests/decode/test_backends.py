"""Decoding backends (sidmlp_kernels.decode.backends) against the PyTorch reference and the exhaustive oracle.

Every backend runs on every device it supports (tests/devices.py): 'reference', 'cpu' (C++ ops,
dense and sparse head paths; on CUDA tensors the CUDA ops, marker `cuda`) and 'triton' (the fused
step: in Triton's CPU interpreter here, the interpreted part kept small; compiled on CUDA).
"""

import logging
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

# conftest.py sets TRITON_INTERPRET=1 (no CUDA here) before triton is imported.
from sidmlp_kernels import SIDCatalog
from sidmlp_kernels.decode import backends, constrained, dispatch
from sidmlp_kernels.decode.backends import BACKEND_ENV, BACKENDS, decode_folded, select_backend
from sidmlp_kernels.decode.reference import exhaustive_search
from sidmlp_kernels.decode.folded import FoldedHeads, folded_logits
from tests.devices import BACKEND_DEVICES, OP_DEVICES, TRITON_DEVICES, interpreting

# The suite runs where the package was installed by scripts/install.sh: the C++ extension and
# triton must be there, and a missing one is a failure, not a skip.
HAS_EXT = constrained.has_extension()
import triton  # noqa: E402,F401

HAS_TRITON = True


def test_extension_is_built():
    assert HAS_EXT, "sidmlp_kernels._C is not built: run `pip install --no-build-isolation -e .`"

TOL = 1e-4


# ---- builders -------------------------------------------------------------------


def random_catalog(seed, n, sizes):
    g = torch.Generator().manual_seed(seed)
    raw = torch.stack([torch.randint(0, k, (n,), generator=g) for k in sizes], 1)
    codes = torch.unique(raw, dim=0)
    codes = codes[torch.randperm(codes.shape[0], generator=g)]
    ids = torch.randperm(10 * codes.shape[0], generator=g)[: codes.shape[0]]
    return SIDCatalog.from_codes(ids, codes, sizes)


def chain_catalog(sizes):
    """Each first digit starts one item: every deeper prefix has a single child."""
    k0 = sizes[0]
    codes = torch.stack([torch.tensor([d] + [(d * 7 + j) % k for j, k in enumerate(sizes[1:])]) for d in range(k0)])
    return SIDCatalog.from_codes(torch.arange(k0) * 3, codes, sizes)


def make_heads(seed, sizes, hidden, context=6, constant=False):
    """Random folded heads; constant=True zeroes the output layers (all logits 0: exact ties)."""
    g = torch.Generator().manual_seed(seed)
    num_levels = len(sizes)
    scale = 3.0 / math.sqrt(hidden)

    def out_w(k):
        return torch.zeros(k, hidden) if constant else torch.randn(k, hidden, generator=g) * scale

    def out_b(k):
        return torch.zeros(k) if constant else torch.randn(k, generator=g) * 0.1

    return FoldedHeads(
        ctx_weight=[torch.randn(hidden, context, generator=g) for _ in range(num_levels)],
        ctx_bias=[torch.randn(hidden, generator=g) * 0.1 for _ in range(num_levels)],
        prefix_tables=[[torch.randn(sizes[j], hidden, generator=g) * 0.5 for j in range(l)] for l in range(num_levels)],
        ln_weight=[torch.rand(hidden, generator=g) + 0.5 for _ in range(num_levels)],
        ln_bias=[torch.randn(hidden, generator=g) * 0.1 for _ in range(num_levels)],
        ln_eps=1e-5,
        out_weight=[out_w(k) for k in sizes],
        out_bias=[out_b(k) for k in sizes],
    )


def make_ctx(seed, folded, batch):
    g = torch.Generator().manual_seed(seed + 1)
    return [torch.randn(batch, int(w.shape[1]), generator=g) for w in folded.out_weight]


def available_backends(device="cpu"):
    """The backends that can run on `device` in this process (triton on CPU only when interpreting)."""
    names = ["reference"]
    if HAS_EXT:
        names.append("cpu")
    if HAS_EXT and HAS_TRITON and (torch.device(device).type == "cuda" or interpreting()):
        names.append("triton")
    return names


def decode_on(device, folded, ctx, catalog, beam, top_n, backend, precision="fp32"):
    """decode_folded with the heads and contexts on `device` (the reference always runs on CPU).

    The triton backend runs in `precision` (fp32 here, so that it is compared with the fp32
    reference exactly; its CUDA default is bf16, tested on its own below).
    """
    kwargs = {"precision": precision} if backend == "triton" else {}
    return decode_folded(folded.to(device), [c.to(device) for c in ctx], catalog, beam, top_n, backend=backend,
                         **kwargs)


# ---- comparison -------------------------------------------------------------------


def assert_same_ranking(out, ref, tol=TOL):
    """Scores close; items equal wherever the ranking is not decided by a near-tie (docs/architecture.md, "Decoding semantics").

    Runs of scores within `tol` of each other are near-ties: inside a run the item *set* must
    match, except for a run reaching the end of the list (the top_n cut may split it).
    """
    assert out.items.shape == ref.items.shape and out.codes.shape == ref.codes.shape
    items, scores = out.items.cpu(), out.scores.cpu()
    ref_items, ref_scores = ref.items.cpu(), ref.scores.cpu()
    torch.testing.assert_close(scores, ref_scores, atol=tol, rtol=tol)
    assert torch.equal(items == -1, ref_items == -1)
    assert torch.equal(torch.isinf(scores), torch.isinf(ref_scores))
    n = items.shape[1]
    for b in range(items.shape[0]):
        s = ref_scores[b].tolist()
        start = 0
        while start < n:
            end = start + 1
            while end < n and math.isfinite(s[end]) and abs(s[end] - s[end - 1]) <= tol:
                end += 1
            if end < n or end - start == 1:
                assert sorted(items[b, start:end].tolist()) == sorted(ref_items[b, start:end].tolist()), (b, start)
                if end - start == 1:
                    assert torch.equal(out.codes[b, start].cpu(), ref.codes[b, start].cpu())
            start = end
    # Every returned item is a catalog item with its own code.
    return True


def assert_valid_items(out, catalog):
    items, codes = out.items.cpu(), out.codes.cpu()
    alive = items >= 0
    assert torch.equal(catalog.lookup(codes[alive]), items[alive])
    for row in items.tolist():
        live = [i for i in row if i >= 0]
        assert len(live) == len(set(live)), "items must be distinct"


# ---- sweeps -------------------------------------------------------------------------

# name, catalog builder, hidden, batch, beam, top_n, constant heads
CASES = [
    ("one item", lambda: SIDCatalog.from_codes([42], [[1, 2, 0]], [3, 4, 2]), 8, 2, 4, 3, False),
    ("single-child prefixes", lambda: chain_catalog([6, 5, 7, 3]), 8, 2, 4, 4, False),
    ("K not a power of two", lambda: random_catalog(20, 200, [7, 11, 5]), 16, 3, 8, 5, False),
    ("beam > valid candidates", lambda: random_catalog(21, 6, [3, 4, 2]), 8, 2, 16, 10, False),
    ("L=2", lambda: random_catalog(22, 30, [9, 6]), 12, 2, 5, 5, False),
    ("L=5", lambda: random_catalog(23, 150, [3, 4, 3, 5, 2]), 8, 2, 6, 4, False),
    ("exact ties", lambda: random_catalog(24, 60, [4, 5, 3]), 8, 2, 7, 7, True),
    ("singleton codebooks", lambda: SIDCatalog.from_codes([5], [[0, 0, 0]], [1, 1, 1]), 4, 1, 3, 2, False),
]


@pytest.fixture(params=["dense", "sparse"])
def head_path(request, monkeypatch):
    """Force the cpu backend's dense GEMM or its sparse valid-children path on every level."""
    # Fan-out is >= 1, so a huge divisor never picks sparse and 0 always does.
    monkeypatch.setattr(backends, "SPARSE_FANOUT_DIVISOR", 10**9 if request.param == "dense" else 0)
    return request.param


def check_case(case, backend, device):
    name, make, hidden, batch, beam, top_n, constant = case
    cat = make()
    folded = make_heads(len(name), list(cat.codebook_sizes), hidden, constant=constant)
    ctx = make_ctx(len(name), folded, batch)
    ref = decode_folded(folded, ctx, cat, beam, top_n, backend="reference")
    out = decode_on(device, folded, ctx, cat, beam, top_n, backend)
    assert out.items.device.type == torch.device(device).type
    assert_same_ranking(out, ref)
    assert_valid_items(out, cat)
    if constant:  # exact ties resolve by (beam, token) in every backend
        assert torch.equal(out.items.cpu(), ref.items)


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cpu_matches_reference_cases(case, head_path, device):
    check_case(case, "cpu", device)


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_triton_matches_reference_cases(case, device):
    check_case(case, "triton", device)


@pytest.mark.parametrize("device", OP_DEVICES)
@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=2, max_size=5),
    n=st.integers(1, 150),
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 3),
    beam=st.integers(1, 24),
    hidden=st.sampled_from([4, 8, 24]),
    sparse=st.booleans(),
)
def test_cpu_matches_reference_sweep(device, sizes, n, seed, batch, beam, hidden, sparse):
    cat = random_catalog(seed, n, sizes)
    folded = make_heads(seed, sizes, hidden)
    ctx = make_ctx(seed, folded, batch)
    top_n = max(1, beam // 2)
    ref = decode_folded(folded, ctx, cat, beam, top_n, backend="reference")
    old = backends.SPARSE_FANOUT_DIVISOR
    backends.SPARSE_FANOUT_DIVISOR = 0 if sparse else 10**9
    try:
        out = decode_on(device, folded, ctx, cat, beam, top_n, "cpu")
    finally:
        backends.SPARSE_FANOUT_DIVISOR = old
    assert_same_ranking(out, ref)


# Seeded random shapes for the interpreted Triton path (each decode = L kernel launches).
TRITON_SWEEP = [
    # seed, sizes, n, batch, beam, hidden
    (1, [5, 3], 12, 2, 4, 8),
    (2, [4, 6, 3], 40, 1, 9, 16),
    (3, [2, 3, 2, 3], 30, 2, 5, 8),
    (4, [3, 2, 4, 2, 3], 80, 1, 7, 4),
    (5, [10, 7], 50, 3, 12, 12),
]


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("seed, sizes, n, batch, beam, hidden", TRITON_SWEEP)
def test_triton_matches_reference_sweep(seed, sizes, n, batch, beam, hidden, device):
    cat = random_catalog(seed, n, sizes)
    folded = make_heads(seed, sizes, hidden)
    ctx = make_ctx(seed, folded, batch)
    top_n = max(1, beam - 2)
    ref = decode_folded(folded, ctx, cat, beam, top_n, backend="reference")
    assert_same_ranking(decode_on(device, folded, ctx, cat, beam, top_n, "triton"), ref)


# ---- exhaustive oracle ------------------------------------------------------------


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@pytest.mark.parametrize("seed, sizes, n", [(0, [4, 5, 3], 25), (1, [3, 2, 3, 2], 20), (2, [6, 4], 1)])
def test_full_beam_equals_exhaustive(backend, device, seed, sizes, n):
    cat = random_catalog(seed, n, sizes)
    folded = make_heads(seed, sizes, 8)
    ctx = make_ctx(seed, folded, 2)
    beam = cat.num_items
    oracle = exhaustive_search(lambda level, p: folded_logits(folded, level, ctx[level], p), cat, 2, top_n=beam)
    out = decode_on(device, folded, ctx, cat, beam, beam, backend)
    assert_same_ranking(out, oracle)


# ---- dispatch -------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    monkeypatch.setattr(dispatch, "_FALLBACK_LOGGED", False)
    return monkeypatch


def test_default_backend_per_device(clean_env):
    assert set(BACKENDS) == {"reference", "cpu", "triton"}
    assert select_backend(torch.device("cpu")) == ("cpu" if HAS_EXT else "reference")


@pytest.mark.cuda
def test_default_backend_on_cuda_is_triton_on_the_cuda_ops(clean_env):
    assert dispatch.has_cuda_extension(), "sidmlp_kernels._C was built without its CUDA ops"
    assert select_backend(torch.device("cuda")) == "triton"
    cat = random_catalog(7, 30, [4, 3])
    assert constrained.index_for(cat, "cuda").device.type == "cuda"


@pytest.mark.parametrize("name", ["reference", "cpu", "triton", " CPU "])
def test_env_var_forces_backend(clean_env, name):
    clean_env.setenv(BACKEND_ENV, name)
    want = name.strip().lower()
    if want in available_backends():
        assert select_backend(torch.device("cpu")) == want
    else:
        with pytest.raises(RuntimeError, match=want):
            select_backend(torch.device("cpu"))


def test_env_var_drives_decode(clean_env, caplog):
    cat = random_catalog(3, 20, [4, 3])
    folded = make_heads(3, [4, 3], 8)
    ctx = make_ctx(3, folded, 2)
    clean_env.setenv(BACKEND_ENV, "reference")
    calls = []
    original = backends._DECODERS["reference"]
    clean_env.setitem(backends._DECODERS, "reference", lambda *a: calls.append(1) or original(*a))
    with caplog.at_level(logging.WARNING, logger="sidmlp_kernels"):
        decode_folded(folded, ctx, cat, 4, 2)
    assert calls == [1]
    assert not caplog.records, "a forced reference is not a fallback: no warning"


def test_invalid_backend_lists_valid_ones(clean_env):
    clean_env.setenv(BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match=r"SIDMLP_BACKEND.*'reference', 'cpu', 'triton'.*'cuda'"):
        select_backend(torch.device("cpu"))
    clean_env.delenv(BACKEND_ENV)
    with pytest.raises(ValueError, match="'reference', 'cpu', 'triton'"):
        select_backend(torch.device("cpu"), "fast")


def test_argument_overrides_env(clean_env):
    clean_env.setenv(BACKEND_ENV, "bogus")  # never read when the caller names a backend
    assert select_backend(torch.device("cpu"), "reference") == "reference"


def test_forcing_cpu_without_extension_is_a_clear_error(clean_env):
    clean_env.setattr(dispatch, "has_extension", lambda: False)
    clean_env.setenv(BACKEND_ENV, "cpu")
    with pytest.raises(RuntimeError, match=r"SIDMLP_BACKEND='cpu'.*not built.*pip install"):
        select_backend(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="not built"):
        select_backend(torch.device("cpu"), "triton")


def test_fallback_logs_one_line_per_process(clean_env, caplog):
    clean_env.setattr(dispatch, "has_extension", lambda: False)
    cat = random_catalog(4, 20, [4, 3])
    folded = make_heads(4, [4, 3], 8)
    ctx = make_ctx(4, folded, 2)
    with caplog.at_level(logging.WARNING, logger="sidmlp_kernels"):
        assert select_backend(torch.device("cpu")) == "reference"
        out = decode_folded(folded, ctx, cat, 4, 2)
        assert select_backend(torch.device("cpu")) == "reference"
    records = [r for r in caplog.records if r.name == "sidmlp_kernels"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "reference" in message and "not built" in message and BACKEND_ENV in message
    assert_same_ranking(out, decode_folded(folded, ctx, cat, 4, 2, backend="reference"))


def test_cuda_device_without_cuda_ops_falls_back(clean_env, caplog):
    clean_env.setattr(dispatch, "has_cuda_extension", lambda: False)
    with caplog.at_level(logging.WARNING, logger="sidmlp_kernels"):
        assert select_backend(torch.device("cuda")) == "reference"
    assert len(caplog.records) == 1 and "CUDA" in caplog.records[0].getMessage()
    with pytest.raises(RuntimeError, match="CUDA"):
        select_backend(torch.device("cuda"), "triton")


# ---- input checks ---------------------------------------------------------------------


def test_bad_inputs_raise_value_errors():
    cat = random_catalog(5, 20, [4, 3])
    folded = make_heads(5, [4, 3], 8)
    ctx = make_ctx(5, folded, 2)
    with pytest.raises(ValueError, match="top_n"):
        decode_folded(folded, ctx, cat, 2, 3)
    with pytest.raises(ValueError, match="beam_size"):
        decode_folded(folded, ctx, cat, 0, 1)
    with pytest.raises(ValueError, match="codebook_sizes"):
        decode_folded(folded, ctx, random_catalog(5, 20, [4, 5]), 4, 2)
    with pytest.raises(ValueError, match="one"):
        decode_folded(folded, ctx[:1], cat, 4, 2)
    with pytest.raises(ValueError, match=r"ctx_proj\[1\]"):
        decode_folded(folded, [ctx[0], ctx[1][:1]], cat, 4, 2)
    with pytest.raises(ValueError, match=r"ctx_proj\[0\]"):
        decode_folded(folded, [c[:0] for c in ctx], cat, 4, 2)
    with pytest.raises(TypeError, match="ctx_proj"):
        decode_folded(folded, ctx[0], cat, 4, 2)
    bad = make_heads(5, [4, 3], 8)
    bad.prefix_tables[1][0] = bad.prefix_tables[1][0][:, :4]
    with pytest.raises(ValueError, match=r"prefix_tables\[1\]\[0\]"):
        decode_folded(bad, ctx, cat, 4, 2)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_beam_cap_names_the_argument_and_cpu_has_none(device):
    from sidmlp_kernels.decode.kernels.fused_step import MAX_BEAM

    cat = random_catalog(8, 400, [16, 17])
    folded = make_heads(8, [16, 17], 8)
    ctx = make_ctx(8, folded, 1)
    with pytest.raises(ValueError, match=rf"beam_size must be <= {MAX_BEAM}"):
        decode_on(device, folded, ctx, cat, MAX_BEAM + 1, 5, "triton")
    ref = decode_folded(folded, ctx, cat, MAX_BEAM + 1, 5, backend="reference")
    assert_same_ranking(decode_on("cpu", folded, ctx, cat, MAX_BEAM + 1, 5, "cpu"), ref)


def head_logits_problem(device):
    """Folded heads, contexts, prefixes and trie states (some beams dead) of a 3-digit catalog on `device`."""
    sizes = [6, 5, 4]
    cat = random_catalog(9, 200, sizes)
    folded = make_heads(9, sizes, 16)
    ctx = make_ctx(9, folded, 3)
    index = constrained.index_for(cat, device)
    g = torch.Generator().manual_seed(9)
    level = 2
    prefixes = cat.codes[torch.randint(0, cat.num_items, (3 * 4,), generator=g), :level].reshape(3, 4, level)
    nodes = index.prefix_state(prefixes.to(device)).nodes.clone()
    nodes[0, 1] = nodes[2, 3] = -1  # dead beams
    return folded, ctx, prefixes, nodes, index, level


@pytest.mark.parametrize("all_rows", [False, True])
def test_head_logits_on_all_rows_equal_the_reference_at_live_beams(monkeypatch, all_rows):
    """The CUDA branch (every beam a row, no live count) and the CPU one (live beams only) both
    give the reference's logits at every live beam; here on CPU tensors."""
    folded, ctx, prefixes, nodes, index, level = head_logits_problem("cpu")
    monkeypatch.setattr(backends, "_all_rows", lambda device: all_rows)
    monkeypatch.setattr(backends, "SPARSE_FANOUT_DIVISOR", 10**9)  # the dense GEMM, as on CUDA
    got = backends._head_logits_cpu(folded, level, ctx[level], prefixes, nodes, index)
    want = folded_logits(folded, level, ctx[level], prefixes)
    live = nodes >= 0
    torch.testing.assert_close(got[live], want[live], atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
def test_cuda_head_logits_make_no_host_sync():
    folded, ctx, prefixes, nodes, index, level = head_logits_problem("cuda")
    dev_folded, dev_ctx, dev_prefixes = folded.to("cuda"), ctx[level].cuda(), prefixes.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = backends._head_logits_cpu(dev_folded, level, dev_ctx, dev_prefixes, nodes, index)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    want = folded_logits(folded, level, ctx[level], prefixes)
    live = nodes.cpu() >= 0
    torch.testing.assert_close(got.cpu()[live], want[live], atol=1e-4, rtol=1e-4)


def test_index_cached_per_catalog_and_device():
    cat = random_catalog(6, 20, [4, 3])
    index = constrained.index_for(cat)
    assert constrained.index_for(cat, "cpu") is index
    assert constrained.index_for(cat, torch.device("cpu")) is index


@pytest.mark.parametrize("backend, device", BACKEND_DEVICES)
@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_head_is_the_same_clear_error_on_every_backend(backend, device, level, bad):
    sizes = (5, 4, 3)
    catalog = random_catalog(11, 40, sizes)
    folded = make_heads(11, sizes, hidden=16)
    folded.out_bias[level] = folded.out_bias[level].clone()
    folded.out_bias[level][:] = bad  # every child of every beam at this digit
    for precision in ("fp32", "bf16") if backend == "triton" else ("fp32",):
        with pytest.raises(ValueError, match="non-finite logit"):
            decode_on(device, folded, make_ctx(11, folded, 3), catalog, 6, 4, backend, precision)


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("bad_row", ["every child", "one code"])
def test_a_non_finite_logit_of_one_prefix_is_an_error_in_bf16(device, bad_row):
    """A NaN reaching only some beams (one code's prefix-table row) is still reported."""
    sizes = (6, 5, 4)
    catalog = random_catalog(12, 100, sizes)
    folded = make_heads(12, sizes, hidden=16)
    table = folded.prefix_tables[2][1] = folded.prefix_tables[2][1].clone()
    if bad_row == "one code":
        table[int(catalog.codes[0, 1])] = float("nan")
    else:
        folded.out_bias[2] = torch.full_like(folded.out_bias[2], float("inf"))
    with pytest.raises(ValueError, match="non-finite logit"):
        decode_on(device, folded, make_ctx(12, folded, 2), catalog, 100, 4, "triton", "bf16")


def all_item_scores(folded, ctx, catalog):
    """(B, N) path log-probability of every catalog item (renormalised), in fp32, and the item ids."""
    n = catalog.num_items
    out = exhaustive_search(lambda level, p: folded_logits(folded, level, ctx[level], p), catalog, ctx[0].shape[0],
                            top_n=n)
    return out.items, out.scores


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("seed, sizes, n, hidden", [(0, [4, 5, 3], 25, 8), (3, [16, 17, 9], 150, 64),
                                                    (5, [10, 7], 50, 96)])
def test_bf16_decode_flash_attention_rule(device, seed, sizes, n, hidden):
    """The default GPU precision: bf16 heads (tables and out_w cast once), fp32 accumulation.

    With beam >= catalog size the decode is exhaustive, so against the fp32 oracle: each returned
    item's score is within twice PyTorch's own bf16 error (all heads in bf16) of its fp32 score,
    and an item is returned instead of a better one only where the two are that close.
    """
    cat = random_catalog(seed, n, sizes)
    folded = make_heads(seed, sizes, hidden)
    ctx = make_ctx(seed, folded, 2)
    items32, scores32 = all_item_scores(folded, ctx, cat)
    items16, scores16 = all_item_scores(folded.to(torch.bfloat16), [c.to(torch.bfloat16) for c in ctx], cat)
    true16 = {}
    for b in range(2):
        exact = dict(zip(items32[b].tolist(), scores32[b].tolist()))
        true16[b] = exact
        torch_err = max(abs(s - exact[i]) for i, s in zip(items16[b].tolist(), scores16[b].tolist()))
        tol = 2 * torch_err + 1e-5
        top_n = min(10, cat.num_items)
        out = decode_on(device, folded, ctx, cat, cat.num_items, top_n, "triton", precision="bf16")
        assert_valid_items(out, cat)
        got, got_scores = out.items[b].cpu().tolist(), out.scores[b].cpu().tolist()
        assert got_scores == sorted(got_scores, reverse=True)
        for item, score in zip(got, got_scores):
            assert abs(score - exact[item]) <= tol, (item, score, exact[item], tol)
        cut = scores32[b, top_n - 1].item()  # the fp32 top_n-th score
        for item in set(items32[b, :top_n].tolist()) ^ set(got):
            assert abs(exact[item] - cut) <= 2 * tol, (item, exact[item], cut, tol)


def test_default_precision_is_bf16_on_cuda_and_fp32_elsewhere():
    from sidmlp_kernels.decode.kernels.fused_step import check_precision, default_precision

    assert default_precision(torch.device("cuda"), torch.float32) == "bf16"
    assert default_precision(torch.device("cuda"), torch.float16) == "fp16"
    assert default_precision(torch.device("cpu"), torch.float32) == "fp32"
    assert check_precision("tf32", torch.device("cuda"), torch.float32) == "tf32"
    with pytest.raises(ValueError, match="precision must be one of"):
        check_precision("fp8", torch.device("cuda"), torch.float32)
    with pytest.raises(TypeError, match="precision must be a str"):
        check_precision(torch.bfloat16, torch.device("cuda"), torch.float32)


def test_precision_is_refused_by_backends_without_one():
    cat = random_catalog(8, 40, [4, 5])
    folded = make_heads(8, [4, 5], 8)
    ctx = make_ctx(8, folded, 1)
    for backend in ("reference", "cpu"):
        with pytest.raises(ValueError, match="precision='bf16' applies to backend 'triton' only"):
            decode_folded(folded, ctx, cat, 4, 2, backend=backend, precision="bf16")
        decode_folded(folded, ctx, cat, 4, 2, backend=backend, precision="fp32")


def test_bf16_copies_of_the_heads_are_made_once_and_follow_changes():
    table = torch.randn(5, 8)
    first = backends._kernel_copy(table, "bf16")
    assert first.dtype == torch.bfloat16 and torch.equal(first, table.to(torch.bfloat16))
    assert backends._kernel_copy(table, "bf16") is first
    table.mul_(2)  # in place: the copy must follow
    again = backends._kernel_copy(table, "bf16")
    assert torch.equal(again, table.to(torch.bfloat16))
    assert backends._kernel_copy(table, "fp32") is table
    assert backends._kernel_copy(table, "tf32") is table  # not a GEMM operand: kept exact
    rounded = backends._kernel_copy(table, "tf32", operand=True)
    assert rounded.dtype == torch.float32 and (rounded.view(torch.int32) & 0x1FFF == 0).all()
    assert (rounded - table).abs().max() <= table.abs().max() * 2.0**-11
