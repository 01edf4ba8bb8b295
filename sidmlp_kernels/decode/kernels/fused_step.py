"""Fused SID-MLP beam step for one digit (docs/architecture.md, "Fast paths"): one Triton launch per digit.

The kernel takes the folded head's raw tensors (see sidmlp_kernels/folded.py):

    h      = ctx_proj[b] + sum_j prefix_tables[j][d_j]        (gather-and-add)
    h      = GELU(LayerNorm(h) * ln_w + ln_b)                   (exact erf GELU)
    logits = h @ out_w.T + out_b                                (hidden -> K, tl.dot)

then masks invalid children, takes the log-softmax over the valid ones, adds the
beam score and keeps the best `beam_size` (beam, token) candidates per user with
the tie-break of decoding.beam_step_reference: equal scores by (beam, token)
ascending, missing candidates dead (-inf, parent 0, token 0).

Design: grid = (B,), one program per user owns all W beams, so top-k needs no
second launch and no cross-program sync. Per user:

  A. per block of beams: gather + LayerNorm + GELU on full rows in registers,
     activations written to a (B, W, H) scratch in the GEMM dtype;
  B. per block of 16 beams: logits tiles by tl.dot over hidden chunks (fp32
     accumulate), stored to a (B, W, K) fp32 scratch while an online
     max / sum-exp gives each row's log-sum-exp over its valid children;
  C. same beam block: reread the logits tiles, form candidate scores and pack each
     as one int64 key, (order-preserving float bits << 32) | (2**32 - 1 - flat
     index), so keys are unique and key order *is* the reference order (score
     descending, then (beam, token) ascending). A running set of the best
     `beam_pad` keys (unordered, in registers) absorbs each tile by repeatedly
     swapping its minimum for the tile's maximum while that is larger: zero
     swaps for most tiles once good beams (which come first) have filled it.
  D. rank the kept keys (beam_pad x beam_pad compares) and scatter-store the
     top `beam_size` as scores / parents / tokens.

Why not tl.topk per tile: it is a bitonic network that the CPU interpreter runs
element-wise in Python (~2 s per 1024-key tile), too slow for the CI tests;
the swap loop is exact, branch-light and vectorised in both worlds.

`fused_step_reference` is the plain-PyTorch definition this kernel is tested against.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

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
    "folded_logits_reference",
    "fused_step_reference",
    "fused_step",
]

# Prefix tables are passed as separate pointer arguments (no per-step concat copy).
MAX_PREFIX = 8
# Phase A keeps whole hidden rows in registers; beyond this they would spill badly.
MAX_HIDDEN = 16384
# One program keeps a user's best beam_size keys in registers and ranks them pairwise
# (BEAM_PAD^2 compares): beyond 256 the kernel spills and compiles for minutes (beam 1024:
# ~400 s for sm_90a), and past 1024 it does not compile at all.
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

if HAS_TRITON:

    @triton.jit
    def _gather_add(x, table, prefix, row_id, rows_ok, cols, col_ok, H, J: tl.constexpr, NUM_PREFIX: tl.constexpr):
        # Row d_j of table j, one per beam row; codes were range-checked by the launcher.
        code = tl.load(prefix + row_id * NUM_PREFIX + J, mask=rows_ok, other=0).to(tl.int64)
        ptrs = table + code[:, None] * H + cols[None, :]
        return x + tl.load(ptrs, mask=rows_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)

    @triton.jit
    def _fused_step_kernel(
        CTX, T0, T1, T2, T3, T4, T5, T6, T7,
        PREFIX, LN_W, LN_B, OUT_W, OUT_B, BEAM_SCORES, VALID,
        HID, LOGITS, OUT_SCORES, OUT_PARENTS, OUT_TOKENS,
        W, K, H, beam_size, eps,
        NUM_PREFIX: tl.constexpr,
        BLOCK_WA: tl.constexpr,
        BLOCK_H: tl.constexpr,
        BLOCK_W: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_HC: tl.constexpr,
        BLOCK_KS: tl.constexpr,
        BEAM_PAD: tl.constexpr,
        IEEE_DOT: tl.constexpr,
        UPCAST_DOT: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)

        # ---- phase A: gather + LayerNorm + GELU, whole hidden rows in registers.
        cols = tl.arange(0, BLOCK_H)
        col_ok = cols < H
        ctx = tl.load(CTX + b * H + cols, mask=col_ok, other=0.0).to(tl.float32)
        ln_w = tl.load(LN_W + cols, mask=col_ok, other=0.0).to(tl.float32)
        ln_b = tl.load(LN_B + cols, mask=col_ok, other=0.0).to(tl.float32)
        for w0 in range(0, W, BLOCK_WA):
            rows = w0 + tl.arange(0, BLOCK_WA)
            rows_ok = rows < W
            row_id = b * W + rows
            x = tl.zeros((BLOCK_WA, BLOCK_H), dtype=tl.float32) + ctx[None, :]
            if NUM_PREFIX > 0:
                x = _gather_add(x, T0, PREFIX, row_id, rows_ok, cols, col_ok, H, 0, NUM_PREFIX)
            if NUM_PREFIX > 1:
                x = _gather_add(x, T1, PREFIX, row_id, rows_ok, cols, col_ok, H, 1, NUM_PREFIX)
            if NUM_PREFIX > 2:
                x = _gather_add(x, T2, PREFIX, row_id, rows_ok, cols, col_ok, H, 2, NUM_PREFIX)
            if NUM_PREFIX > 3:
                x = _gather_add(x, T3, PREFIX, row_id, rows_ok, cols, col_ok, H, 3, NUM_PREFIX)
            if NUM_PREFIX > 4:
                x = _gather_add(x, T4, PREFIX, row_id, rows_ok, cols, col_ok, H, 4, NUM_PREFIX)
            if NUM_PREFIX > 5:
                x = _gather_add(x, T5, PREFIX, row_id, rows_ok, cols, col_ok, H, 5, NUM_PREFIX)
            if NUM_PREFIX > 6:
                x = _gather_add(x, T6, PREFIX, row_id, rows_ok, cols, col_ok, H, 6, NUM_PREFIX)
            if NUM_PREFIX > 7:
                x = _gather_add(x, T7, PREFIX, row_id, rows_ok, cols, col_ok, H, 7, NUM_PREFIX)
            # Two-pass mean / variance (as torch): padded columns are zero and masked out.
            mean = tl.sum(x, axis=1) / H
            xc = tl.where(col_ok[None, :], x - mean[:, None], 0.0)
            var = tl.sum(xc * xc, axis=1) / H
            rstd = 1.0 / tl.sqrt(var + eps)
            y = xc * rstd[:, None] * ln_w[None, :] + ln_b[None, :]
            y = 0.5 * y * (1.0 + tl.erf(y * 0.7071067811865476))
            tl.store(
                HID + row_id[:, None] * H + cols[None, :],
                y.to(HID.dtype.element_ty),
                mask=rows_ok[:, None] & col_ok[None, :],
            )
        # Phase B reads rows other threads of this program wrote.
        tl.debug_barrier()

        # Running top set, unordered. Its padding keys INT64_MIN + i are distinct (so
        # "replace the minimum" touches one slot) and below every real key: the
        # smallest real key is -inf's, (-2139095041 << 32) | low.
        best = (tl.full((BEAM_PAD,), 1, tl.int64) << 63) + tl.arange(0, BEAM_PAD)
        for w0 in range(0, W, BLOCK_W):
            rows = w0 + tl.arange(0, BLOCK_W)
            rows_ok = rows < W
            row_id = b * W + rows

            # ---- phase B: logits tiles + online log-sum-exp over valid children.
            m = tl.full((BLOCK_W,), float("-inf"), tl.float32)
            s = tl.zeros((BLOCK_W,), tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < K
                acc = tl.zeros((BLOCK_W, BLOCK_K), dtype=tl.float32)
                for h0 in range(0, H, BLOCK_HC):
                    hc = h0 + tl.arange(0, BLOCK_HC)
                    h_ok = hc < H
                    a = tl.load(HID + row_id[:, None] * H + hc[None, :], mask=rows_ok[:, None] & h_ok[None, :], other=0.0)
                    wt = tl.load(OUT_W + ks[None, :].to(tl.int64) * H + hc[:, None], mask=h_ok[:, None] & k_ok[None, :], other=0.0)
                    if UPCAST_DOT:
                        # The interpreter's low-precision tl.dot is broken (triton 3.9); bf16/fp16
                        # products are exact in fp32, so upcasting changes nothing numerically.
                        acc = tl.dot(a.to(tl.float32), wt.to(tl.float32), acc, input_precision="ieee")
                    elif IEEE_DOT:
                        # fp32 weights: no TF32, so parents/tokens match the fp32 reference.
                        acc = tl.dot(a, wt, acc, input_precision="ieee")
                    else:
                        acc = tl.dot(a, wt, acc)
                bias = tl.load(OUT_B + ks, mask=k_ok, other=0.0).to(tl.float32)
                logit = acc + bias[None, :]
                tile_ok = rows_ok[:, None] & k_ok[None, :]
                tile_off = row_id[:, None] * K + ks[None, :]
                tl.store(LOGITS + tile_off, logit, mask=tile_ok)
                ok = tile_ok & (tl.load(VALID + tile_off, mask=tile_ok, other=0) != 0)
                masked = tl.where(ok, logit, float("-inf"))
                m_new = tl.maximum(m, tl.max(masked, axis=1))
                # Rows with no valid child yet keep m = -inf; avoid (-inf) - (-inf).
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(masked - m_safe[:, None]), axis=1)
                m = m_new
            # s == 0 only for rows with no valid child; their lse is never used.
            lse = tl.where(s > 0.0, m + tl.log(tl.where(s > 0.0, s, 1.0)), 0.0)
            beam = tl.load(BEAM_SCORES + row_id, mask=rows_ok, other=float("-inf")).to(tl.float32)
            tl.debug_barrier()

            # ---- phase C: candidate scores -> packed keys -> running top-BEAM_PAD.
            for k0 in range(0, K, BLOCK_KS):
                ks = k0 + tl.arange(0, BLOCK_KS)
                k_ok = ks < K
                tile_ok = rows_ok[:, None] & k_ok[None, :]
                tile_off = row_id[:, None] * K + ks[None, :]
                logit = tl.load(LOGITS + tile_off, mask=tile_ok, other=0.0)
                ok = tile_ok & (tl.load(VALID + tile_off, mask=tile_ok, other=0) != 0)
                # Same association as the reference: beam + (logit - lse).
                score = tl.where(ok, beam[:, None] + (logit - lse[:, None]), float("-inf"))
                # -0.0 and +0.0 tie in the reference; their bit keys would not.
                score = tl.where(score == 0.0, 0.0, score)
                bits = score.to(tl.int32, bitcast=True)
                key32 = bits ^ ((bits >> 31) & 0x7FFFFFFF)
                flat = rows[:, None].to(tl.int64) * K + ks[None, :]
                key = (key32.to(tl.int64) << 32) | (4294967295 - flat)
                # Tile padding is INT64_MIN: never above the running minimum.
                key = tl.where(tile_ok, key, tl.full((BLOCK_W, BLOCK_KS), 1, tl.int64) << 63)
                key = tl.reshape(key, [BLOCK_W * BLOCK_KS])
                # Insert the tile's best key over the running minimum until no tile key
                # beats it. Beams arrive best-first (sorted by the previous step), so
                # after the first tiles this loop mostly runs zero times.
                cur_min = tl.min(best, axis=0)
                tile_max = tl.max(key, axis=0)
                while tile_max > cur_min:
                    best = tl.where(best == cur_min, tile_max, best)
                    key = tl.where(key == tile_max, tl.full((BLOCK_W * BLOCK_KS,), 1, tl.int64) << 63, key)
                    cur_min = tl.min(best, axis=0)
                    tile_max = tl.max(key, axis=0)

        # ---- rank the (unique) kept keys and scatter them to their output slots.
        rank = tl.sum((best[None, :] > best[:, None]).to(tl.int32), axis=1)
        key32 = (best >> 32).to(tl.int32)
        is_pad = key32 == (tl.full((BEAM_PAD,), 1, tl.int32) << 31)
        flat = 4294967295 - (best & 4294967295)
        bits = key32 ^ ((key32 >> 31) & 0x7FFFFFFF)
        score = tl.where(is_pad, float("-inf"), bits.to(tl.float32, bitcast=True))
        parent = tl.where(is_pad, 0, flat // K)
        token = tl.where(is_pad, 0, flat % K)
        out_ok = rank < beam_size
        tl.store(OUT_SCORES + b * beam_size + rank, score, mask=out_ok)
        tl.store(OUT_PARENTS + b * beam_size + rank, parent, mask=out_ok)
        tl.store(OUT_TOKENS + b * beam_size + rank, token, mask=out_ok)


# --------------------------------------------------------------------------- launcher


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
    if width * k >= 2**32:
        raise InvalidInput(f"beams x children must be < 2**32 per user, got {width} x {k}")

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


def launch_config(
    width: int, k: int, h: int, level: int, beam_size: int, dtype: torch.dtype, device_type: str = "cuda"
) -> dict:
    """The kernel's compile-time parameters (block sizes, dot mode) and num_warps for one problem shape.

    The launcher passes these; bench/aot_compile.py compiles the kernel ahead of time with them.
    """
    block_h = _next_pow2(h)
    block_k = min(64, max(16, _next_pow2(k)))
    return dict(
        NUM_PREFIX=level,
        BLOCK_WA=max(1, min(16, 8192 // block_h, _next_pow2(width))),
        BLOCK_H=block_h,
        BLOCK_W=16,  # tl.dot needs M >= 16
        BLOCK_K=block_k,
        BLOCK_HC=min(64, max(16, _next_pow2(h))),
        BLOCK_KS=block_k,
        BEAM_PAD=_next_pow2(beam_size),
        IEEE_DOT=dtype == torch.float32,
        UPCAST_DOT=device_type != "cuda" and dtype != torch.float32,
        num_warps=4 if block_h <= 1024 else 8,
    )


def _launch(
    ctx_proj, prefix_tables, prefixes, ln_w, ln_b, ln_eps, out_w, out_b, beam_scores, valid, beam_size,
    check_inputs: bool = True, return_logits: bool = False,
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
    batch, width, level = prefixes.shape
    k, h = out_w.shape
    device = out_w.device
    if valid.dtype == torch.bool:
        valid = valid.view(torch.uint8)  # zero-copy; Triton's i1 pointers are awkward to load

    hid = torch.empty(batch, width, h, device=device, dtype=out_w.dtype)
    logits = torch.empty(batch, width, k, device=device, dtype=torch.float32)
    scores = torch.empty(batch, beam_size, device=device, dtype=torch.float32)
    parents = torch.empty(batch, beam_size, device=device, dtype=torch.int64)
    tokens = torch.empty(batch, beam_size, device=device, dtype=torch.int64)
    tables = list(prefix_tables) + [ctx_proj] * (MAX_PREFIX - level)  # unused slots: any valid pointer

    _fused_step_kernel[(batch,)](
        ctx_proj, *tables,
        prefixes, ln_w, ln_b, out_w, out_b, beam_scores, valid,
        hid, logits, scores, parents, tokens,
        width, k, h, beam_size, float(ln_eps),
        **launch_config(width, k, h, level, beam_size, out_w.dtype, device.type),
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fused beam step (one Triton launch): returns scores (fp32), parents, tokens (int64), each (B, beam_size).

    Shapes: ctx_proj (B, H); prefix_tables[j] (K_j, H) for j < l; prefixes (B, W, l);
    ln_w, ln_b (H,); out_w (K, H); out_b (K,); beam_scores (B, W) fp32; valid (B, W, K)
    bool/uint8. check_inputs=False skips validation (including the device sync of the
    prefix range check) for callers that feed back this kernel's own outputs.
    """
    return _launch(
        ctx_proj, prefix_tables, prefixes, ln_w, ln_b, ln_eps, out_w, out_b, beam_scores, valid, beam_size,
        check_inputs=check_inputs,
    )
