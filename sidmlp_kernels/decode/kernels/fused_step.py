"""Fused SID-MLP beam step for one digit (docs/architecture.md, "Fast paths"): one Triton launch per digit.

The kernel takes the folded head's raw tensors (see sidmlp_kernels/decode/folded.py):

    h      = ctx_proj[b] + sum_j prefix_tables[j][d_j]        (gather-and-add)
    h      = GELU(LayerNorm(h) * ln_w + ln_b)                   (exact erf GELU)
    logits = h @ out_w.T + out_b                                (hidden -> K, tl.dot)

then masks invalid children, takes the log-softmax over the valid ones, adds the
beam score and keeps the best `beam_size` (beam, token) candidates per user with
the tie-break of decoding.beam_step_reference: equal scores by (beam, token)
ascending, missing candidates dead (-inf), and beam > W * K padded (-inf, parent 0, token 0).

Design: grid = (B,), one program per user owns all W beams, so top-k needs no second launch.
Per block of BLOCK_W (<= 64) beams:

  1. row statistics: one sweep over hidden chunks (gather, Chan's merge of chunk mean/variance);
  2. logits: a second sweep rebuilds each hidden chunk on chip (gather, LayerNorm, GELU) and
     multiplies it with that chunk of out_w (tensor cores in bf16/fp16/tf32; fp32 accumulation),
     so hidden rows never go through global memory and out_w is read once per block;
  3. log-softmax of the (BLOCK_W, K) tile in registers, candidate scores, and order-preserving
     int32 score keys (NaN above everything, -0.0 = +0.0);
  4. radix select of the best beam_size over (kept set + tile): a bitwise binary search for the
     beam_size-th key, a second over the flat index (beam * K + token) only on ties; the winners
     are compacted through a per-program scratch row (bar.sync-ordered) and become the kept set.

A block whose best beam cannot beat the weakest kept candidate is skipped. Codebooks wider than
one tile (K > MAX_TILE / BLOCK_W) take K tiles: a log-sum-exp sweep, then a sweep that recomputes
each tile's logits and selects. At the end the kept (unique) candidates are ranked pairwise and
stored. Every step is data-parallel (no serial insertion loop), and the same code runs in the
CPU interpreter, which emulates the low-precision GEMMs by rounding (its own casts truncate).

`fused_step_reference` is the plain-PyTorch definition this kernel is tested against.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..reference import beam_step_reference
from ...errors import InvalidInput, InvalidInputType

try:  # Triton is optional at import time: the reference below works without it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on machines without triton
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = [
    "HAS_TRITON",
    "MAX_PREFIX",
    "MAX_HIDDEN",
    "MAX_BEAM",
    "PRECISIONS",
    "default_precision",
    "check_precision",
    "round_to_tf32",
    "folded_logits_reference",
    "fused_step_reference",
    "fused_step",
]

# Prefix tables are passed as separate pointer arguments (no per-step concat copy).
MAX_PREFIX = 8
# Hidden rows are processed in chunks (any size works); the cap only bounds the sweeps per block.
MAX_HIDDEN = 16384
# One program keeps a user's best beam_size candidates in registers and ranks them pairwise at the
# end (BEAM_PAD^2 compares, in registers): at 256 that is 256 per thread and the sm_90a build
# compiles in ~6 s (bench/results/gpu/compile.json); wider beams go to backend='cpu'.
MAX_BEAM = 256
_MODEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------- reference


def folded_logits_reference(
    ctx_proj: torch.Tensor,
    prefix_tables: Sequence[torch.Tensor],
    prefixes: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    ln_eps: float,
    out_w: torch.Tensor,
    out_b: torch.Tensor,
) -> torch.Tensor:
    """Folded head logits (B, W, K) in the inputs' own dtype, plain PyTorch."""
    h = ctx_proj.unsqueeze(1)
    for j, table in enumerate(prefix_tables):
        h = h + table[prefixes[:, :, j].long()]
    h = F.layer_norm(h, (h.shape[-1],), ln_w, ln_b, ln_eps)
    h = F.gelu(h)  # exact erf form
    return h @ out_w.T + out_b


def fused_step_reference(
    ctx_proj: torch.Tensor,
    prefix_tables: Sequence[torch.Tensor],
    prefixes: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    ln_eps: float,
    out_w: torch.Tensor,
    out_b: torch.Tensor,
    beam_scores: torch.Tensor,
    valid: torch.Tensor,
    beam_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference fused step: folded-head logits, then decoding.beam_step_reference."""
    logits = folded_logits_reference(ctx_proj, prefix_tables, prefixes, ln_w, ln_b, ln_eps, out_w, out_b)
    return beam_step_reference(logits, beam_scores, valid.bool(), beam_size)


# --------------------------------------------------------------------------- kernel

# Dot operand precision -> the kernel's DOT constexpr.
PRECISIONS = {"fp32": 0, "tf32": 1, "bf16": 2, "fp16": 3}

if HAS_TRITON:
    # Order-preserving int32 key of -inf (see _score_key): every real candidate's key is >= it and
    # tile padding (INT32_MIN) is below it.
    _KEY_NEG_INF = tl.constexpr(-2139095041)

    @triton.jit
    def _gather_add(x, table, prefix, row_id, rows_ok, cols, col_ok, H, J: tl.constexpr, NUM_PREFIX: tl.constexpr):
        # Row d_j of table j, one per beam row; codes were range-checked by the launcher.
        code = tl.load(prefix + row_id * NUM_PREFIX + J, mask=rows_ok, other=0).to(tl.int64)
        ptrs = table + code[:, None] * H + cols[None, :]
        return x + tl.load(ptrs, mask=rows_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)

    @triton.jit
    def _pre_activation(CTX, T0, T1, T2, T3, T4, T5, T6, T7, PREFIX, b, row_id, rows_ok, hc, h_ok, H,
                        NUM_PREFIX: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_HC: tl.constexpr):
        # ctx + T_0[d_0] + T_1[d_1] + ... (fp32, the reference's order) for hidden columns hc.
        ctx = tl.load(CTX + b * H + hc, mask=h_ok, other=0.0).to(tl.float32)
        x = tl.zeros((BLOCK_W, BLOCK_HC), dtype=tl.float32) + ctx[None, :]
        if NUM_PREFIX > 0:
            x = _gather_add(x, T0, PREFIX, row_id, rows_ok, hc, h_ok, H, 0, NUM_PREFIX)
        if NUM_PREFIX > 1:
            x = _gather_add(x, T1, PREFIX, row_id, rows_ok, hc, h_ok, H, 1, NUM_PREFIX)
        if NUM_PREFIX > 2:
            x = _gather_add(x, T2, PREFIX, row_id, rows_ok, hc, h_ok, H, 2, NUM_PREFIX)
        if NUM_PREFIX > 3:
            x = _gather_add(x, T3, PREFIX, row_id, rows_ok, hc, h_ok, H, 3, NUM_PREFIX)
        if NUM_PREFIX > 4:
            x = _gather_add(x, T4, PREFIX, row_id, rows_ok, hc, h_ok, H, 4, NUM_PREFIX)
        if NUM_PREFIX > 5:
            x = _gather_add(x, T5, PREFIX, row_id, rows_ok, hc, h_ok, H, 5, NUM_PREFIX)
        if NUM_PREFIX > 6:
            x = _gather_add(x, T6, PREFIX, row_id, rows_ok, hc, h_ok, H, 6, NUM_PREFIX)
        if NUM_PREFIX > 7:
            x = _gather_add(x, T7, PREFIX, row_id, rows_ok, hc, h_ok, H, 7, NUM_PREFIX)
        return x

    @triton.jit
    def _row_stats(CTX, T0, T1, T2, T3, T4, T5, T6, T7, PREFIX, b, row_id, rows_ok, H, eps,
                   NUM_PREFIX: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_HC: tl.constexpr):
        # LayerNorm mean and 1/std of each beam row over hidden chunks, merged as Chan et al.'s
        # parallel variance (each chunk centred on its own mean): as accurate as two passes.
        mean = tl.zeros((BLOCK_W,), dtype=tl.float32)
        m2 = tl.zeros((BLOCK_W,), dtype=tl.float32)
        n = tl.zeros((), dtype=tl.float32)
        for h0 in range(0, H, BLOCK_HC):
            hc = h0 + tl.arange(0, BLOCK_HC)
            h_ok = hc < H
            x = _pre_activation(CTX, T0, T1, T2, T3, T4, T5, T6, T7, PREFIX, b, row_id, rows_ok, hc, h_ok, H,
                                NUM_PREFIX, BLOCK_W, BLOCK_HC)
            cnt = tl.minimum(H - h0, BLOCK_HC).to(tl.float32)
            c_mean = tl.sum(x, axis=1) / cnt
            d = tl.where(h_ok[None, :], x - c_mean[:, None], 0.0)
            c_m2 = tl.sum(d * d, axis=1)
            total = n + cnt
            delta = c_mean - mean
            mean = mean + delta * (cnt / total)
            m2 = m2 + c_m2 + delta * delta * (n * cnt / total)
            n = total
        return mean, 1.0 / tl.sqrt(m2 / H + eps)

    @triton.jit
    def _round_mantissa(x, DROP: tl.constexpr, EVEN: tl.constexpr):
        # x rounded to nearest on its top 23 - DROP mantissa bits (EVEN: ties to even, as
        # cvt.rn.bf16; else ties away, as cvt.rna.tf32): the interpreter's own casts truncate.
        bits = x.to(tl.int32, bitcast=True)
        half = (1 << (DROP - 1)) - 1
        if EVEN:
            bits = bits + half + ((bits >> DROP) & 1)
        else:
            bits = bits + half + 1
        return (bits & ~((1 << DROP) - 1)).to(tl.float32, bitcast=True)

    @triton.jit
    def _dot(a, w, acc, DOT: tl.constexpr, EMULATE: tl.constexpr):
        # acc += a @ w with fp32 accumulation; the operands in DOT's precision (PRECISIONS).
        # EMULATE (the interpreter, whose low-precision dot and casts are not the GPU's): round
        # the operands as the GPU would, then an exact fp32 dot (products of bf16/fp16/tf32
        # values are exact in fp32, so only the order of the additions differs).
        w = w.to(tl.float32)
        if DOT == 1:
            # TF32: the tensor cores read the top 19 bits of each fp32 operand (truncation), so
            # the hidden rows are rounded to nearest here; out_w comes rounded (round_to_tf32, as
            # the triton backend passes it) or is truncated, in the emulation too.
            a = _round_mantissa(a, 13, False)
        if DOT == 0:
            out = tl.dot(a, w, acc, input_precision="ieee")
        elif EMULATE:
            if DOT == 1:
                w = (w.to(tl.int32, bitcast=True) & ~((1 << 13) - 1)).to(tl.float32, bitcast=True)
                out = tl.dot(a, w, acc, input_precision="ieee")
            elif DOT == 2:
                out = tl.dot(_round_mantissa(a, 16, True), _round_mantissa(w, 16, True), acc, input_precision="ieee")
            else:
                out = tl.dot(a.to(tl.float16).to(tl.float32), w.to(tl.float16).to(tl.float32), acc,
                             input_precision="ieee")
        elif DOT == 1:
            out = tl.dot(a, w, acc, input_precision="tf32")
        elif DOT == 2:
            out = tl.dot(a.to(tl.bfloat16), w.to(tl.bfloat16), acc)
        else:
            out = tl.dot(a.to(tl.float16), w.to(tl.float16), acc)
        return out

    @triton.jit
    def _logits_tile(CTX, T0, T1, T2, T3, T4, T5, T6, T7, PREFIX, LN_W, LN_B, OUT_W, OUT_B,
                     b, row_id, rows_ok, ks, k_ok, H, mean, rstd,
                     NUM_PREFIX: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr,
                     BLOCK_HC: tl.constexpr, DOT: tl.constexpr, EMULATE: tl.constexpr):
        # (BLOCK_W, BLOCK_K) fp32 logits: per hidden chunk the rows are rebuilt on chip (gather,
        # LayerNorm with the row stats, GELU) and fed straight to the tensor cores with that
        # chunk of out_w, so no hidden row goes through global memory.
        acc = tl.zeros((BLOCK_W, BLOCK_K), dtype=tl.float32)
        for h0 in range(0, H, BLOCK_HC):
            hc = h0 + tl.arange(0, BLOCK_HC)
            h_ok = hc < H
            x = _pre_activation(CTX, T0, T1, T2, T3, T4, T5, T6, T7, PREFIX, b, row_id, rows_ok, hc, h_ok, H,
                                NUM_PREFIX, BLOCK_W, BLOCK_HC)
            ln_w = tl.load(LN_W + hc, mask=h_ok, other=0.0).to(tl.float32)
            ln_b = tl.load(LN_B + hc, mask=h_ok, other=0.0).to(tl.float32)
            # Padded columns: ln_w = ln_b = 0 there, so y = GELU(0) = 0.
            y = (x - mean[:, None]) * rstd[:, None] * ln_w[None, :] + ln_b[None, :]
            y = 0.5 * y * (1.0 + tl.erf(y * 0.7071067811865476))  # exact erf GELU
            w = tl.load(OUT_W + ks[None, :].to(tl.int64) * H + hc[:, None], mask=h_ok[:, None] & k_ok[None, :],
                        other=0.0)
            acc = _dot(y, w, acc, DOT, EMULATE)
        bias = tl.load(OUT_B + ks, mask=k_ok, other=0.0).to(tl.float32)
        return acc + bias[None, :]

    @triton.jit
    def _lse_update(m, s, masked):
        # Online max / sum-exp of each row; rows with no valid child yet keep m = -inf.
        m_new = tl.maximum(m, tl.max(masked, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(masked - m_safe[:, None]), axis=1)
        return m_new, s

    @triton.jit
    def _lse(m, s):
        # s >= 1 wherever a row has a valid child (its max adds exp(0)); the clamp keeps
        # logit - lse <= 0 under an approximate log, which the block skip relies on.
        return tl.where(s > 0.0, m + tl.maximum(tl.log(tl.where(s > 0.0, s, 1.0)), 0.0), 0.0)

    @triton.jit
    def _score_key(score):
        # Order-preserving int32 of a float score; -0.0 ties +0.0 (as in the reference) and any
        # NaN is above everything, so a NaN candidate is always kept and reported downstream.
        score = tl.where(score == 0.0, 0.0, score)
        bits = score.to(tl.int32, bitcast=True)
        key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        return tl.where(score != score, 2147483647, key)

    @triton.jit
    def _key_score(key):
        bits = key ^ ((key >> 31) & 0x7FFFFFFF)
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _count_above(key, flat, best_key, best_flat, s, f, TIES: tl.constexpr):
        # Candidates of the tile and of the kept set ranking at or above the score key s (TIES:
        # at or above (s, flat f), i.e. key > s, or key == s and flat <= f).
        if TIES:
            t = (key > s) | ((key == s) & (flat <= f))
            kept = (best_key > s) | ((best_key == s) & (best_flat <= f))
        else:
            t = key >= s
            kept = best_key >= s
        return tl.sum(tl.sum(t.to(tl.int32), axis=1), axis=0) + tl.sum(kept.to(tl.int32), axis=0)

    @triton.jit
    def _compact(key, flat, s, f, SCRATCH, start, BEAM_PAD: tl.constexpr):
        # Stores the (key, flat) pairs of a 2-D tile ranking at or above (s, f) in scratch slots
        # start, start + 1, ... (in row-major order; prefix sums give each its slot) and
        # returns the next free slot.
        sel = ((key > s) | ((key == s) & (flat <= f))).to(tl.int32)
        row_cnt = tl.sum(sel, axis=1)
        pos = start + (tl.cumsum(row_cnt, axis=0) - row_cnt)[:, None] + tl.cumsum(sel, axis=1) - 1
        tl.store(SCRATCH + pos, key, mask=sel != 0)
        tl.store(SCRATCH + BEAM_PAD + pos, flat, mask=sel != 0)
        return start + tl.sum(row_cnt, axis=0)

    @triton.jit
    def _select(key, rows, k0, K, best_key, best_flat, n_best, target, SCRATCH,
                BLOCK_K: tl.constexpr, BEAM_PAD: tl.constexpr, FLAT_BITS: tl.constexpr):
        # The best `target` of (the kept set + this tile's candidates), as the reference ranks
        # them (score key descending, then flat index ascending), by radix select: a bitwise
        # binary search for the target-th largest score key (at most 32 data-parallel counts,
        # stopping as soon as exactly `target` rank at or above it), then, only when candidates
        # tie at that key, one over the flat index (FLAT_BITS counts). The winners are compacted
        # through this program's scratch row and read back as the new kept set, unordered.
        slots = tl.arange(0, BEAM_PAD)
        ks = k0 + tl.arange(0, BLOCK_K)
        flat = rows[:, None] * K + ks[None, :]
        best_key = tl.where(slots < n_best, best_key, -2147483648)  # empty slots: below every real key
        # Invariant: at least `target` candidates have key >= s (every real one has key >= -inf's).
        s = tl.full((), _KEY_NEG_INF, tl.int64)
        cnt = _count_above(key, flat, best_key, best_flat, s.to(tl.int32), 0, False)
        step = tl.full((), 2147483648, tl.int64)
        while (step > 0) & (cnt != target):
            c = s + step
            n = _count_above(key, flat, best_key, best_flat, tl.minimum(c, 2147483647).to(tl.int32), 0, False)
            take = (c <= 2147483647) & (n >= target)
            s = tl.where(take, c, s)
            cnt = tl.where(take, n, cnt)
            step = step // 2
        s32 = s.to(tl.int32)
        # Ties at s: the largest g with fewer than `target` candidates at or above (s, g) ...
        g = tl.full((), -1, tl.int32)
        fstep = tl.full((), 1 << (FLAT_BITS - 1), tl.int32)
        while (fstep > 0) & (cnt != target):
            c = g + fstep
            g = tl.where(_count_above(key, flat, best_key, best_flat, s32, c, True) < target, c, g)
            fstep = fstep // 2
        # ... makes (s, g + 1) the target-th: exactly `target` rank at or above it.
        f = tl.where(cnt != target, g + 1, 2147483647)

        n = _compact(best_key[None, :], best_flat[None, :], s32, f, SCRATCH, 0, BEAM_PAD)
        n = _compact(key, flat, s32, f, SCRATCH, n, BEAM_PAD)
        # Each thread reads slots other threads wrote (bar.sync orders a block's global memory
        # accesses); the second barrier keeps the next tile's stores behind these loads.
        tl.debug_barrier()
        best_key = tl.load(SCRATCH + slots, mask=slots < target, other=0)
        best_flat = tl.load(SCRATCH + BEAM_PAD + slots, mask=slots < target, other=0)
        tl.debug_barrier()
        return best_key, best_flat

    @triton.jit
    def _tile(CTX, T0, T1, T2, T3, T4, T5, T6, T7, PREFIX, LN_W, LN_B, OUT_W, OUT_B, VALID, LOGITS,
              b, rows_ok, row_id, k0, K, H, mean, rstd,
              NUM_PREFIX: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_HC: tl.constexpr,
              DOT: tl.constexpr, EMULATE: tl.constexpr, STORE_LOGITS: tl.constexpr):
        # Logits of children k0 .. k0 + BLOCK_K of the block's beams, and where they are valid.
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        tile_ok = rows_ok[:, None] & k_ok[None, :]
        logit = _logits_tile(CTX, T0, T1, T2, T3, T4, T5, T6, T7, PREFIX, LN_W, LN_B, OUT_W, OUT_B,
                             b, row_id, rows_ok, ks, k_ok, H, mean, rstd,
                             NUM_PREFIX, BLOCK_W, BLOCK_K, BLOCK_HC, DOT, EMULATE)
        off = row_id[:, None] * K + ks[None, :]
        ok = tile_ok & (tl.load(VALID + off, mask=tile_ok, other=0) != 0)
        if STORE_LOGITS:
            tl.store(LOGITS + off, logit, mask=tile_ok)
        return logit, ok

    @triton.jit
    def _select_tile(logit, ok, beam, lse, w0, rows_ok, k0, K, W, best_key, best_flat, n_best, m_eff, scratch,
                     BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr, BEAM_PAD: tl.constexpr, FLAT_BITS: tl.constexpr):
        # Candidate scores of a tile -> keys -> the kept set; returns it and its size.
        rows = w0 + tl.arange(0, BLOCK_W)
        ks = k0 + tl.arange(0, BLOCK_K)
        tile_ok = rows_ok[:, None] & (ks < K)[None, :]
        # Same association as the reference: beam + (logit - lse).
        score = tl.where(ok, beam[:, None] + (logit - lse[:, None]), float("-inf"))
        key = tl.where(tile_ok, _score_key(score), -2147483648)  # padding: below -inf's key
        n_real = tl.minimum(W - w0, BLOCK_W) * tl.minimum(K - k0, BLOCK_K)
        target = tl.minimum(m_eff, n_best + n_real)
        best_key, best_flat = _select(key, rows, k0, K, best_key, best_flat, n_best, target, scratch,
                                      BLOCK_K, BEAM_PAD, FLAT_BITS)
        return best_key, best_flat, target

    @triton.jit
    def _fused_step_kernel(
        CTX, T0, T1, T2, T3, T4, T5, T6, T7,
        PREFIX, LN_W, LN_B, OUT_W, OUT_B, BEAM_SCORES, VALID,
        SCRATCH, LOGITS, OUT_SCORES, OUT_PARENTS, OUT_TOKENS,
        W, K, H, beam_size, eps,
        NUM_PREFIX: tl.constexpr,
        BLOCK_W: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_HC: tl.constexpr,
        ONE_K_TILE: tl.constexpr,
        BEAM_PAD: tl.constexpr,
        FLAT_BITS: tl.constexpr,
        DOT: tl.constexpr,
        EMULATE: tl.constexpr,
        STORE_LOGITS: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        scratch = SCRATCH + b * (2 * BEAM_PAD)
        slots = tl.arange(0, BEAM_PAD)
        m_eff = tl.minimum(beam_size, W * K)  # real candidates to keep (all of them if W * K < beam)
        # The kept set, unordered: score keys and flat indices of its first n_best slots.
        best_key = tl.zeros((BEAM_PAD,), dtype=tl.int32)
        best_flat = tl.zeros((BEAM_PAD,), dtype=tl.int32)
        n_best = tl.zeros((), dtype=tl.int32)
        for w0 in range(0, W, BLOCK_W):
            rows = w0 + tl.arange(0, BLOCK_W)
            rows_ok = rows < W
            row_id = b * W + rows
            beam = tl.load(BEAM_SCORES + row_id, mask=rows_ok, other=float("-inf")).to(tl.float32)
            # A candidate scores at most its beam (log-softmax <= 0) and this block's flat indices
            # all follow the kept ones': once the set is full, a block whose best beam does not
            # beat the weakest kept score is skipped whole (beams come best-first).
            weakest = tl.min(tl.where(slots < n_best, best_key, 2147483647), axis=0)
            enter = (n_best < m_eff) | (_score_key(tl.max(beam, axis=0)) > weakest)
            if STORE_LOGITS:
                enter = n_best >= 0  # tests read every logit: no block is skipped
            if enter:
                mean, rstd = _row_stats(CTX, T0, T1, T2, T3, T4, T5, T6, T7, PREFIX, b, row_id, rows_ok, H, eps,
                                        NUM_PREFIX, BLOCK_W, BLOCK_HC)
                if ONE_K_TILE:
                    # One tile holds every child of the block's beams: its logits are computed once.
                    logit, ok = _tile(CTX, T0, T1, T2, T3, T4, T5, T6, T7, PREFIX, LN_W, LN_B, OUT_W, OUT_B, VALID,
                                      LOGITS, b, rows_ok, row_id, 0, K, H, mean, rstd, NUM_PREFIX, BLOCK_W, BLOCK_K,
                                      BLOCK_HC, DOT, EMULATE, STORE_LOGITS)
                    m, s = _lse_update(tl.full((BLOCK_W,), float("-inf"), tl.float32),
                                       tl.zeros((BLOCK_W,), tl.float32), tl.where(ok, logit, float("-inf")))
                    best_key, best_flat, n_best = _select_tile(logit, ok, beam, _lse(m, s), w0, rows_ok, 0, K, W,
                                                                 best_key, best_flat, n_best,
                                                m_eff, scratch, BLOCK_W, BLOCK_K, BEAM_PAD, FLAT_BITS)
                else:
                    # Wide codebooks: one sweep over K tiles for each row's log-sum-exp, a second
                    # that recomputes each tile's logits (no logits in global memory) and selects.
                    m = tl.full((BLOCK_W,), float("-inf"), tl.float32)
                    s = tl.zeros((BLOCK_W,), tl.float32)
                    for k0 in range(0, K, BLOCK_K):
                        logit, ok = _tile(CTX, T0, T1, T2, T3, T4, T5, T6, T7, PREFIX, LN_W, LN_B, OUT_W, OUT_B,
                                          VALID, LOGITS, b, rows_ok, row_id, k0, K, H, mean, rstd, NUM_PREFIX,
                                          BLOCK_W, BLOCK_K, BLOCK_HC, DOT, EMULATE, STORE_LOGITS)
                        m, s = _lse_update(m, s, tl.where(ok, logit, float("-inf")))
                    lse = _lse(m, s)
                    for k0 in range(0, K, BLOCK_K):
                        logit, ok = _tile(CTX, T0, T1, T2, T3, T4, T5, T6, T7, PREFIX, LN_W, LN_B, OUT_W, OUT_B,
                                          VALID, LOGITS, b, rows_ok, row_id, k0, K, H, mean, rstd, NUM_PREFIX,
                                          BLOCK_W, BLOCK_K, BLOCK_HC, DOT, EMULATE, False)
                        best_key, best_flat, n_best = _select_tile(logit, ok, beam, lse, w0, rows_ok, k0, K, W,
                                                                     best_key, best_flat, n_best,
                                                    m_eff, scratch, BLOCK_W, BLOCK_K, BEAM_PAD, FLAT_BITS)

        # ---- rank the kept (unique) keys and scatter them to their output slots.
        # (key, flat) pairs are unique; one ranks above another by key, then by lower flat.
        kept = slots < n_best
        above = (best_key[None, :] > best_key[:, None]) | (
            (best_key[None, :] == best_key[:, None]) & (best_flat[None, :] < best_flat[:, None]))
        rank = tl.sum((above & kept[None, :]).to(tl.int32), axis=1)
        out = b * beam_size + rank
        tl.store(OUT_SCORES + out, _key_score(best_key), mask=kept)
        tl.store(OUT_PARENTS + out, (best_flat // K).to(tl.int64), mask=kept)
        tl.store(OUT_TOKENS + out, (best_flat % K).to(tl.int64), mask=kept)
        # beam > W * K: the missing candidates are dead (-inf, parent 0, token 0). BEAM_PAD >= beam.
        pad_ok = (slots >= n_best) & (slots < beam_size)
        out = b * beam_size + slots
        tl.store(OUT_SCORES + out, tl.full((BEAM_PAD,), float("-inf"), tl.float32), mask=pad_ok)
        tl.store(OUT_PARENTS + out, tl.zeros((BEAM_PAD,), tl.int64), mask=pad_ok)
        tl.store(OUT_TOKENS + out, tl.zeros((BEAM_PAD,), tl.int64), mask=pad_ok)


# --------------------------------------------------------------------------- launcher


def round_to_tf32(t: torch.Tensor) -> torch.Tensor:
    """fp32 `t` rounded to nearest (ties away) on TF32's 10 mantissa bits, still fp32 (cvt.rna.tf32.f32)."""
    bits = t.float().contiguous().view(torch.int32)
    return ((bits + (1 << 12)) & ~((1 << 13) - 1)).view(torch.float32)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _check_tensor(value, name: str, ndim: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InvalidInputType(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise InvalidInput(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    if not value.is_contiguous():
        raise InvalidInput(f"{name} must be contiguous (call .contiguous()), got strides {value.stride()}")
    return value


def _check_shape(value: torch.Tensor, name: str, expected: tuple) -> None:
    if tuple(value.shape) != tuple(expected):
        raise InvalidInput(f"{name} must have shape {tuple(expected)}, got {tuple(value.shape)}")


def _check_beam_cap(beam_size: int) -> None:
    if beam_size > MAX_BEAM:
        raise InvalidInput(
            f"beam_size must be <= {MAX_BEAM} for the fused Triton step (backend 'triton'), got {beam_size}; "
            "decode wider beams with backend='cpu' (the extension's beam step has no cap)"
        )


def _validate(
    ctx_proj, prefix_tables, prefixes, ln_w, ln_b, ln_eps, out_w, out_b, beam_scores, valid, beam_size, check_codes
):
    if isinstance(beam_size, bool) or not isinstance(beam_size, int):
        raise InvalidInputType(f"beam_size must be an int, got {type(beam_size).__name__}")
    if beam_size < 1:
        raise InvalidInput(f"beam_size must be >= 1, got {beam_size}")
    _check_beam_cap(beam_size)
    if isinstance(ln_eps, bool) or not isinstance(ln_eps, (int, float)):
        raise InvalidInputType(f"ln_eps must be a float, got {type(ln_eps).__name__}")
    if not (math.isfinite(ln_eps) and ln_eps >= 0):
        raise InvalidInput(f"ln_eps must be a finite float >= 0, got {ln_eps}")
    if not isinstance(prefix_tables, (list, tuple)):
        raise InvalidInputType(f"prefix_tables must be a list or tuple of tensors, got {type(prefix_tables).__name__}")

    out_w = _check_tensor(out_w, "out_w", 2)
    k, h = out_w.shape
    ctx_proj = _check_tensor(ctx_proj, "ctx_proj", 2)
    batch = ctx_proj.shape[0]
    prefixes = _check_tensor(prefixes, "prefixes", 3)
    beam_scores = _check_tensor(beam_scores, "beam_scores", 2)
    valid = _check_tensor(valid, "valid", 3)
    width, level = prefixes.shape[1], prefixes.shape[2]
    tables = [_check_tensor(t, f"prefix_tables[{j}]", 2) for j, t in enumerate(prefix_tables)]
    ln_w = _check_tensor(ln_w, "ln_w", 1)
    ln_b = _check_tensor(ln_b, "ln_b", 1)
    out_b = _check_tensor(out_b, "out_b", 1)

    if k < 1 or h < 1:
        raise InvalidInput(f"out_w must have shape (K >= 1, H >= 1), got {tuple(out_w.shape)}")
    if h > MAX_HIDDEN:
        raise InvalidInput(f"out_w hidden size must be <= {MAX_HIDDEN}, got {h}")
    if batch < 1:
        raise InvalidInput(f"ctx_proj must have at least one user row, got shape {tuple(ctx_proj.shape)}")
    _check_shape(ctx_proj, "ctx_proj", (batch, h))
    if width < 1:
        raise InvalidInput(f"prefixes must have at least one beam, got shape {tuple(prefixes.shape)}")
    _check_shape(prefixes, "prefixes", (batch, width, level))
    if len(tables) != level:
        raise InvalidInput(f"prefix_tables must hold one table per prefix digit ({level}), got {len(tables)}")
    if level > MAX_PREFIX:
        raise InvalidInput(f"prefixes may have at most {MAX_PREFIX} digits, got {level}")
    for j, t in enumerate(tables):
        if t.shape[0] < 1 or t.shape[1] != h:
            raise InvalidInput(f"prefix_tables[{j}] must have shape (K_{j} >= 1, {h}), got {tuple(t.shape)}")
    _check_shape(ln_w, "ln_w", (h,))
    _check_shape(ln_b, "ln_b", (h,))
    _check_shape(out_b, "out_b", (k,))
    _check_shape(beam_scores, "beam_scores", (batch, width))
    _check_shape(valid, "valid", (batch, width, k))
    if width * k >= 2**31:
        raise InvalidInput(f"beams x children must be < 2**31 per user, got {width} x {k}")

    # dtypes: tables and out_w set the model dtype; the small vectors may also be fp32.
    model_dtype = out_w.dtype
    if model_dtype not in _MODEL_DTYPES:
        raise InvalidInputType(f"out_w must be float32, bfloat16 or float16, got {model_dtype}")
    for j, t in enumerate(tables):
        if t.dtype != model_dtype:
            raise InvalidInputType(f"prefix_tables[{j}] must have out_w's dtype {model_dtype}, got {t.dtype}")
    for name, t in (("ctx_proj", ctx_proj), ("ln_w", ln_w), ("ln_b", ln_b), ("out_b", out_b)):
        if t.dtype not in (model_dtype, torch.float32):
            raise InvalidInputType(f"{name} must be {model_dtype} or float32, got {t.dtype}")
    if beam_scores.dtype != torch.float32:
        raise InvalidInputType(f"beam_scores must be float32, got {beam_scores.dtype}")
    if prefixes.dtype not in (torch.int32, torch.int64):
        raise InvalidInputType(f"prefixes must be int32 or int64, got {prefixes.dtype}")
    if valid.dtype not in (torch.bool, torch.uint8):
        raise InvalidInputType(f"valid must be bool or uint8, got {valid.dtype}")

    device = out_w.device
    named = [("ctx_proj", ctx_proj), ("prefixes", prefixes), ("ln_w", ln_w), ("ln_b", ln_b), ("out_b", out_b),
             ("beam_scores", beam_scores), ("valid", valid)] + [(f"prefix_tables[{j}]", t) for j, t in enumerate(tables)]
    for name, t in named:
        if t.device != device:
            raise InvalidInput(f"{name} must be on out_w's device {device}, got {t.device}")
    if device.type != "cuda" and not _interpreting():
        raise InvalidInput(
            f"fused_step needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is imported); got device {device}"
        )

    if check_codes and level > 0:
        # One small reduction per digit; pass check_codes=False in a hot loop whose prefixes
        # come from this kernel's own output (always in range).
        sizes = torch.tensor([t.shape[0] for t in tables], device=device)
        bad = (prefixes < 0) | (prefixes >= sizes)
        if bool(bad.any()):
            idx = tuple(int(i) for i in bad.nonzero()[0])
            raise InvalidInput(
                f"prefixes{list(idx)} = {int(prefixes[idx])} is outside the codebook of digit {idx[2]} "
                f"(size {tables[idx[2]].shape[0]})"
            )
    return ctx_proj, tables, prefixes, ln_w, ln_b, out_w, out_b, beam_scores, valid


def default_precision(device: torch.device, dtype: torch.dtype) -> str:
    """The dot precision used when none is given: bf16 on CUDA (fp16 for fp16 heads), fp32 elsewhere.

    Off CUDA the kernel only runs in the interpreter (tests), where the fp32 default keeps it
    equal to the fp32 reference; the low precisions are emulated there when asked for.
    """
    if torch.device(device).type != "cuda":
        return "fp32"
    return "fp16" if dtype == torch.float16 else "bf16"


def check_precision(precision, device: torch.device, dtype: torch.dtype) -> str:
    """`precision` (None: default_precision) as one of PRECISIONS' names, or a clear error."""
    if precision is None:
        return default_precision(device, dtype)
    if not isinstance(precision, str):
        raise InvalidInputType(f"precision must be a str (one of {sorted(PRECISIONS)}) or None, "
                               f"got {type(precision).__name__}")
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision must be one of {sorted(PRECISIONS)} or None, got {precision!r}")
    return precision


# The candidate tile (beams x children) one program holds in registers: 64 x 256 at most.
MAX_TILE = 16384


def launch_config(
    width: int, k: int, h: int, level: int, beam_size: int, precision: str = "bf16", device_type: str = "cuda",
    store_logits: bool = False,
) -> dict:
    """The kernel's compile-time parameters (block sizes, dot precision) and num_warps for one problem shape.

    Beam blocks of 64 rows (the M of one Hopper wgmma; fewer, down to tl.dot's 16, when there
    are fewer beams), as many children per tile as fit MAX_TILE (all of them for K <= 256),
    hidden chunks of 64 (32 for fp32 operands, whose out_w chunk takes twice the shared memory).
    The launcher passes these; bench/aot_compile.py compiles the kernel ahead of time with them.
    """
    block_w = min(64, max(16, _next_pow2(width)))
    block_k = max(16, min(_next_pow2(k), MAX_TILE // block_w))
    low = precision in ("bf16", "fp16")
    return dict(
        NUM_PREFIX=level,
        BLOCK_W=block_w,
        BLOCK_K=block_k,
        BLOCK_HC=min(64 if low else 32, max(16, _next_pow2(h))),
        ONE_K_TILE=k <= block_k,
        BEAM_PAD=max(16, _next_pow2(beam_size)),
        FLAT_BITS=max(1, (width * k - 1).bit_length()),
        DOT=PRECISIONS[precision],
        EMULATE=device_type != "cuda",
        STORE_LOGITS=bool(store_logits),
        num_warps=8 if block_w * block_k >= 8192 else 4,
    )


def _launch(
    ctx_proj, prefix_tables, prefixes, ln_w, ln_b, ln_eps, out_w, out_b, beam_scores, valid, beam_size,
    check_inputs: bool = True, return_logits: bool = False, precision: Optional[str] = None,
):
    """Validate, allocate scratch and launch; return_logits also returns the (B, W, K) fp32 logits (tests)."""
    if not HAS_TRITON:
        raise RuntimeError("fused_step needs triton; install it or use fused_step_reference")
    if check_inputs:
        ctx_proj, prefix_tables, prefixes, ln_w, ln_b, out_w, out_b, beam_scores, valid = _validate(
            ctx_proj, prefix_tables, prefixes, ln_w, ln_b, ln_eps, out_w, out_b, beam_scores, valid, beam_size,
            check_codes=True,
        )
    _check_beam_cap(beam_size)  # also without check_inputs: never compile a kernel that cannot fit
    precision = check_precision(precision, out_w.device, out_w.dtype)
    batch, width, level = prefixes.shape
    k, h = out_w.shape
    device = out_w.device
    if valid.dtype == torch.bool:
        valid = valid.view(torch.uint8)  # zero-copy; Triton's i1 pointers are awkward to load

    config = launch_config(width, k, h, level, beam_size, precision, device.type, store_logits=return_logits)
    scratch = torch.empty(batch, 2 * config["BEAM_PAD"], device=device, dtype=torch.int32)
    scores = torch.empty(batch, beam_size, device=device, dtype=torch.float32)
    parents = torch.empty(batch, beam_size, device=device, dtype=torch.int64)
    tokens = torch.empty(batch, beam_size, device=device, dtype=torch.int64)
    logits = torch.empty(batch, width, k, device=device, dtype=torch.float32) if return_logits else scores
    tables = list(prefix_tables) + [ctx_proj] * (MAX_PREFIX - level)  # unused slots: any valid pointer

    _fused_step_kernel[(batch,)](
        ctx_proj, *tables,
        prefixes, ln_w, ln_b, out_w, out_b, beam_scores, valid,
        scratch, logits, scores, parents, tokens,
        width, k, h, beam_size, float(ln_eps),
        **config,
    )
    if return_logits:
        return scores, parents, tokens, logits
    return scores, parents, tokens


def fused_step(
    ctx_proj: torch.Tensor,
    prefix_tables: Sequence[torch.Tensor],
    prefixes: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    ln_eps: float,
    out_w: torch.Tensor,
    out_b: torch.Tensor,
    beam_scores: torch.Tensor,
    valid: torch.Tensor,
    beam_size: int,
    check_inputs: bool = True,
    precision: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fused beam step (one Triton launch): returns scores (fp32), parents, tokens (int64), each (B, beam_size).

    Shapes: ctx_proj (B, H); prefix_tables[j] (K_j, H) for j < l; prefixes (B, W, l);
    ln_w, ln_b (H,); out_w (K, H); out_b (K,); beam_scores (B, W) fp32; valid (B, W, K)
    bool/uint8. check_inputs=False skips validation (including the device sync of the
    prefix range check) for callers that feed back this kernel's own outputs.
    precision: the hidden -> K GEMM's operands, 'fp32' (exact), 'tf32', 'bf16' or 'fp16', always
    with fp32 accumulation (gather, LayerNorm, GELU and the beam step are fp32 in every case);
    None is default_precision (bf16 on CUDA). For 'tf32' pass out_w through round_to_tf32 (the
    tensor cores truncate an unrounded one); the triton backend does.
    """
    return _launch(
        ctx_proj, prefix_tables, prefixes, ln_w, ln_b, ln_eps, out_w, out_b, beam_scores, valid, beam_size,
        check_inputs=check_inputs, precision=precision,
    )
