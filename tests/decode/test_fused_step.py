"""Fused Triton beam step vs the plain-PyTorch reference (docs/architecture.md, "Decoding semantics" and "Fast paths").

Every test runs on the `device` fixture (tests/devices.py): CPU tensors through
TRITON_INTERPRET=1 (set by conftest.py before triton is imported, when there is no CUDA), or the
compiled kernel on CUDA tensors (marker `cuda`).
"""

import random

import pytest
import torch

pytest.importorskip("triton")

from sidmlp_kernels import SIDCatalog  # noqa: E402
from sidmlp_kernels.decode.reference import exhaustive_search, finalize_beams, masked_log_softmax  # noqa: E402
from sidmlp_kernels.decode.kernels.fused_step import (  # noqa: E402
    MAX_BEAM,
    _launch,
    folded_logits_reference,
    fused_step,
    fused_step_reference,
)
from tests.devices import TRITON_DEVICES, to_device  # noqa: E402
NEG_INF = float("-inf")


@pytest.fixture(params=TRITON_DEVICES)
def device(request):
    """Where the kernel runs: the interpreter on CPU tensors, or compiled on CUDA tensors."""
    return request.param


# --------------------------------------------------------------------------- problem builders


def make_heads(seed, sizes, level, hidden, dtype=torch.float32):
    """Random folded head for digit `level`: (tables, ln_w, ln_b, out_w, out_b), cast to dtype."""
    g = torch.Generator().manual_seed(seed)
    tables = [torch.randn(sizes[j], hidden, generator=g) * 0.5 for j in range(level)]
    ln_w = torch.rand(hidden, generator=g) + 0.5
    ln_b = torch.randn(hidden, generator=g) * 0.1
    # Scale so logits spread over a few nats: realistic log-probabilities, rare near-ties.
    out_w = torch.randn(sizes[level], hidden, generator=g) * (3.0 / hidden**0.5)
    out_b = torch.randn(sizes[level], generator=g) * 0.1
    return [t.to(dtype) for t in tables], ln_w.to(dtype), ln_b.to(dtype), out_w.to(dtype), out_b.to(dtype)


def make_mask(g, batch, width, k, kind, beam_size):
    """Validity mask (B, W, K) and the live-beam mask (B, W) for a mask kind."""
    live = torch.ones(batch, width, dtype=torch.bool)
    if kind == "dense":
        valid = torch.rand(batch, width, k, generator=g) < 0.9
    elif kind == "sparse":
        valid = torch.rand(batch, width, k, generator=g) < 0.05
    else:
        valid = torch.zeros(batch, width, k, dtype=torch.bool)
    if kind in ("sparse", "single", "few", "one_item"):
        # Every live prefix of a catalog has at least one child.
        child = torch.randint(0, k, (batch, width), generator=g)
        valid.scatter_(2, child.unsqueeze(-1), True)
    if kind == "few":  # fewer valid candidates than beams: the rest must come back dead
        live[:, max(1, beam_size // 3):] = False
    if kind == "one_item":
        live[:, 1:] = False
    if kind == "dense" and width > 2:
        live[:, -1] = False  # one dead beam (as beam search hands them on)
    valid &= live.unsqueeze(-1)
    return valid, live


def make_problem(seed, batch, width, sizes, level, hidden, beam_size, mask="dense", dtype=torch.float32):
    """Kernel arguments on the CPU (the reference's inputs; to_device moves them for the kernel)."""
    g = torch.Generator().manual_seed(seed + 1)
    k = sizes[level]
    tables, ln_w, ln_b, out_w, out_b = make_heads(seed, sizes, level, hidden, dtype)
    ctx = (torch.randn(batch, hidden, generator=g)).to(dtype)
    if level == 0:
        width = 1
    prefixes = torch.zeros(batch, width, level, dtype=torch.long)
    for j in range(level):
        prefixes[:, :, j] = torch.randint(0, sizes[j], (batch, width), generator=g)
    valid, live = make_mask(g, batch, width, k, mask, beam_size)
    # Beam search hands on beams sorted best-first, dead ones (-inf) last.
    beam_scores = torch.sort(torch.randn(batch, width, generator=g) * 2 - 3, dim=1, descending=True).values
    if level == 0:
        beam_scores.zero_()
    beam_scores = torch.where(live, beam_scores, torch.full_like(beam_scores, NEG_INF))
    args = [ctx, tables, prefixes, ln_w, ln_b, 1e-5, out_w, out_b, beam_scores, valid, beam_size]
    return args


def upcast(args):
    """The same problem in fp32 (exact for bf16/fp16 inputs): the 'true' values."""
    def f(t):
        return t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
    return [[f(t) for t in a] if isinstance(a, list) else f(a) for a in args]


def candidates(args):
    """Reference candidate scores (B, W*K) in fp32."""
    args = upcast(args)
    logits = folded_logits_reference(*args[:8]).float()
    beam_scores, valid = args[8], args[9].bool()
    lp = masked_log_softmax(logits, valid)
    return (beam_scores.unsqueeze(-1) + lp).reshape(beam_scores.shape[0], -1)


def assert_step_matches(out, args, atol=1e-4):
    """Kernel step == reference step: close scores; identical picks wherever the order is unambiguous."""
    scores, parents, tokens = (t.cpu() for t in out)
    ref_scores, ref_parents, ref_tokens = fused_step_reference(*upcast(args))
    k = args[6].shape[0]
    assert scores.dtype == torch.float32 and parents.dtype == torch.int64 and tokens.dtype == torch.int64
    torch.testing.assert_close(scores, ref_scores, atol=atol, rtol=1e-5)
    # Dead slots: all -inf candidates tie exactly in both, so order is (beam, token) ascending.
    dead = ~torch.isfinite(ref_scores)
    assert torch.equal(~torch.isfinite(scores), dead)
    assert torch.equal(parents[dead], ref_parents[dead]) and torch.equal(tokens[dead], ref_tokens[dead])
    live = ~dead
    # Every live pick is a real, distinct candidate carrying the score it claims.
    assert ((tokens >= 0) & (tokens < k) & (parents >= 0) & (parents < args[8].shape[1])).all()
    cand = candidates(args)
    flat = parents * k + tokens
    torch.testing.assert_close(cand.gather(1, flat)[live], scores[live], atol=atol, rtol=1e-5)
    for row, row_live in zip(flat, live):
        assert row[row_live].unique().numel() == int(row_live.sum())
    # Exact (parent, token) wherever the reference's score is isolated by more than atol.
    vals = torch.sort(cand, dim=1, descending=True, stable=True).values
    m = scores.shape[1]
    if vals.shape[1] < m + 1:
        vals = torch.cat([vals, vals.new_full((vals.shape[0], m + 1 - vals.shape[1]), NEG_INF)], 1)
    prev_gap = torch.cat([vals.new_full((vals.shape[0], 1), float("inf")), vals[:, : m - 1] - vals[:, 1:m]], 1)
    next_gap = vals[:, :m] - vals[:, 1 : m + 1]
    isolated = live & (prev_gap > atol) & (next_gap > atol)
    assert torch.equal(parents[isolated], ref_parents[isolated])
    assert torch.equal(tokens[isolated], ref_tokens[isolated])
    return isolated


# --------------------------------------------------------------------------- fp32 sweep

CODEBOOKS = [16, 17, 100, 256, 512]


def _sampled_sweep(n, seed=20240611):
    """A seeded random subset of (L, level, sizes, hidden, beam, width, mask), cost-capped for the interpreter."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        num_levels = rng.choice([2, 3, 4, 5])
        # Mostly deeper digits (W > 1, prefix tables in play); digit 1 is covered too.
        level = 0 if rng.random() < 0.2 else rng.randrange(1, num_levels)
        sizes = [rng.choice(CODEBOOKS) for _ in range(num_levels)]
        hidden = rng.choice([64, 96, 256, 1024])
        beam = rng.choice([1, 2, 7, 16, 50, 64])
        width = 1 if level == 0 else rng.choice([1, 3, 16, 50, 64])
        mask = ["dense", "sparse", "single", "few", "one_item"][len(cases) % 5]  # each kind, in turn
        # Interpreter cost ~ number of (16 beams x 64 tokens x 64 hidden) dot tiles.
        cost = -(-width // 16) * -(-sizes[level] // 64) * -(-hidden // 64)
        if cost > 96:
            continue
        cases.append((len(cases), num_levels, level, tuple(sizes), hidden, beam, width, mask))
    return cases


@pytest.mark.parametrize("case, num_levels, level, sizes, hidden, beam, width, mask", _sampled_sweep(24))
def test_sweep_fp32(case, num_levels, level, sizes, hidden, beam, width, mask, device):
    args = make_problem(100 + case, 2, width, list(sizes), level, hidden, beam, mask)
    assert_step_matches(fused_step(*to_device(args, device)), args)


@pytest.mark.parametrize(
    "width, sizes, level, hidden, beam, mask",
    [
        (1, [256, 256, 256], 0, 256, 50, "dense"),  # digit 1: no prefix tables, one beam
        (64, [17, 100, 16, 256, 100], 4, 96, 64, "sparse"),  # deepest head of L = 5, all tables
        (64, [256, 256, 512], 2, 1024, 64, "dense"),  # the largest shape in the spec
        (3, [5, 17], 1, 64, 64, "dense"),  # beam > W*K: padding slots come back dead
        (16, [16, 17, 100], 2, 64, 50, "few"),  # beam > valid candidates
        (16, [16, 17, 100], 2, 64, 16, "one_item"),  # a one-item catalog below this prefix
        (50, [100, 17], 1, 256, 50, "single"),  # a single valid child per beam
    ],
)
def test_edge_shapes_fp32(width, sizes, level, hidden, beam, mask, device):
    batch = 1 if hidden * width * sizes[level] > 2**22 else 2
    args = make_problem(7, batch, width, sizes, level, hidden, beam, mask)
    assert_step_matches(fused_step(*to_device(args, device)), args)


def test_exact_ties_break_by_beam_then_token(device):
    # Zero output layer: every valid child of every beam scores -log(n_valid) exactly.
    args = make_problem(3, 2, 5, [16, 17], 1, 64, 12, "dense")
    args[6] = torch.zeros_like(args[6])
    args[7] = torch.zeros_like(args[7])
    valid = torch.zeros(2, 5, 17, dtype=torch.bool)
    valid[:, :, [0, 3, 4, 9, 16]] = True
    args[9] = valid
    args[8] = torch.zeros(2, 5)
    scores, parents, tokens = (t.cpu() for t in fused_step(*to_device(args, device), check_inputs=False))
    ref = fused_step_reference(*args)
    assert torch.equal(parents, ref[1]) and torch.equal(tokens, ref[2])
    assert parents[0].tolist() == [0] * 5 + [1] * 5 + [2] * 2
    assert tokens[0].tolist() == [0, 3, 4, 9, 16] * 2 + [0, 3]
    torch.testing.assert_close(scores, ref[0])


def test_uint8_mask_and_int32_prefixes(device):
    args = make_problem(11, 2, 16, [100, 17, 100], 2, 96, 16, "sparse")
    dev = to_device(args, device)
    dev[2] = dev[2].to(torch.int32)
    dev[9] = dev[9].to(torch.uint8)
    assert_step_matches(fused_step(*dev), args)


# --------------------------------------------------------------------------- low precision


@pytest.mark.parametrize(
    "dtype, width, sizes, level, hidden, beam, mask",
    [
        (torch.bfloat16, 50, [256, 100, 256], 2, 256, 50, "dense"),
        (torch.bfloat16, 1, [100, 17], 0, 1024, 16, "sparse"),
        (torch.bfloat16, 16, [17, 17, 17, 17, 17], 4, 64, 64, "few"),
        (torch.float16, 16, [256, 100], 1, 96, 16, "dense"),
    ],
)
def test_low_precision_flash_attention_rule(dtype, width, sizes, level, hidden, beam, mask, device):
    """Kernel error vs fp32 is at most twice PyTorch's own low-precision error (logits and scores)."""
    args = make_problem(21, 2, width, sizes, level, hidden, beam, mask, dtype=dtype)
    scores, parents, tokens, logits = (t.cpu() for t in _launch(*to_device(args, device), return_logits=True))
    exact = upcast(args)
    ref_logits = folded_logits_reference(*exact[:8])
    torch_logits = folded_logits_reference(*args[:8]).float()  # PyTorch computing in dtype
    torch_err = (torch_logits - ref_logits).abs().max().item()
    kernel_err = (logits - ref_logits).abs().max().item()
    assert kernel_err <= 2 * torch_err + 1e-6, (kernel_err, torch_err)

    valid, beam_scores = args[9], args[8]
    cand32 = (beam_scores.unsqueeze(-1) + masked_log_softmax(ref_logits, valid)).reshape(2, -1)
    cand_lp = (beam_scores.unsqueeze(-1) + masked_log_softmax(torch_logits, valid)).reshape(2, -1)
    ok = torch.isfinite(cand32)
    tol = 2 * (cand_lp[ok] - cand32[ok]).abs().max().item() + 1e-5
    ref_scores, _, _ = fused_step_reference(*exact)
    dead = ~torch.isfinite(ref_scores)
    assert torch.equal(~torch.isfinite(scores), dead)
    assert (scores[~dead] - ref_scores[~dead]).abs().max().item() <= tol
    picked = cand32.gather(1, parents * sizes[level] + tokens)
    assert (picked[~dead] - scores[~dead]).abs().max().item() <= tol


# --------------------------------------------------------------------------- whole search


def test_kernel_driven_search_equals_exhaustive(device):
    """Beam >= catalog size: a kernel-driven constrained search is exhaustive scoring (docs/architecture.md, "Decoding semantics")."""
    sizes, hidden, batch = [17, 5, 9], 64, 2
    g = torch.Generator().manual_seed(5)
    raw = torch.stack([torch.randint(0, k, (40,), generator=g) for k in sizes], 1)
    codes = torch.unique(raw, dim=0)
    catalog = SIDCatalog.from_codes(torch.arange(codes.shape[0]), codes, sizes)
    beam = catalog.num_items
    ctx = torch.randn(batch, hidden, generator=g)
    heads = [make_heads(50 + level, sizes, level, hidden) for level in range(len(sizes))]

    def prefix_logits(level, prefixes):
        tables, ln_w, ln_b, out_w, out_b = heads[level]
        return folded_logits_reference(ctx, tables, prefixes, ln_w, ln_b, 1e-5, out_w, out_b)

    prefixes = torch.zeros(batch, 1, 0, dtype=torch.long)
    scores = torch.zeros(batch, 1)
    for level in range(len(sizes)):
        width = prefixes.shape[1]
        valid = catalog.valid_children(prefixes.reshape(batch * width, level)).reshape(batch, width, sizes[level])
        valid &= torch.isfinite(scores).unsqueeze(-1)
        tables, ln_w, ln_b, out_w, out_b = heads[level]
        args = [ctx, tables, prefixes, ln_w, ln_b, 1e-5, out_w, out_b, scores, valid, beam]
        out = [t.cpu() for t in fused_step(*to_device(args, device))]
        assert_step_matches(out, args)
        scores, parents, tokens = out
        parent_prefix = torch.gather(prefixes, 1, parents.unsqueeze(-1).expand(-1, -1, level))
        prefixes = torch.cat([parent_prefix, tokens.unsqueeze(-1)], dim=2)
    got = finalize_beams(catalog, prefixes, scores, 10)
    want = exhaustive_search(prefix_logits, catalog, batch, top_n=10)
    assert torch.equal(got.items, want.items)
    torch.testing.assert_close(got.scores, want.scores, atol=1e-4, rtol=1e-5)


# --------------------------------------------------------------------------- input validation


def _base_args(device):
    return to_device(make_problem(1, 2, 3, [16, 17], 1, 64, 4, "dense"), device)


def _set(i, value):
    def mutate(a):
        a[i] = value(a[i]) if callable(value) else value
        return a
    return mutate


@pytest.mark.parametrize(
    "mutate, exc, text",
    [
        (_set(10, 0), ValueError, "beam_size"),
        (_set(10, 2.0), TypeError, "beam_size"),
        (_set(10, True), TypeError, "beam_size"),
        (_set(0, lambda t: t[:, :32].contiguous()), ValueError, "ctx_proj"),
        (_set(0, lambda t: t.double()), TypeError, "ctx_proj"),
        (_set(1, lambda ts: []), ValueError, "prefix_tables"),
        (_set(1, lambda ts: [ts[0][:, :32].contiguous()]), ValueError, "prefix_tables[0]"),
        (_set(1, lambda ts: [ts[0].to(torch.bfloat16)]), TypeError, "prefix_tables[0]"),
        (_set(2, lambda p: p.clone().fill_(16)), ValueError, "prefixes"),
        (_set(2, lambda p: p.clone().fill_(-1)), ValueError, "prefixes"),
        (_set(2, lambda p: p.float()), TypeError, "prefixes"),
        (_set(2, lambda p: p.transpose(0, 1)), ValueError, "prefixes"),
        (_set(3, lambda t: t[:10]), ValueError, "ln_w"),
        (_set(5, -1.0), ValueError, "ln_eps"),
        (_set(6, lambda t: t.t()), ValueError, "out_w"),
        (_set(6, lambda t: t.to(torch.int32)), TypeError, "out_w"),
        (_set(7, lambda t: t[:5]), ValueError, "out_b"),
        (_set(8, lambda t: t.double()), TypeError, "beam_scores"),
        (_set(8, lambda t: t[:, :2].contiguous()), ValueError, "beam_scores"),
        (_set(9, lambda t: t.float()), TypeError, "valid"),
        (_set(9, lambda t: t[..., :5].contiguous()), ValueError, "valid"),
    ],
)
def test_bad_input_names_argument(mutate, exc, text, device):
    with pytest.raises(exc, match=text.replace("[", r"\[").replace("]", r"\]")):
        fused_step(*mutate(_base_args(device)))


def test_beam_cap_is_a_clear_error_and_the_cap_itself_runs(device):
    """beam_size > MAX_BEAM names the argument (with or without input checks); MAX_BEAM matches the reference."""
    args = make_problem(5, 2, 16, [16, 17], 1, 64, MAX_BEAM, "dense")
    assert_step_matches(fused_step(*to_device(args, device)), args)
    args[10] = MAX_BEAM + 1
    for check in (True, False):
        with pytest.raises(ValueError, match=rf"beam_size must be <= {MAX_BEAM}.*backend='cpu'"):
            fused_step(*to_device(args, device), check_inputs=check)
