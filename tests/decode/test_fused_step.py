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
    round_to_tf32,
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
    assert_step_matches(fused_step(*to_device(args, device), precision="fp32"), args)


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
        (64, [17, 512], 1, 64, 64, "dense"),  # K > one tile: a log-sum-exp sweep, then a select sweep
        (150, [100, 256], 1, 64, 150, "dense"),  # three beam blocks (64 rows each) merged by the select
        (200, [16, 300], 1, 32, 20, "sparse"),  # four blocks x two K tiles
    ],
)
def test_edge_shapes_fp32(width, sizes, level, hidden, beam, mask, device):
    batch = 1 if hidden * width * sizes[level] > 2**22 else 2
    args = make_problem(7, batch, width, sizes, level, hidden, beam, mask)
    assert_step_matches(fused_step(*to_device(args, device), precision="fp32"), args)


PRECISIONS = ["fp32", "tf32", "bf16", "fp16"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_exact_ties_break_by_beam_then_token(device, precision):
    # Zero output layer: every valid child of every beam scores -log(n_valid) exactly (in any precision).
    args = make_problem(3, 2, 5, [16, 17], 1, 64, 12, "dense")
    args[6] = torch.zeros_like(args[6])
    args[7] = torch.zeros_like(args[7])
    valid = torch.zeros(2, 5, 17, dtype=torch.bool)
    valid[:, :, [0, 3, 4, 9, 16]] = True
    args[9] = valid
    args[8] = torch.zeros(2, 5)
    out = fused_step(*to_device(args, device), check_inputs=False, precision=precision)
    scores, parents, tokens = (t.cpu() for t in out)
    ref = fused_step_reference(*args)
    assert torch.equal(parents, ref[1]) and torch.equal(tokens, ref[2])
    assert parents[0].tolist() == [0] * 5 + [1] * 5 + [2] * 2
    assert tokens[0].tolist() == [0, 3, 4, 9, 16] * 2 + [0, 3]
    torch.testing.assert_close(scores, ref[0])


def test_exact_ties_across_beam_blocks(device):
    """All candidates tie: the top MAX_BEAM are the first in (beam, token) order, across 64-row blocks."""
    width, k = 150, 17
    args = make_problem(4, 2, width, [16, k], 1, 64, MAX_BEAM, "dense")
    args[6] = torch.zeros_like(args[6])
    args[7] = torch.zeros_like(args[7])
    valid = torch.zeros(2, width, k, dtype=torch.bool)
    valid[:, :, [2, 5, 11]] = True  # 3 per beam: block 0 (64 beams) holds 192 < MAX_BEAM of them
    args[9] = valid
    args[8] = torch.zeros(2, width)
    scores, parents, tokens = (t.cpu() for t in fused_step(*to_device(args, device), precision="fp32"))
    ref = fused_step_reference(*args)
    assert torch.equal(parents, ref[1]) and torch.equal(tokens, ref[2])
    assert parents[0, -1].item() == MAX_BEAM // 3 and tokens[0, -1].item() == [2, 5, 11][MAX_BEAM % 3 - 1]
    torch.testing.assert_close(scores, ref[0])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_beam_blocks_that_cannot_enter_are_skipped(device, precision):
    """Beams 64.. score far below beam 0..63's best candidates: their block is never computed.

    Shown by a NaN prefix-table row that only those beams use: the step still equals the
    reference on the unpoisoned problem. When the same beams can enter, the NaN comes back as a
    kept score (which the decode reports as a non-finite logit).
    """
    width, beam = 192, 16
    args = make_problem(8, 2, width, [16, 17], 1, 64, beam, "dense")
    args[2] = args[2].clone()
    args[2][:, :64, 0] %= 15
    args[2][:, 64:, 0] = 15  # code 15 only below beam 64
    args[8] = torch.cat([torch.zeros(2, 64), torch.full((2, width - 64), -100.0)], 1)
    args[9][:] = True
    clean = [list(a) if isinstance(a, list) else a for a in args]
    poisoned = [list(a) if isinstance(a, list) else a for a in args]
    poisoned[1][0] = args[1][0].clone()
    poisoned[1][0][15] = float("nan")
    out = fused_step(*to_device(poisoned, device), precision=precision)
    assert_step_matches(out, clean, atol=5e-2 if precision == "bf16" else 1e-4)
    poisoned[8] = torch.zeros(2, width)  # now beams 64.. can enter
    scores = fused_step(*to_device(poisoned, device), precision=precision)[0].cpu()
    assert torch.isnan(scores).any()


def test_uint8_mask_and_int32_prefixes(device):
    args = make_problem(11, 2, 16, [100, 17, 100], 2, 96, 16, "sparse")
    dev = to_device(args, device)
    dev[2] = dev[2].to(torch.int32)
    dev[9] = dev[9].to(torch.uint8)
    assert_step_matches(fused_step(*dev, precision="fp32"), args)


# --------------------------------------------------------------------------- low precision


def test_round_to_tf32_rounds_to_nearest():
    x = torch.randn(1000)
    r = round_to_tf32(x)
    assert (r.view(torch.int32) & 0x1FFF == 0).all()
    # Nearest: no TF32 value (step 2**-10 relative) is closer than half a step.
    assert ((r - x).abs() <= x.abs() * 2.0**-11 * (1 + 2.0**-10)).all()
    torch.testing.assert_close(r, round_mantissa(x, 10, False), atol=0, rtol=0)


def round_mantissa(t, keep_bits, even):
    """fp32 `t` rounded to nearest on `keep_bits` mantissa bits (even: ties to even as bf16, else ties away as tf32)."""
    drop = 23 - keep_bits
    bits = t.float().contiguous().view(torch.int32)
    bits = bits + ((1 << (drop - 1)) - 1) + (((bits >> drop) & 1) if even else 1)
    return (bits & ~((1 << drop) - 1)).view(torch.float32)


def torch_low_precision_logits(args, precision):
    """Folded-head logits as plain PyTorch computes them in `precision` (the flash-attention rule's baseline).

    bf16/fp16: every input in that dtype (PyTorch's own bf16/fp16 arithmetic). tf32: fp32 with the
    GEMM's operands rounded to tf32 (what cuBLAS's TF32 GEMM multiplies; the CPU has no TF32).
    """
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        low = [[t.to(dtype) for t in a] if isinstance(a, list) else a.to(dtype) if isinstance(a, torch.Tensor)
               and a.is_floating_point() else a for a in args[:8]]
        return folded_logits_reference(*low).float()
    ctx, tables, prefixes, ln_w, ln_b, eps, out_w, out_b = upcast(args)[:8]
    h = ctx.unsqueeze(1)
    for j, table in enumerate(tables):
        h = h + table[prefixes[:, :, j].long()]
    h = torch.nn.functional.gelu(torch.nn.functional.layer_norm(h, (h.shape[-1],), ln_w, ln_b, eps))
    return round_mantissa(h, 10, False) @ round_mantissa(out_w, 10, False).T + out_b


def _low_precision_cases():
    """The fp32 sweep's shapes (every third, so each mask kind appears), in the heads' fp32 and bf16 storage."""
    cases = [(precision, torch.float32) + c[1:] for c in _sampled_sweep(24)[::3] for precision in ("bf16", "tf32")]
    cases += [("bf16", torch.bfloat16, 3, 2, (256, 100, 256), 256, 50, 50, "dense"),
              ("bf16", torch.bfloat16, 2, 0, (100, 17), 1024, 16, 1, "sparse"),
              ("bf16", torch.bfloat16, 5, 4, (17, 17, 17, 17, 17), 64, 64, 16, "few"),
              ("fp16", torch.float16, 2, 1, (256, 100), 96, 16, 16, "dense"),
              ("fp16", torch.float32, 3, 2, (100, 17, 512), 64, 64, 64, "dense")]
    return cases


@pytest.mark.parametrize("precision, dtype, num_levels, level, sizes, hidden, beam, width, mask", _low_precision_cases())
def test_low_precision_flash_attention_rule(precision, dtype, num_levels, level, sizes, hidden, beam, width, mask,
                                            device):
    """Kernel error vs fp32 is at most twice PyTorch's own error in that precision (logits and picked scores).

    The beam semantics do not change: dead slots are the fp32 reference's exactly, and the picks
    are the reference's wherever its scores are isolated by more than that tolerance.
    """
    args = make_problem(21, 2, width, list(sizes), level, hidden, beam, mask, dtype=dtype)
    dev = to_device(args, device)
    if precision == "tf32":  # as the triton backend passes it (unrounded, the tensor cores truncate)
        dev[6] = round_to_tf32(dev[6])
    out = _launch(*dev, return_logits=True, precision=precision)
    scores, parents, tokens, logits = (t.cpu() for t in out)
    exact = upcast(args)
    ref_logits = folded_logits_reference(*exact[:8])
    torch_logits = torch_low_precision_logits(args, precision)
    torch_err = (torch_logits - ref_logits).abs().max().item()
    kernel_err = (logits - ref_logits).abs().max().item()
    assert kernel_err <= 2 * torch_err + 1e-6, (kernel_err, torch_err)

    valid, beam_scores = args[9], args[8]
    cand32 = (beam_scores.unsqueeze(-1) + masked_log_softmax(ref_logits, valid)).reshape(2, -1)
    cand_lp = (beam_scores.unsqueeze(-1) + masked_log_softmax(torch_logits, valid)).reshape(2, -1)
    ok = torch.isfinite(cand32)
    tol = 2 * (cand_lp[ok] - cand32[ok]).abs().max().item() + 1e-5
    assert_step_matches((scores, parents, tokens), args, atol=tol)


# --------------------------------------------------------------------------- whole search


@pytest.mark.parametrize("n_raw", [40, 240])  # 240: ~200 items, so beams span four 64-row blocks
def test_kernel_driven_search_equals_exhaustive(device, n_raw):
    """Beam >= catalog size: a kernel-driven constrained search is exhaustive scoring (docs/architecture.md, "Decoding semantics")."""
    sizes, hidden, batch = [17, 5, 9], 64, 2
    g = torch.Generator().manual_seed(5)
    raw = torch.stack([torch.randint(0, k, (n_raw,), generator=g) for k in sizes], 1)
    codes = torch.unique(raw, dim=0)
    catalog = SIDCatalog.from_codes(torch.arange(codes.shape[0]), codes, sizes)
    beam = catalog.num_items
    assert beam <= MAX_BEAM
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
        out = [t.cpu() for t in fused_step(*to_device(args, device), precision="fp32")]
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
    assert_step_matches(fused_step(*to_device(args, device), precision="fp32"), args)
    args[10] = MAX_BEAM + 1
    for check in (True, False):
        with pytest.raises(ValueError, match=rf"beam_size must be <= {MAX_BEAM}.*backend='cpu'"):
            fused_step(*to_device(args, device), check_inputs=check)
