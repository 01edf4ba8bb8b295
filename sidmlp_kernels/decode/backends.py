"""Decoding backends for folded SID-MLP heads (docs/architecture.md, "Backends").

    reference  decoding.beam_search_reference over folded.folded_logits: plain PyTorch,
               defines the results every other backend is tested against.
    cpu        the folded head in PyTorch on live beams only (gather-add, LayerNorm, GELU,
               hidden -> K only where needed) + the C++ constrained ops (beam_step, finalize).
    triton     per digit: valid_mask op -> fused Triton step (kernels/fused_step.py) ->
               advance_states op; finalize op. Runs on CUDA, or on CPU tensors under
               TRITON_INTERPRET=1 (tests). Its GEMM precision (`precision`) is bf16 on CUDA by
               default: the prefix tables and out_w are cast to bf16 once (cached), fp32
               accumulation; 'fp32' is exact, 'tf32' the fast fp32 option.

Each backend is the one beam-search driver (search.beam_search) with its strategy: the
reference's ReferenceSteps, `_FoldedIndexSteps` (cpu), `_FusedSteps` (triton).
dispatch.select_backend picks one per device; SIDMLP_BACKEND forces one.
"""

from __future__ import annotations

import weakref
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from . import constrained as _constrained
from ..data.catalog import SIDCatalog
from .dispatch import BACKEND_ENV, BACKENDS, select_backend
from .reference import beam_search_reference
from .search import beam_search
from .types import GenerationOutput, check_beam_args
from .folded import FoldedHeads, folded_logits
from ..errors import InvalidInput, InvalidInputType

__all__ = ["BACKENDS", "BACKEND_ENV", "select_backend", "decode_folded"]

# The cpu backend computes only the valid children's logits (one dot product each, the
# child_logits op) when a level's mean fan-out is below K / SPARSE_FANOUT_DIVISOR, else
# one dense GEMM over the live beams. Measured at H=512, K=256, 1 thread: ~0.1 us per
# child vs ~5 us per GEMM row, a crossover near K/5 children per beam; 8 keeps a margin.
SPARSE_FANOUT_DIVISOR = 8


# ---- input checks ---------------------------------------------------------------


def _check_inputs(folded: FoldedHeads, ctx_proj: Sequence[torch.Tensor], catalog: SIDCatalog) -> int:
    """Validate heads, projected contexts and catalog against each other; returns the batch size."""
    if not isinstance(folded, FoldedHeads):
        raise InvalidInputType(f"folded must be a FoldedHeads, got {type(folded).__name__}")
    if not isinstance(catalog, SIDCatalog):
        raise InvalidInputType(f"catalog must be a SIDCatalog, got {type(catalog).__name__}")
    if not isinstance(ctx_proj, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in ctx_proj):
        raise InvalidInputType("ctx_proj must be a list of (B, H) tensors, one per head (see folded.project_context)")
    sizes = tuple(catalog.codebook_sizes)
    if folded.codebook_sizes != sizes:
        raise InvalidInput(f"folded heads have codebook_sizes {folded.codebook_sizes}, the catalog {sizes}")
    if len(ctx_proj) != len(sizes):
        raise InvalidInput(f"ctx_proj must hold one (B, H) tensor per head ({len(sizes)}), got {len(ctx_proj)}")
    batch = int(ctx_proj[0].shape[0]) if ctx_proj[0].dim() == 2 else -1
    if batch < 1:
        raise InvalidInput(f"ctx_proj[0] must have shape (B >= 1, H), got {tuple(ctx_proj[0].shape)}")
    device = ctx_proj[0].device
    for level, k in enumerate(sizes):
        h = int(folded.out_weight[level].shape[1])
        expected = {
            f"ctx_proj[{level}]": (ctx_proj[level], (batch, h)),
            f"folded.out_weight[{level}]": (folded.out_weight[level], (k, h)),
            f"folded.out_bias[{level}]": (folded.out_bias[level], (k,)),
            f"folded.ln_weight[{level}]": (folded.ln_weight[level], (h,)),
            f"folded.ln_bias[{level}]": (folded.ln_bias[level], (h,)),
        }
        if len(folded.prefix_tables[level]) != level:
            raise InvalidInput(
                f"folded.prefix_tables[{level}] must hold {level} tables, got {len(folded.prefix_tables[level])}"
            )
        for j, table in enumerate(folded.prefix_tables[level]):
            expected[f"folded.prefix_tables[{level}][{j}]"] = (table, (sizes[j], h))
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise InvalidInput(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
            if tensor.device != device:
                raise InvalidInput(f"{name} is on {tensor.device}, ctx_proj[0] on {device}; move both to one device")
    return batch


# ---- reference --------------------------------------------------------------------


def _decode_reference(folded, ctx_proj, catalog, batch, beam_size, top_n, precision=None) -> GenerationOutput:
    device = ctx_proj[0].device

    def step_fn(level: int, prefixes: torch.Tensor, parents: Optional[torch.Tensor]) -> torch.Tensor:
        # Stateless heads: each beam row carries its whole prefix, `parents` is not needed.
        return folded_logits(folded, level, ctx_proj[level], prefixes.to(device))

    return beam_search_reference(step_fn, catalog, batch, beam_size=beam_size, top_n=top_n)


# ---- cpu: PyTorch head on live beams + C++ constrained ops -------------------------


def _live_hidden(folded, level, ctx_l, prefixes, rows, batch, width) -> torch.Tensor:
    """Post-GELU hidden rows (n, H) of the beams `rows` (flat b * W + w; None = all), in beam order.

    Same arithmetic as folded_logits (ctx + T_0[d_0] + T_1[d_1] ..., LayerNorm, GELU), so the
    rows equal the reference's bit for bit. Large CPU temporaries cost page faults, so the
    sum is built in one buffer and GELU runs in place.
    """
    tables = folded.prefix_tables[level]
    users = None if rows is None else torch.div(rows, width, rounding_mode="floor")
    if not tables:
        if users is not None:
            hidden = ctx_l.index_select(0, users)
        else:
            hidden = ctx_l.unsqueeze(1).expand(-1, width, -1).reshape(batch * width, -1)
    else:
        digits = prefixes.reshape(batch * width, level)
        if rows is not None:
            digits = digits.index_select(0, rows)
        dtype = torch.promote_types(ctx_l.dtype, tables[0].dtype)
        hidden = tables[0].index_select(0, digits[:, 0]).to(dtype)
        # ctx + T_0[d_0] == T_0[d_0] + ctx exactly (IEEE addition commutes): add ctx in place.
        if users is None:
            hidden.view(batch, width, -1).add_(ctx_l.unsqueeze(1))
        else:
            hidden.add_(ctx_l.index_select(0, users))
        for j in range(1, level):
            hidden.add_(tables[j].index_select(0, digits[:, j]))
    hidden = F.layer_norm(hidden, hidden.shape[-1:], folded.ln_weight[level], folded.ln_bias[level], folded.ln_eps)
    return torch.ops.aten.gelu_(hidden)  # same values as F.gelu (exact erf form)


def _use_sparse(index, level: int, k: int) -> bool:
    """Valid-children logits only (child_logits op) when a level's mean fan-out is small."""
    fanout = index.num_nodes(level + 1) / max(1, index.num_nodes(level))
    return fanout * SPARSE_FANOUT_DIVISOR < k


def _all_rows(device: torch.device) -> bool:
    """Whether the head runs on every beam (no live-beam count, so no host sync): off the CPU."""
    return device.type != "cpu"


def _head_logits_cpu(folded, level, ctx_l, prefixes, states, index) -> torch.Tensor:
    """(B, W, K) logits of head `level`, exact at every live beam's valid children.

    CPU: only live beams get a hidden row. Dense levels: one addmm over them. Sparse levels
    (float32): one dot product per valid child. Entries the constrained beam step never reads
    (dead beams, and invalid children on sparse levels) are 0. CUDA: one addmm over every beam,
    with no host sync (dead beams' rows are computed and never read).
    """
    batch, width = states.shape
    out_w, out_b = folded.out_weight[level], folded.out_bias[level]
    k = int(out_w.shape[0])
    if _all_rows(states.device):
        # On CUDA every beam gets a row: counting the live ones (int(), nonzero) would block the
        # host on the device every digit, and the beam step never reads a dead beam's logits.
        hidden = _live_hidden(folded, level, ctx_l, prefixes, None, batch, width)
        return torch.addmm(out_b, hidden, out_w.t()).view(batch, width, k)
    live = states.reshape(-1) >= 0
    n_live = int(live.sum())
    if n_live == 0:
        return torch.zeros(batch, width, k, dtype=out_w.dtype, device=states.device)
    rows = None if n_live == batch * width else live.nonzero().squeeze(1)
    hidden = _live_hidden(folded, level, ctx_l, prefixes, rows, batch, width)

    sparse_ok = (
        hidden.dtype == out_w.dtype == out_b.dtype == torch.float32
        and _use_sparse(index, level, k)
    )
    if sparse_ok:
        if rows is None:
            row_of = torch.arange(batch * width, device=states.device).view(batch, width)
        else:
            # Each live beam's rank among the live beams is its hidden row; dead beams -1.
            row_of = torch.where(live, torch.cumsum(live, 0) - 1, -1).view(batch, width)
        return index.child_logits(hidden, row_of, out_w, out_b, states, level)

    live_logits = torch.addmm(out_b, hidden, out_w.t())
    if rows is None:
        return live_logits.view(batch, width, k)
    logits = torch.zeros(batch * width, k, dtype=live_logits.dtype, device=states.device)
    logits.index_copy_(0, rows, live_logits)
    return logits.view(batch, width, k)


class _FoldedIndexSteps(_constrained.IndexSteps):
    """cpu backend: the index ops over the folded head's logits, computed for live beams only."""

    def __init__(self, folded: FoldedHeads, ctx_proj: Sequence[torch.Tensor], index):
        super().__init__(index, self.head_logits)
        self.folded = folded
        self.ctx_proj = ctx_proj

    def head_logits(self, level: int, prefixes: torch.Tensor, parents: Optional[torch.Tensor]) -> torch.Tensor:
        """StepFn of the head at `level`; it reads the beams' trie states (which are live, which children)."""
        return _head_logits_cpu(self.folded, level, self.ctx_proj[level], prefixes, self.state.nodes, self.index)


def _decode_cpu(folded, ctx_proj, catalog, batch, beam_size, top_n, precision=None) -> GenerationOutput:
    index = _constrained.index_for(catalog, ctx_proj[0].device)
    return beam_search(_FoldedIndexSteps(folded, ctx_proj, index), batch, beam_size, top_n)


# ---- triton: valid_mask op -> fused step -> advance_states op ----------------------


# Low-precision copies of head tensors for the fused step, per source tensor: made once, not per
# decode (a cast per decode would add launches and traffic), remade if the source changes in
# place, dropped with it. Keyed by id: a tensor cannot be a dict key (its == is elementwise).
_CAST_CACHE: dict = {}
_CAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _kernel_copy(tensor: torch.Tensor, precision: str, operand: bool = False) -> torch.Tensor:
    """`tensor` contiguous as the fused step wants it in `precision` (cached per source tensor).

    bf16/fp16: stored in that dtype. tf32: a GEMM `operand` (out_w) rounded to TF32 values
    (round_to_tf32), so the tensor cores' truncation is exact. Otherwise unchanged.
    """
    from .kernels.fused_step import round_to_tf32  # imported here: see _FusedSteps.step

    dtype = _CAST_DTYPES.get(precision)
    if dtype is not None and tensor.dtype != dtype:
        convert = lambda t: t.to(dtype)  # noqa: E731
    elif precision == "tf32" and operand and tensor.dtype == torch.float32:
        convert = round_to_tf32
    else:
        return tensor.contiguous()
    key = (id(tensor), precision)
    hit = _CAST_CACHE.get(key)
    if hit is not None and hit[0]() is tensor and hit[1] == tensor._version:
        return hit[2]
    copy = convert(tensor.detach()).contiguous()
    ref = weakref.ref(tensor, lambda _, key=key: _CAST_CACHE.pop(key, None))
    _CAST_CACHE[key] = (ref, tensor._version, copy)
    return copy


class _FusedSteps(_constrained.IndexSteps):
    """triton backend: per digit the valid_mask op, one fused Triton step, the advance_states op."""

    def __init__(self, folded: FoldedHeads, ctx_proj: Sequence[torch.Tensor], index, precision: str):
        super().__init__(index, step_fn=None)  # the kernel computes the logits itself
        self.folded = folded
        self.ctx_proj = ctx_proj
        self.precision = precision

    def step(self, level, prefixes, parents, scores, beam_size):
        """Scores, parents and tokens (B, beam_size) of digit `level` from one kernel launch."""
        # Imported here: triton reads TRITON_INTERPRET when the kernel is defined.
        from .kernels.fused_step import fused_step

        folded = self.folded
        valid = self.index.valid_mask(self.state)
        # fused_step validates its inputs fully at level 0 (no device sync: no codes yet);
        # deeper levels reuse _check_inputs' shape/device checks and feed back the kernel's
        # own in-range outputs, so they skip the per-step range check and its sync.
        # bf16/fp16: the big per-head tensors (prefix tables, out_w) in that dtype (tf32: out_w
        # rounded to TF32); ctx_proj, LayerNorm and bias stay fp32, as does all arithmetic but the GEMM's.
        scores, parents, tokens = fused_step(
            self.ctx_proj[level].contiguous(),
            [_kernel_copy(t, self.precision) for t in folded.prefix_tables[level]],
            prefixes,
            folded.ln_weight[level].contiguous(),
            folded.ln_bias[level].contiguous(),
            float(folded.ln_eps),
            _kernel_copy(folded.out_weight[level], self.precision, operand=True),
            folded.out_bias[level].contiguous(),
            scores,
            valid,
            beam_size,
            check_inputs=level == 0,
            precision=self.precision,
        )
        try:
            self.state = self.index.advance_states(self.state, parents, tokens, scores)
        except ValueError as err:
            # Kept beams' scores come from finite (or -inf) parents plus the head's log-softmax,
            # so a non-finite one means the head produced a non-finite logit at a valid child.
            raise InvalidInput(f"non-finite logit: head {level} produced a non-finite logit at a catalog-valid "
                             f"digit (logits must be finite or -inf); the fused step reported: {err}") from err
        return scores, parents, tokens


def _decode_triton(folded, ctx_proj, catalog, batch, beam_size, top_n, precision) -> GenerationOutput:
    from .kernels.fused_step import check_precision  # imported here: see _FusedSteps.step

    device = ctx_proj[0].device
    precision = check_precision(precision, device, folded.out_weight[0].dtype)
    index = _constrained.index_for(catalog, device)
    return beam_search(_FusedSteps(folded, ctx_proj, index, precision), batch, beam_size, top_n)


# ---- entry point ------------------------------------------------------------------

_DECODERS = {"reference": _decode_reference, "cpu": _decode_cpu, "triton": _decode_triton}


@torch.no_grad()
def decode_folded(
    folded: FoldedHeads,
    ctx_proj: Sequence[torch.Tensor],
    catalog: SIDCatalog,
    beam_size: int = 50,
    top_n: int = 10,
    backend: Optional[str] = None,
    precision: Optional[str] = None,
) -> GenerationOutput:
    """Catalog-constrained beam search over folded heads on the chosen (or best available) backend.

    ctx_proj: per head l the (B, H) projected context (folded.project_context). Every backend
    returns the reference's ranked items (docs/architecture.md, "Decoding semantics"); outputs live on ctx_proj's
    device for 'cpu'/'triton' and on the CPU for 'reference'.
    precision: the triton backend's hidden -> K GEMM operands ('fp32', 'tf32', 'bf16', 'fp16'; None:
    bf16 on CUDA, fp32 in the interpreter), always accumulated in fp32; the other backends compute
    in the heads' dtype and take only None or 'fp32'.
    """
    check_beam_args(beam_size, top_n)
    batch = _check_inputs(folded, ctx_proj, catalog)
    name = select_backend(ctx_proj[0].device, backend)
    if name != "triton" and precision not in (None, "fp32"):
        raise InvalidInput(f"precision={precision!r} applies to backend 'triton' only; backend {name!r} "
                           "computes in the heads' dtype (pass precision=None or 'fp32')")
    return _DECODERS[name](folded, list(ctx_proj), catalog, batch, beam_size, top_n, precision)
