"""Catalog-constrained decoding on the C++/CUDA extension (`sidmlp_kernels._C`).

`ConstrainedIndex` is a STATIC-style hybrid trie over the catalog's codes
(csrc/index.h): dense child tables for shallow levels, CSR child lists below,
O(items) memory. A beam's prefix is one int64 node id per level (`PrefixState`),
so a beam step visits only each beam's valid children. Semantics are those of
`decoding.beam_step_reference` / `beam_search_reference` (docs/architecture.md, "Decoding semantics").

    index = ConstrainedIndex.from_catalog(catalog)
    state = index.root_state(batch)
    scores, parents, tokens, state = index.beam_step(logits, scores, state, beam_size)

`IndexSteps` is the strategy that runs the one beam-search driver (search.py) on these ops;
`constrained_beam_search` runs it over any logits StepFn.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from ..data.catalog import SIDCatalog
from .dispatch import has_cuda_extension, has_extension, select_backend
from .dispatch import require_extension as _require_extension
from .final_token import FinalLogp, FinalTokenSteps
from .reference import ReferenceSteps, beam_step_reference
from .search import BeamStep, beam_search, step_logits
from .types import GenerationOutput, StepFn
from ..errors import InvalidInput, InvalidInputType

# Dense child tables are built for levels < DEFAULT_DENSE_DEPTH whose
# (nodes x K) table has at most DEFAULT_DENSE_LIMIT entries (int32).
DEFAULT_DENSE_DEPTH = 2
DEFAULT_DENSE_LIMIT = 1 << 22

_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InvalidInputType(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputType(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise InvalidInput(f"{name} must be >= {low}, got {value}")
    return value


@dataclass(frozen=True)
class PrefixState:
    """Beams' prefixes as trie node ids: nodes (B, W) int64 at `level` digits; -1 is dead."""

    nodes: torch.Tensor
    level: int


class ConstrainedIndex:
    """Hybrid trie over a catalog's Semantic IDs, held as flat tensors on one device."""

    def __init__(self, tensors: Sequence[torch.Tensor], meta: Sequence[int], validate: bool = True):
        _require_extension()
        tensors = [_check_tensor(t, "tensors") for t in tensors]
        self._tensors = list(tensors)
        self._meta = [int(m) for m in meta]
        if len(self._meta) < 2:
            raise InvalidInput("meta is too short to describe an index")
        if validate:
            # O(nodes) consistency check (on CPU) so corrupt arrays fail here, not mid-decode.
            cpu = [t.cpu() for t in self._tensors]
            torch.ops.sidmlp.validate_index(cpu, self._meta)
        num_levels = self._meta[1]
        self.codebook_sizes: tuple[int, ...] = tuple(self._meta[2 : 2 + num_levels])
        self._base = self._meta[2 + num_levels : 4 + 2 * num_levels]

    @classmethod
    def from_catalog(
        cls,
        catalog: SIDCatalog,
        dense_depth: int = DEFAULT_DENSE_DEPTH,
        dense_limit: int = DEFAULT_DENSE_LIMIT,
        device: Union[str, torch.device, None] = None,
    ) -> "ConstrainedIndex":
        """Build the index from a SIDCatalog (on CPU, then moved to `device`)."""
        _require_extension()
        if not isinstance(catalog, SIDCatalog):
            raise InvalidInputType(f"catalog must be a SIDCatalog, got {type(catalog).__name__}")
        _check_int(dense_depth, "dense_depth", 0)
        _check_int(dense_limit, "dense_limit", 0)
        out = torch.ops.sidmlp.build_index(
            catalog.codes.cpu(), catalog.item_ids.cpu(), list(catalog.codebook_sizes),
            dense_depth, dense_limit,
        )
        meta, tensors = out[0].tolist(), list(out[1:])
        index = cls(tensors, meta, validate=False)  # built by us: consistent by construction
        return index.to(device) if device is not None else index

    # ---- properties -------------------------------------------------------

    @property
    def num_levels(self) -> int:
        """Number of SID digits L."""
        return len(self.codebook_sizes)

    @property
    def device(self) -> torch.device:
        """Device holding the index tensors."""
        return self._tensors[0].device

    @property
    def num_items(self) -> int:
        """Number of catalog items (leaves)."""
        return self.num_nodes(self.num_levels)

    @property
    def nbytes(self) -> int:
        """Memory held by the index tensors."""
        return sum(t.numel() * t.element_size() for t in self._tensors)

    @property
    def tensors(self) -> list[torch.Tensor]:
        """[child_ptr, token, parent, dense, leaf_item] (see csrc/index.h)."""
        return list(self._tensors)

    @property
    def meta(self) -> list[int]:
        """Layout description that goes with `tensors`."""
        return list(self._meta)

    def num_nodes(self, level: int) -> int:
        """Number of distinct catalog prefixes with `level` digits."""
        if not 0 <= level <= self.num_levels:
            raise InvalidInput(f"level must be in [0, {self.num_levels}], got {level}")
        return self._base[level + 1] - self._base[level]

    def to(self, device: Union[str, torch.device]) -> "ConstrainedIndex":
        """A copy of the index on `device` (self if already there)."""
        device = torch.device(device)
        if device.type == "cuda" and not has_cuda_extension():
            raise InvalidInput("this build of sidmlp_kernels._C has no CUDA ops; rebuild with CUDA")
        if self.device == device:
            return self
        moved = ConstrainedIndex.__new__(ConstrainedIndex)
        moved._tensors = [t.to(device) for t in self._tensors]
        moved._meta = list(self._meta)
        moved.codebook_sizes = self.codebook_sizes
        moved._base = list(self._base)
        return moved

    def __repr__(self) -> str:
        return (
            f"ConstrainedIndex(num_items={self.num_items}, codebook_sizes={self.codebook_sizes}, "
            f"nodes={self._base[-1]}, nbytes={self.nbytes}, device={self.device})"
        )

    # ---- ops --------------------------------------------------------------

    def root_state(self, batch_size: int) -> PrefixState:
        """Level-0 state: one live beam (the empty prefix) per user, (B, 1)."""
        _check_int(batch_size, "batch_size", 0)
        return PrefixState(torch.zeros(batch_size, 1, dtype=torch.long, device=self.device), 0)

    def _check_device(self, tensor: torch.Tensor, name: str) -> None:
        if tensor.device != self.device:
            raise InvalidInput(
                f"{name} is on {tensor.device} but the index is on {self.device}; "
                "use index.to(device) or move the tensor"
            )

    def beam_step(
        self,
        logits: torch.Tensor,
        beam_scores: torch.Tensor,
        prefix_state: Union[PrefixState, torch.Tensor],
        beam_size: int,
        level: Optional[int] = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PrefixState]:
        """One constrained beam step: (scores, parents, tokens) each (B, beam) and the new state.

        logits (B, W, K_level) float32/bf16/fp16, beam_scores (B, W) float32 (-inf = dead),
        prefix_state a PrefixState (or a (B, W) int64 node tensor plus `level`).
        """
        logits = _check_tensor(logits, "logits")
        beam_scores = _check_tensor(beam_scores, "beam_scores")
        nodes, level = self._state_nodes(prefix_state, level)
        _check_int(beam_size, "beam_size", 1)
        if logits.dtype not in _LOGIT_DTYPES:
            raise InvalidInputType(f"logits must be float32, bfloat16 or float16, got {logits.dtype}")
        if beam_scores.dtype != torch.float32:
            raise InvalidInputType(f"beam_scores must be float32, got {beam_scores.dtype}")
        for tensor, name in ((logits, "logits"), (beam_scores, "beam_scores"), (nodes, "prefix_state")):
            self._check_device(tensor, name)
        scores, parents, tokens, new_nodes = torch.ops.sidmlp.beam_step(
            logits, beam_scores, nodes, self._tensors, self._meta, level, beam_size
        )
        return scores, parents, tokens, PrefixState(new_nodes, level + 1)

    def _state_nodes(self, prefix_state: Union[PrefixState, torch.Tensor], level: Optional[int]) -> tuple:
        """(nodes, level) of a PrefixState or of a plain (B, W) node tensor plus `level`, checked."""
        if isinstance(prefix_state, PrefixState):
            if level is not None and level != prefix_state.level:
                raise InvalidInput(f"level={level} contradicts prefix_state.level={prefix_state.level}")
            nodes, level = prefix_state.nodes, prefix_state.level
        else:
            nodes = _check_tensor(prefix_state, "prefix_state")
            if level is None:
                raise InvalidInput("level is required when prefix_state is a plain tensor")
        _check_int(level, "level", 0)
        if level >= self.num_levels:
            raise InvalidInput(f"level must be in [0, {self.num_levels}), got {level}")
        nodes = _check_tensor(nodes, "prefix_state")
        if nodes.dtype != torch.int64:
            raise InvalidInputType(f"prefix_state nodes must be int64, got {nodes.dtype}")
        if nodes.dim() != 2:
            raise InvalidInput(f"prefix_state nodes must be (B, W), got shape {tuple(nodes.shape)}")
        self._check_device(nodes, "prefix_state")
        return nodes, level

    def valid_mask(
        self, prefix_state: Union[PrefixState, torch.Tensor], level: Optional[int] = None
    ) -> torch.Tensor:
        """Bool (B, W, K_level) mask of each beam's catalog-valid next digits; dead beams (-1) all False.

        Equals catalog.valid_children of the beams' prefixes, from O(1) trie lookups.
        """
        nodes, level = self._state_nodes(prefix_state, level)
        return torch.ops.sidmlp.valid_mask(nodes, self._tensors, self._meta, level)

    def advance_states(
        self,
        prefix_state: Union[PrefixState, torch.Tensor],
        parents: torch.Tensor,
        tokens: torch.Tensor,
        scores: Optional[torch.Tensor] = None,
        level: Optional[int] = None,
    ) -> PrefixState:
        """States (B, beam) at level + 1 of the slots a beam step kept (parents, tokens each (B, beam)).

        A slot is dead (-1) when its parent beam is dead, its digit names no catalog prefix, or
        (with `scores`, (B, beam) float32) its score is -inf; dead slots' parents/tokens go unchecked.
        """
        nodes, level = self._state_nodes(prefix_state, level)
        parents = _check_tensor(parents, "parents")
        tokens = _check_tensor(tokens, "tokens")
        for tensor, name in ((parents, "parents"), (tokens, "tokens")):
            if tensor.dtype != torch.int64:
                raise InvalidInputType(f"{name} must be int64, got {tensor.dtype}")
            self._check_device(tensor, name)
        if scores is not None:
            scores = _check_tensor(scores, "scores")
            if scores.dtype != torch.float32:
                raise InvalidInputType(f"scores must be float32, got {scores.dtype}")
            self._check_device(scores, "scores")
        new_nodes = torch.ops.sidmlp.advance_states(nodes, parents, tokens, self._tensors, self._meta, level, scores)
        return PrefixState(new_nodes, level + 1)

    def child_logits(
        self,
        hidden: torch.Tensor,
        rows: torch.Tensor,
        out_w: torch.Tensor,
        out_b: torch.Tensor,
        prefix_state: Union[PrefixState, torch.Tensor],
        level: Optional[int] = None,
    ) -> torch.Tensor:
        """Head logits (B, W, K_level) at each live beam's valid children only (0 elsewhere), CPU float32.

        hidden (n, H) post-activation rows, rows (B, W) int64 the hidden row of each beam (-1 for
        dead beams), out_w (K_level, H), out_b (K_level,): one dot product per valid child instead of
        a K-wide GEMM row, which wins deep in the trie where beams have a handful of children.
        """
        nodes, level = self._state_nodes(prefix_state, level)
        for tensor, name in ((hidden, "hidden"), (rows, "rows"), (out_w, "out_w"), (out_b, "out_b")):
            _check_tensor(tensor, name)
            self._check_device(tensor, name)
        return torch.ops.sidmlp.child_logits(hidden, rows, out_w, out_b, nodes, self._tensors, self._meta, level)

    def prefix_state(self, prefixes: torch.Tensor) -> PrefixState:
        """State of (B, W, l) or (N, l) digit prefixes; -1 where not a catalog prefix.

        Digits outside the codebook raise ValueError.
        """
        prefixes = _check_tensor(prefixes, "prefixes")
        if prefixes.dtype != torch.int64:
            raise InvalidInputType(f"prefixes must be int64, got {prefixes.dtype}")
        if prefixes.dim() not in (2, 3):
            raise InvalidInput(f"prefixes must be (N, l) or (B, W, l), got shape {tuple(prefixes.shape)}")
        self._check_device(prefixes, "prefixes")
        level = prefixes.shape[-1]
        if level > self.num_levels:
            raise InvalidInput(f"prefixes must have at most {self.num_levels} digits, got {level}")
        flat = prefixes.reshape(prefixes.shape[:-1].numel(), level)
        nodes = torch.ops.sidmlp.prefix_states(flat, self._tensors, self._meta)
        return PrefixState(nodes.reshape(prefixes.shape[:-1]), level)

    def lookup(self, codes_or_state: Union[torch.Tensor, PrefixState]) -> torch.Tensor:
        """Item ids of full codes (..., L) or of a level-L PrefixState; -1 where none/dead."""
        if isinstance(codes_or_state, PrefixState):
            if codes_or_state.level != self.num_levels:
                raise InvalidInput(
                    f"lookup needs a state at level {self.num_levels}, got level {codes_or_state.level}"
                )
            nodes = _check_tensor(codes_or_state.nodes, "state.nodes")
            if nodes.dtype != torch.int64:
                raise InvalidInputType(f"state nodes must be int64, got {nodes.dtype}")
            self._check_device(nodes, "state")
            return torch.ops.sidmlp.leaf_items(nodes, self._tensors, self._meta)
        codes = _check_tensor(codes_or_state, "codes")
        if codes.dtype != torch.int64:
            raise InvalidInputType(f"codes must be int64, got {codes.dtype}")
        if codes.dim() < 1 or codes.shape[-1] != self.num_levels:
            raise InvalidInput(f"codes must have shape (..., {self.num_levels}), got {tuple(codes.shape)}")
        self._check_device(codes, "codes")
        nodes = torch.ops.sidmlp.prefix_states(
            codes.reshape(codes.shape[:-1].numel(), self.num_levels), self._tensors, self._meta
        )
        return torch.ops.sidmlp.leaf_items(nodes, self._tensors, self._meta).reshape(codes.shape[:-1])

    def finalize(self, state: PrefixState, scores: torch.Tensor, top_n: int) -> GenerationOutput:
        """Final beams -> the top_n distinct catalog items per user (dead beams dropped, padded with -1)."""
        if not isinstance(state, PrefixState):
            raise InvalidInputType(f"state must be a PrefixState, got {type(state).__name__}")
        if state.level != self.num_levels:
            raise InvalidInput(f"finalize needs a state at level {self.num_levels}, got level {state.level}")
        scores = _check_tensor(scores, "scores")
        _check_int(top_n, "top_n", 1)
        if scores.dtype != torch.float32:
            raise InvalidInputType(f"scores must be float32, got {scores.dtype}")
        self._check_device(state.nodes, "state")
        self._check_device(scores, "scores")
        items, codes, out_scores = torch.ops.sidmlp.finalize(
            state.nodes, scores, self._tensors, self._meta, top_n
        )
        return GenerationOutput(items=items, codes=codes, scores=out_scores)


# ---- fake (meta) kernels so the ops trace under torch.compile ---------------

if has_extension():

    @torch.library.register_fake("sidmlp::beam_step")
    def _beam_step_fake(logits, beam_scores, states, index, meta, level, beam_size):
        batch = logits.shape[0]
        scores = logits.new_empty((batch, beam_size), dtype=torch.float32)
        ints = [logits.new_empty((batch, beam_size), dtype=torch.int64) for _ in range(3)]
        return scores, ints[0], ints[1], ints[2]

    @torch.library.register_fake("sidmlp::prefix_states")
    def _prefix_states_fake(prefixes, index, meta):
        return prefixes.new_empty((prefixes.shape[0],))

    @torch.library.register_fake("sidmlp::leaf_items")
    def _leaf_items_fake(states, index, meta):
        return torch.empty_like(states)

    @torch.library.register_fake("sidmlp::valid_mask")
    def _valid_mask_fake(states, index, meta, level):
        k = meta[2 + level]
        return states.new_empty((states.shape[0], states.shape[1], k), dtype=torch.bool)

    @torch.library.register_fake("sidmlp::advance_states")
    def _advance_states_fake(states, parents, tokens, index, meta, level, scores=None):
        return torch.empty_like(parents)

    @torch.library.register_fake("sidmlp::child_logits")
    def _child_logits_fake(hidden, rows, out_w, out_b, states, index, meta, level):
        return hidden.new_empty((states.shape[0], states.shape[1], out_w.shape[0]))

    @torch.library.register_fake("sidmlp::finalize")
    def _finalize_fake(states, scores, index, meta, top_n):
        batch, num_levels = states.shape[0], meta[1]
        return (
            states.new_empty((batch, top_n)),
            states.new_empty((batch, top_n, num_levels)),
            scores.new_empty((batch, top_n)),
        )


# ---- beam search -------------------------------------------------------------

# id(catalog) -> {device: index}; the entry dies with the catalog (weakref.finalize).
_INDEX_CACHE: dict[int, dict[torch.device, ConstrainedIndex]] = {}


def index_for(catalog: SIDCatalog, device: Union[str, torch.device, None] = None) -> ConstrainedIndex:
    """The ConstrainedIndex of `catalog` (built once per catalog object, cached per device)."""
    key = id(catalog)
    per_device = _INDEX_CACHE.get(key)
    if per_device is None:
        index = ConstrainedIndex.from_catalog(catalog)
        per_device = {index.device: index}
        _INDEX_CACHE[key] = per_device
        weakref.finalize(catalog, _INDEX_CACHE.pop, key, None)
    if device is None:
        return per_device[torch.device("cpu")]
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    index = per_device.get(device)
    if index is None:
        # Copied once per device, not per decode call.
        index = per_device[torch.device("cpu")].to(device)
        per_device[device] = index
    return index


class IndexSteps:
    """The index strategy (search.BeamSteps): beams as trie node states, index.beam_step, index.finalize.

    renormalize=False (the logits are log-probabilities over a whole vocabulary, only masked): the
    index gives each beam's valid children (valid_mask) and advances the kept beams' states
    (advance_states); the candidates are pruned as reference.beam_step_reference(renormalize=False) does.
    """

    def __init__(self, index: ConstrainedIndex, step_fn: StepFn, renormalize: bool = True):
        self.index = index
        self.step_fn = step_fn
        self.renormalize = bool(renormalize)
        self.device = index.device
        self.num_levels = index.num_levels
        self.state: Optional[PrefixState] = None  # the beams' trie nodes at the current level

    def start(self, batch_size: int) -> None:
        """One live root beam per user."""
        self.state = self.index.root_state(batch_size)

    def step(self, level: int, prefixes: torch.Tensor, parents: Optional[torch.Tensor], scores: torch.Tensor,
             beam_size: int) -> BeamStep:
        """Scores, parents and tokens (B, beam_size) of digit `level` from one beam_step op."""
        logits = step_logits(self.step_fn, level, prefixes, parents, self.index.codebook_sizes[level])
        if logits.device != self.device:
            logits = logits.to(self.device)
        if logits.dtype not in _LOGIT_DTYPES:
            logits = logits.float()
        if not self.renormalize:
            valid = self.index.valid_mask(self.state) & torch.isfinite(scores).unsqueeze(-1)
            scores, parents, tokens = beam_step_reference(logits, scores, valid, beam_size, renormalize=False)
            self.state = self.index.advance_states(self.state, parents, tokens, scores)
            return scores, parents, tokens
        scores, parents, tokens, self.state = self.index.beam_step(logits, scores, self.state, beam_size)
        return scores, parents, tokens

    def finalize(self, prefixes: torch.Tensor, scores: torch.Tensor, top_n: int) -> GenerationOutput:
        """The top_n distinct catalog items of the final beams' states (the prefixes are not needed)."""
        return self.index.finalize(self.state, scores, top_n)


def constrained_beam_search(
    step_logits_fn: StepFn,
    index: Union[ConstrainedIndex, SIDCatalog],
    batch_size: int,
    beam_size: int = 50,
    top_n: int = 10,
    *,
    device: Union[str, torch.device, None] = None,
    renormalize: bool = True,
    final_logp: Optional[FinalLogp] = None,
) -> GenerationOutput:
    """Catalog-constrained beam search on the extension ops; same contract as beam_search_reference.

    step_logits_fn(level, prefixes (B, W, level), parents (B, W) or None) -> logits (B, W, K_level).
    `index` may be a SIDCatalog: its index is built and cached on `device` (default CPU), unless
    SIDMLP_BACKEND=reference or the extension cannot run there (then the PyTorch reference, logged
    once; see dispatch.select_backend). An index runs on its own device.
    renormalize=False: step_logits_fn returns log-probabilities, only masked (beam_step_reference).
    final_logp (needs a SIDCatalog): one more token scored after the L digits (final_token.py).
    """
    catalog = index if isinstance(index, SIDCatalog) else None
    if catalog is not None:
        device = torch.device("cpu" if device is None else device)
        if select_backend(device, step_fn=True) == "reference":
            steps = ReferenceSteps(step_logits_fn, catalog, renormalize)
        else:
            steps = IndexSteps(index_for(catalog, device), step_logits_fn, renormalize)
    elif not isinstance(index, ConstrainedIndex):
        raise InvalidInputType(f"index must be a ConstrainedIndex or SIDCatalog, got {type(index).__name__}")
    elif device is not None:
        raise InvalidInput("device is for a SIDCatalog; an index runs on its own device (use index.to(device))")
    else:
        steps = IndexSteps(index, step_logits_fn, renormalize)
    if final_logp is not None:
        if catalog is None:
            raise InvalidInput("final_logp needs index to be a SIDCatalog (the final ranking looks items up in it)")
        steps = FinalTokenSteps(steps, final_logp, catalog)
    return beam_search(steps, batch_size, beam_size, top_n)
