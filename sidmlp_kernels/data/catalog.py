"""SIDCatalog: the items of a catalog and their Semantic IDs, with a prefix index.

A catalog row is one Semantic ID. Most catalogs name each item by its own SID (one item per
row). `SIDCatalog.with_shared_sids` also takes catalogs where several items share one SID (as
MiniOneRec and RQ-VAE indexes without a dedup digit keep them): the rows are the distinct SIDs,
each named by its smallest item id (its representative, what decoding returns), and the
catalog keeps every SID's items so that `expand` turns ranked representatives into every item
of those SIDs (docs/architecture.md, "Decoding semantics").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..io import ArtifactError, load_tensors, read_meta, save_tensors, write_meta
from ..errors import InvalidInput, InvalidInputType

FORMAT_VERSION = 1
_FORMAT = "sidmlp-catalog"


def _as_long_tensor(value, name: str, ndim: int) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu")
    else:
        tensor = torch.as_tensor(value)
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.is_complex():
        raise InvalidInputType(f"{name} must hold integers, got dtype {tensor.dtype}")
    if tensor.dim() != ndim:
        raise InvalidInput(f"{name} must be {ndim}-D, got shape {tuple(tensor.shape)}")
    return tensor.to(torch.long).contiguous()


class SIDCatalog:
    """Items and their L-digit Semantic IDs; answers 'which digits may follow this prefix'.

    Prefixes are packed into integer keys in mixed radix, so the children of a
    prefix at level l are one contiguous range of the sorted level-(l+1) keys.
    """

    def __init__(self, item_ids: torch.Tensor, codes: torch.Tensor, codebook_sizes: Sequence[int]):
        item_ids = _as_long_tensor(item_ids, "item_ids", 1)
        codes = _as_long_tensor(codes, "codes", 2)
        sizes = tuple(int(k) for k in codebook_sizes)
        if codes.shape[0] != item_ids.shape[0]:
            raise InvalidInput(
                f"codes has {codes.shape[0]} rows but item_ids has {item_ids.shape[0]} items"
            )
        if codes.shape[0] == 0:
            raise InvalidInput("codes must describe at least one item, got 0 rows")
        if len(sizes) != codes.shape[1]:
            raise InvalidInput(
                f"codebook_sizes has {len(sizes)} entries but codes have {codes.shape[1]} digits"
            )
        if any(k < 1 for k in sizes):
            raise InvalidInput(f"codebook_sizes must all be >= 1, got {sizes}")
        if (item_ids < 0).any():
            raise InvalidInput(f"item_ids must be non-negative, got min {int(item_ids.min())}")
        if item_ids.unique().numel() != item_ids.numel():
            raise InvalidInput("item_ids must be unique")
        if (codes < 0).any():
            raise InvalidInput(f"codes must be non-negative, got min {int(codes.min())}")
        for level, k in enumerate(sizes):
            top = int(codes[:, level].max())
            if top >= k:
                raise InvalidInput(
                    f"codes at digit {level} must be < codebook size {k}, got {top}"
                )
        radix = 1
        for k in sizes:
            radix *= k
        if radix >= 2**62:
            raise InvalidInput(f"codebook_sizes {sizes} are too large to pack into 64-bit keys")
        self.item_ids = item_ids
        self.codes = codes
        self.codebook_sizes = sizes
        # level_keys[l]: sorted unique packed prefixes of length l (l = 0..L).
        self._level_keys = [torch.zeros(1, dtype=torch.long)]
        for level in range(1, self.num_levels + 1):
            self._level_keys.append(torch.unique(self.pack(codes[:, :level])))
        full = self.pack(codes)
        if self._level_keys[-1].numel() != full.numel():
            keys, counts = torch.unique(full, return_counts=True)
            dup = keys[counts > 1][0]
            rows = (full == dup).nonzero().flatten()[:2].tolist()
            raise InvalidInput(
                f"codes must be unique per item: items {item_ids[rows].tolist()} share code "
                f"{codes[rows[0]].tolist()}"
            )
        order = torch.argsort(full)
        self._sorted_full_keys = full[order]
        self._sorted_items = item_ids[order]
        self._item_to_row = {int(i): r for r, i in enumerate(item_ids.tolist())}
        # Shared SIDs (with_shared_sids): row r's items are members[member_ptr[r]:member_ptr[r + 1]],
        # in ascending item id (the first is item_ids[r]). None: one item per row.
        self.members: torch.Tensor | None = None
        self.member_ptr: torch.Tensor | None = None

    @classmethod
    def with_shared_sids(cls, item_ids, codes, codebook_sizes: Sequence[int] | int | None = None) -> "SIDCatalog":
        """A catalog where several items may share one SID: one row per distinct SID (in order of first
        appearance), named by its smallest item id, every item kept for `expand`.

        Without shared SIDs it is the plain catalog (`from_codes`), so unique catalogs behave as before.
        """
        item_ids = _as_long_tensor(item_ids, "item_ids", 1)
        codes = _as_long_tensor(codes, "codes", 2)
        if codes.shape[0] != item_ids.shape[0]:
            raise InvalidInput(f"codes has {codes.shape[0]} rows but item_ids has {item_ids.shape[0]} items")
        if codes.shape[0] == 0:
            raise InvalidInput("codes must describe at least one item, got 0 rows")
        if item_ids.unique().numel() != item_ids.numel():
            raise InvalidInput("item_ids must be unique")
        uniq, first_rows, inverse = _unique_rows(codes)
        if uniq.shape[0] == codes.shape[0]:
            return cls.from_codes(item_ids, codes, codebook_sizes)
        # Members of each SID row, sorted by (row, item id).
        order = torch.from_numpy(np.lexsort((item_ids.numpy(), inverse.numpy())))
        members = item_ids[order]
        counts = torch.bincount(inverse, minlength=uniq.shape[0])
        ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
        catalog = cls.from_codes(members[ptr[:-1]], codes[first_rows], codebook_sizes)
        catalog._set_members(members, ptr)
        return catalog

    def _set_members(self, members: torch.Tensor, ptr: torch.Tensor) -> None:
        """Attach every row's items (CSR: members sorted by (row, item id), ptr (rows + 1,)); validated."""
        members, ptr = _as_long_tensor(members, "members", 1), _as_long_tensor(ptr, "member_ptr", 1)
        rows = self.num_items
        if ptr.numel() != rows + 1 or int(ptr[0]) != 0 or int(ptr[-1]) != members.numel() or \
                bool((ptr[1:] <= ptr[:-1]).any()):
            raise InvalidInput(f"member_ptr must rise strictly from 0 to {members.numel()} over {rows + 1} entries")
        if not torch.equal(members[ptr[:-1]], self.item_ids):
            raise InvalidInput("each SID's first member must be its representative item (item_ids)")
        if members.unique().numel() != members.numel() or (members < 0).any():
            raise InvalidInput("members must be unique non-negative item ids")
        row_of = torch.repeat_interleave(torch.arange(rows), ptr[1:] - ptr[:-1])
        ahead = (row_of[1:] == row_of[:-1]) & (members[1:] <= members[:-1])
        if bool(ahead.any()):
            raise InvalidInput("members must be sorted by item id within each SID")
        self.members, self.member_ptr = members, ptr
        self._item_to_row = {int(i): int(r) for i, r in zip(members.tolist(), row_of.tolist())}

    @property
    def shares_sids(self) -> bool:
        """Whether some SID names several items (with_shared_sids)."""
        return self.members is not None

    @property
    def num_all_items(self) -> int:
        """Number of items, counting every item of a shared SID (num_items counts SIDs)."""
        return int(self.members.numel()) if self.members is not None else self.num_items

    @property
    def all_item_ids(self) -> torch.Tensor:
        """Every item id (the members of shared SIDs included)."""
        return self.members if self.members is not None else self.item_ids

    def expand(self, result):
        """Ranked SIDs -> every item of those SIDs: each SID's items in ascending item id, at its rank and score.

        `result` is a GenerationOutput (items (B, N) = representatives, codes, scores); the output has
        (B, M) slots, M = the most items any row's N SIDs hold (empty slots: item -1, codes -1, -inf).
        A catalog without shared SIDs returns `result` itself.
        """
        if self.members is None:
            return result
        items, codes, scores = result.items, result.codes, result.scores
        batch, n = items.shape
        reps = items.reshape(-1).cpu()
        alive = reps >= 0
        rows = torch.full_like(reps, -1)
        if bool(alive.any()):
            rows[alive] = torch.tensor([self._item_to_row[int(i)] for i in reps[alive].tolist()], dtype=torch.long)
        counts = torch.where(alive, self.member_ptr[rows.clamp(min=0) + 1] - self.member_ptr[rows.clamp(min=0)],
                             torch.zeros_like(rows))
        per_row = counts.view(batch, n).sum(dim=1)
        width = max(int(per_row.max()), 1)
        slot_src = torch.repeat_interleave(torch.arange(batch * n), counts)  # which (user, rank) each item came from
        start = torch.cumsum(counts, 0) - counts
        within = torch.arange(slot_src.numel()) - start[slot_src]
        member = self.members[self.member_ptr[rows[slot_src]] + within]
        user = slot_src // n
        col = torch.arange(slot_src.numel()) - (torch.cumsum(per_row, 0) - per_row)[user]
        out_items = torch.full((batch, width), -1, dtype=torch.long)
        out_scores = torch.full((batch, width), float("-inf"), dtype=scores.dtype)
        out_codes = torch.full((batch, width, codes.shape[2]), -1, dtype=codes.dtype)
        out_items[user, col] = member
        out_scores[user, col] = scores.reshape(-1).cpu()[slot_src]
        out_codes[user, col] = codes.reshape(batch * n, -1).cpu()[slot_src]
        device = items.device
        return dataclasses.replace(result, items=out_items.to(device), codes=out_codes.to(device),
                                   scores=out_scores.to(device))

    @classmethod
    def from_codes(
        cls,
        item_ids,
        codes,
        codebook_sizes: Sequence[int] | int | None = None,
    ) -> "SIDCatalog":
        """Build a catalog; codebook sizes default to max code + 1 per digit."""
        codes_t = _as_long_tensor(codes, "codes", 2)
        if codebook_sizes is None:
            if codes_t.shape[0] == 0:
                raise InvalidInput("codes must describe at least one item, got 0 rows")
            codebook_sizes = [int(c) + 1 for c in codes_t.max(dim=0).values]
        elif isinstance(codebook_sizes, int):
            codebook_sizes = [codebook_sizes] * codes_t.shape[1]
        return cls(item_ids, codes_t, codebook_sizes)

    @property
    def num_items(self) -> int:
        """Number of items in the catalog."""
        return int(self.item_ids.numel())

    @property
    def num_levels(self) -> int:
        """Number of SID digits L."""
        return int(self.codes.shape[1])

    def pack(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Pack (N, l) prefixes into integer keys (mixed radix over the codebook sizes)."""
        keys = torch.zeros(prefixes.shape[0], dtype=torch.long, device=prefixes.device)
        for level in range(prefixes.shape[1]):
            keys = keys * self.codebook_sizes[level] + prefixes[:, level].long()
        return keys

    def num_prefixes(self, level: int) -> int:
        """Number of distinct valid prefixes of length `level`."""
        return int(self._level_keys[level].numel())

    def valid_children(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Bool mask (N, K_l) of digits that extend each (N, l) prefix to a catalog prefix.

        Prefixes that are themselves not in the catalog get an all-False row.
        """
        prefixes = _as_long_tensor(prefixes, "prefixes", 2)
        level = prefixes.shape[1]
        if level >= self.num_levels:
            raise InvalidInput(
                f"prefixes must have fewer than {self.num_levels} digits, got {level}"
            )
        k = self.codebook_sizes[level]
        n = prefixes.shape[0]
        mask = torch.zeros(n, k, dtype=torch.bool)
        if n == 0:
            return mask
        in_range = torch.ones(n, dtype=torch.bool)
        for j in range(level):
            in_range &= (prefixes[:, j] >= 0) & (prefixes[:, j] < self.codebook_sizes[j])
        parent = self.pack(prefixes.clamp(min=0)) * k
        child_keys = self._level_keys[level + 1]
        start = torch.searchsorted(child_keys, parent)
        end = torch.searchsorted(child_keys, parent + k)
        counts = torch.where(in_range, end - start, torch.zeros_like(start))
        rows = torch.repeat_interleave(torch.arange(n), counts)
        offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        positions = torch.repeat_interleave(start, counts) + offsets
        mask[rows, child_keys[positions] - torch.repeat_interleave(parent, counts)] = True
        return mask

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Item id of each full (N, L) code, -1 where the code names no item."""
        codes = _as_long_tensor(codes, "codes", 2)
        if codes.shape[1] != self.num_levels:
            raise InvalidInput(f"codes must have {self.num_levels} digits, got {codes.shape[1]}")
        in_range = torch.ones(codes.shape[0], dtype=torch.bool)
        for j, k in enumerate(self.codebook_sizes):
            in_range &= (codes[:, j] >= 0) & (codes[:, j] < k)
        keys = self.pack(codes.clamp(min=0))
        pos = torch.searchsorted(self._sorted_full_keys, keys).clamp(max=self.num_items - 1)
        found = in_range & (self._sorted_full_keys[pos] == keys)
        return torch.where(found, self._sorted_items[pos], torch.full_like(keys, -1))

    def codes_of(self, item_ids) -> torch.Tensor:
        """Codes (N, L) of the given item ids (any member of a shared SID); ValueError for unknown items."""
        ids = _as_long_tensor(item_ids, "item_ids", 1)
        rows = []
        for i in ids.tolist():
            if i not in self._item_to_row:
                raise InvalidInput(f"item_ids contains {i}, which is not in the catalog")
            rows.append(self._item_to_row[i])
        return self.codes[torch.tensor(rows, dtype=torch.long)]

    def fingerprint(self) -> str:
        """A short hash of the codebook sizes, item ids and codes: artifacts built from this catalog record it."""
        h = hashlib.sha256()
        h.update(json.dumps(list(self.codebook_sizes)).encode())
        h.update(self.item_ids.numpy().tobytes())
        h.update(self.codes.numpy().tobytes())
        if self.members is not None:  # unique catalogs hash as they always did
            h.update(self.members.numpy().tobytes())
            h.update(self.member_ptr.numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, directory) -> None:
        """Write catalog.safetensors + catalog.json into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"item_ids": self.item_ids, "codes": self.codes}
        meta = {"codebook_sizes": list(self.codebook_sizes), "num_items": self.num_items,
                "fingerprint": self.fingerprint()}
        if self.members is not None:
            tensors.update(members=self.members, member_ptr=self.member_ptr)
            meta["num_all_items"] = self.num_all_items
        save_tensors(tensors, directory / "catalog.safetensors")
        write_meta(directory / "catalog.json", _FORMAT, FORMAT_VERSION, meta)

    @classmethod
    def load(cls, directory) -> "SIDCatalog":
        """Load and validate a catalog written by `save` (in `directory`, or in `directory`/catalog as an
        imported teacher directory holds it)."""
        directory = Path(directory)
        if not (directory / "catalog.json").is_file() and (directory / "catalog" / "catalog.json").is_file():
            directory = directory / "catalog"
        meta_path = directory / "catalog.json"
        data_path = directory / "catalog.safetensors"
        if not meta_path.is_file() and not data_path.is_file():
            raise FileNotFoundError(f"no catalog in {directory}: expected catalog.json and catalog.safetensors")
        meta = read_meta(meta_path, _FORMAT, FORMAT_VERSION, required=("codebook_sizes", "num_items"))
        shared = "num_all_items" in meta
        tensors = load_tensors(data_path, expected=("item_ids", "codes") + (("members", "member_ptr") if shared else ()))
        try:
            catalog = cls(tensors["item_ids"], tensors["codes"], meta["codebook_sizes"])
            if shared:
                catalog._set_members(tensors["members"], tensors["member_ptr"])
        except (TypeError, ValueError) as err:
            raise ArtifactError(data_path, f"does not describe a valid catalog ({err})") from err
        if catalog.num_items != meta["num_items"]:
            raise ArtifactError(data_path, f"holds {catalog.num_items} items but {meta_path.name} says {meta['num_items']}")
        if "fingerprint" in meta and catalog.fingerprint() != meta["fingerprint"]:
            raise ArtifactError(data_path, f"does not match the fingerprint {meta['fingerprint']} in {meta_path.name}")
        return catalog

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SIDCatalog):
            return NotImplemented
        same_members = (self.members is None) == (other.members is None) and (
            self.members is None or (torch.equal(self.members, other.members)
                                     and torch.equal(self.member_ptr, other.member_ptr)))
        return (
            self.codebook_sizes == other.codebook_sizes
            and torch.equal(self.item_ids, other.item_ids)
            and torch.equal(self.codes, other.codes)
            and same_members
        )

    def __repr__(self) -> str:
        shared = f", num_all_items={self.num_all_items}" if self.members is not None else ""
        return f"SIDCatalog(num_items={self.num_items}{shared}, codebook_sizes={self.codebook_sizes})"


def _unique_rows(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct rows of (N, L) codes in order of first appearance: (rows, first index of each, inverse (N,))."""
    _, inverse = torch.unique(codes, dim=0, return_inverse=True)
    n = codes.shape[0]
    first = torch.full((int(inverse.max()) + 1,), n, dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(n), reduce="amin")
    # Renumber the distinct rows by first appearance.
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    return codes[first[order]], first[order], rank[inverse]
