"""TokenLayout: how Semantic-ID digits map to token ids of a generative recommender.

TIGER layout (the only one defined so far, ``kind="tiger"``)::

    id 0                                   pad (also the T5 decoder start token)
    ids offset_l .. offset_l + K_l - 1     digit l's codes, offset_0 = 1,
                                           offset_l = 1 + K_0 + ... + K_{l-1}
    id eos_id = 1 + sum(K)                 end of sequence (ends every input and every label)
    ids user_base .. user_base + U - 1     user/bos tokens (user_base = eos_id + 1),
                                           U = num_user_tokens (TIGER hashes user ids
                                           into U buckets; U = 1 is a plain bos token)
    vocab_size = user_base + U

An encoder input (history) is ``[user token, SID tokens of history items (oldest
first)..., EOS]``. Padding is on the right by default (T5's relative positions
make both sides equivalent for the encoder); causal LMs use left padding so the
prompt's last token sits in the last column for every row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..io import ArtifactError, read_meta, write_json
from .catalog import SIDCatalog
from ..errors import InvalidInput, InvalidInputType

FORMAT_VERSION = 1
_FORMAT = "sidmlp-token-layout"
_KINDS = ("tiger",)
PADDING_SIDES = ("right", "left")


@dataclass(frozen=True)
class TokenLayout:
    """Token ids of a TIGER-style vocabulary: pad 0, digit codes, EOS, user tokens."""

    codebook_sizes: tuple[int, ...]
    num_user_tokens: int = 1
    kind: str = "tiger"
    _offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sizes = tuple(self.codebook_sizes) if not isinstance(self.codebook_sizes, int) else None
        if sizes is None or len(sizes) == 0:
            raise InvalidInput(f"codebook_sizes must be a non-empty sequence of ints, got {self.codebook_sizes!r}")
        for k in sizes:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
                raise InvalidInput(f"codebook_sizes must all be ints >= 1, got {sizes}")
        sizes = tuple(int(k) for k in sizes)
        users = self.num_user_tokens
        if isinstance(users, bool) or not isinstance(users, int) or users < 1:
            raise InvalidInput(f"num_user_tokens must be an int >= 1, got {self.num_user_tokens!r}")
        if self.kind not in _KINDS:
            raise InvalidInput(f"kind must be one of {_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "codebook_sizes", sizes)
        offsets = [1]
        for k in sizes[:-1]:
            offsets.append(offsets[-1] + k)
        object.__setattr__(self, "_offsets", tuple(offsets))

    @classmethod
    def for_catalog(cls, catalog: SIDCatalog, num_user_tokens: int = 1) -> "TokenLayout":
        """The TIGER layout matching a catalog's codebook sizes."""
        return cls(tuple(catalog.codebook_sizes), num_user_tokens=num_user_tokens)

    # ---- token ids ---------------------------------------------------------------

    @property
    def pad_id(self) -> int:
        """Padding token id (0); T5 also starts decoding with it."""
        return 0

    @property
    def num_levels(self) -> int:
        """Number of SID digits L."""
        return len(self.codebook_sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Token id of code 0 of each digit."""
        return self._offsets

    @property
    def num_code_tokens(self) -> int:
        """sum(K_l): tokens that name a code."""
        return sum(self.codebook_sizes)

    @property
    def eos_id(self) -> int:
        """End-of-sequence token id."""
        return 1 + self.num_code_tokens

    @property
    def user_base(self) -> int:
        """Token id of user bucket 0 (the bos token when num_user_tokens == 1)."""
        return self.eos_id + 1

    @property
    def vocab_size(self) -> int:
        """Number of token ids the layout uses (a model may have more rows)."""
        return self.user_base + self.num_user_tokens

    def digit_token_range(self, level: int) -> tuple[int, int]:
        """[start, stop) token ids of digit `level`'s codes."""
        if not 0 <= level < self.num_levels:
            raise InvalidInput(f"level must be in [0, {self.num_levels}), got {level}")
        start = self._offsets[level]
        return start, start + self.codebook_sizes[level]

    def user_token(self, user: Optional[int] = None) -> int:
        """Token of a user (hashed into num_user_tokens buckets); None -> bucket 0."""
        if user is None:
            return self.user_base
        if int(user) < 0:
            raise InvalidInput(f"user ids must be non-negative, got {user}")
        return self.user_base + int(user) % self.num_user_tokens

    def codes_to_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """Token ids (..., L) of codes (..., L); ValueError for codes outside their codebook."""
        codes = torch.as_tensor(codes)
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise InvalidInputType(f"codes must hold integers, got dtype {codes.dtype}")
        if codes.dim() == 0 or codes.shape[-1] != self.num_levels:
            raise InvalidInput(f"codes must have shape (..., {self.num_levels}), got {tuple(codes.shape)}")
        sizes = torch.tensor(self.codebook_sizes, device=codes.device)
        bad = (codes < 0) | (codes >= sizes)
        if bad.any():
            pos = bad.nonzero()[0].tolist()
            raise InvalidInput(
                f"codes[{', '.join(map(str, pos))}] = {int(codes[tuple(pos)])} is outside digit "
                f"{pos[-1]}'s codebook [0, {self.codebook_sizes[pos[-1]]})"
            )
        return codes.long() + torch.tensor(self._offsets, device=codes.device)

    def tokens_to_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Codes (..., L) of token ids (..., L); -1 where a token is not a code of its digit."""
        tokens = torch.as_tensor(tokens).long()
        if tokens.dim() == 0 or tokens.shape[-1] != self.num_levels:
            raise InvalidInput(f"tokens must have shape (..., {self.num_levels}), got {tuple(tokens.shape)}")
        codes = tokens - torch.tensor(self._offsets, device=tokens.device)
        sizes = torch.tensor(self.codebook_sizes, device=tokens.device)
        ok = (codes >= 0) & (codes < sizes)
        return torch.where(ok, codes, torch.full_like(codes, -1))

    # ---- validation --------------------------------------------------------------

    def validate_against(self, catalog: SIDCatalog) -> None:
        """ValueError unless the layout's digits and codebook sizes equal the catalog's."""
        if tuple(catalog.codebook_sizes) != self.codebook_sizes:
            raise InvalidInput(
                f"token layout does not match the catalog: layout codebook_sizes {list(self.codebook_sizes)} "
                f"(L={self.num_levels}), catalog codebook_sizes {list(catalog.codebook_sizes)} "
                f"(L={catalog.num_levels})"
            )

    def check_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        vocab_size: Optional[int] = None,
    ) -> None:
        """ValueError for bad (B, T) inputs: shapes, token ids out of range, empty histories."""
        if not isinstance(input_ids, torch.Tensor) or not isinstance(attention_mask, torch.Tensor):
            raise InvalidInputType("input_ids and attention_mask must be torch tensors")
        if input_ids.dim() != 2 or input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
            raise InvalidInput(f"input_ids must be (B, T) with B, T >= 1, got shape {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise InvalidInputType(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise InvalidInput(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        if attention_mask.device != input_ids.device:
            raise InvalidInput(
                f"attention_mask is on {attention_mask.device} but input_ids on {input_ids.device}"
            )
        top = self.vocab_size if vocab_size is None else int(vocab_size)
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= top:
            raise InvalidInput(f"input_ids must be in [0, {top}), got values in [{lo}, {hi}]")
        mask = attention_mask.bool()
        real = mask.sum(dim=1)
        # A non-empty history has at least user + one item's L tokens + EOS.
        short = (real < self.num_levels + 2).nonzero().flatten()
        if short.numel():
            row = int(short[0])
            raise InvalidInput(
                f"input_ids row {row} is an empty history: {int(real[row])} real tokens, need at least "
                f"{self.num_levels + 2} (user token, one item's {self.num_levels} SID tokens, EOS)"
            )
        is_code = (input_ids >= 1) & (input_ids < self.eos_id)
        if not (is_code & mask).any(dim=1).all():
            row = int((~(is_code & mask).any(dim=1)).nonzero()[0])
            raise InvalidInput(f"input_ids row {row} is an empty history: it holds no SID code tokens")

    # ---- encoding ----------------------------------------------------------------

    def item_token_table(self, catalog: SIDCatalog) -> tuple[torch.Tensor, dict[int, int] | np.ndarray]:
        """(catalog rows x L) token table and an item id -> row map (dense array or dict)."""
        self.validate_against(catalog)
        table = self.codes_to_tokens(catalog.codes)
        ids = catalog.item_ids.numpy()
        top = int(ids.max()) + 1
        if top <= 4 * len(ids) + 1024:
            dense = np.full(top, -1, dtype=np.int64)
            dense[ids] = np.arange(len(ids))
            return table, dense
        return table, {int(i): r for r, i in enumerate(ids.tolist())}

    def encode_histories(
        self,
        histories: Sequence[Sequence[int]],
        catalog: SIDCatalog,
        users: Optional[Sequence[int]] = None,
        padding_side: str = "right",
        max_history: Optional[int] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode item histories as [user, SIDs..., EOS] -> input_ids (B, T), attention_mask (B, T)."""
        if padding_side not in PADDING_SIDES:
            raise InvalidInput(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
        if max_history is not None and max_history < 1:
            raise InvalidInput(f"max_history must be None or >= 1, got {max_history}")
        if len(histories) == 0:
            raise InvalidInput("histories must hold at least one history, got 0")
        if users is not None and len(users) != len(histories):
            raise InvalidInput(f"users has {len(users)} entries but histories has {len(histories)}")
        table, index = self.item_token_table(catalog)
        hists = [list(h)[-max_history:] if max_history else list(h) for h in histories]
        lengths = np.fromiter((len(h) for h in hists), dtype=np.int64, count=len(hists))
        if (lengths == 0).any():
            raise InvalidInput(f"histories[{int(np.argmax(lengths == 0))}] is empty; every history needs >= 1 item")
        flat = np.fromiter((i for h in hists for i in h), dtype=np.int64, count=int(lengths.sum()))
        rows = _rows_of(flat, index)
        n, width = len(hists), int(lengths.max())
        # Scatter each history's catalog rows into a left-aligned (n, width) grid.
        starts = np.cumsum(lengths) - lengths
        grid = np.full((n, width), -1, dtype=np.int64)
        row_of = np.repeat(np.arange(n), lengths)
        col_of = np.arange(len(flat)) - np.repeat(starts, lengths)
        grid[row_of, col_of] = rows
        grid_t = torch.from_numpy(grid)
        tokens = table[grid_t.clamp(min=0)]  # (n, width, L)
        tokens = torch.where((grid_t >= 0).unsqueeze(-1), tokens, torch.zeros_like(tokens)).reshape(n, -1)
        num_levels = self.num_levels
        total = 2 + width * num_levels
        ids = torch.zeros(n, total, dtype=torch.long)
        ids[:, 1 : 1 + width * num_levels] = tokens
        if users is None:
            ids[:, 0] = self.user_token(None)
        else:
            ids[:, 0] = torch.tensor([self.user_token(u) for u in users], dtype=torch.long)
        lens_t = torch.from_numpy(lengths)
        ids[torch.arange(n), 1 + lens_t * num_levels] = self.eos_id
        real = 2 + lens_t * num_levels
        mask = torch.arange(total).unsqueeze(0) < real.unsqueeze(1)
        if padding_side == "left":
            ids, mask = to_left_padding(ids, mask)
        return ids, mask.long()


    # ---- serialisation -----------------------------------------------------------

    def to_json(self) -> str:
        """JSON text of this layout (format version + derived ids)."""
        return layout_to_json(self)

    def to_dict(self) -> dict:
        """This layout as a JSON-ready dict (what to_json writes)."""
        return layout_to_dict(self)

    @classmethod
    def from_json(cls, text: str) -> "TokenLayout":
        """Parse and validate a layout from JSON text."""
        return layout_from_json(text)

    def save(self, path: str | Path) -> None:
        """Write the layout JSON to a file (a directory gets layout.json)."""
        path = Path(path)
        if path.is_dir():
            path = path / "layout.json"
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "TokenLayout":
        """Read a layout JSON file (a directory means its layout.json)."""
        path = Path(path)
        if path.is_dir():
            path = path / "layout.json"
        if not path.is_file():
            raise FileNotFoundError(f"no token layout at {path}")
        blob = read_meta(path, _FORMAT, FORMAT_VERSION, required=("kind", "codebook_sizes", "num_user_tokens"))
        try:
            return layout_from_dict(blob)
        except ValueError as err:
            raise ArtifactError(path, str(err)) from err



def _rows_of(items: np.ndarray, index: dict[int, int] | np.ndarray) -> np.ndarray:
    """Catalog rows of item ids; ValueError naming the first unknown item."""
    if isinstance(index, np.ndarray):
        ok = (items >= 0) & (items < len(index))
        rows = np.where(ok, index[np.clip(items, 0, len(index) - 1)], -1)
    else:
        rows = np.fromiter((index.get(int(i), -1) for i in items), dtype=np.int64, count=len(items))
    if (rows < 0).any():
        bad = int(items[np.argmax(rows < 0)])
        raise InvalidInput(f"histories contain item {bad}, which is not in the catalog")
    return rows


def to_left_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-pad rows on the left (real tokens, in order, end in the last column); any padding in."""
    # A stable sort on the mask moves pads first and keeps the real tokens' order.
    order = torch.sort(attention_mask.bool().to(torch.uint8), dim=1, stable=True).indices
    return torch.gather(input_ids, 1, order), torch.gather(attention_mask, 1, order)


def to_right_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-pad rows on the right (real tokens, in order, start in column 0); any padding in."""
    order = torch.sort((~attention_mask.bool()).to(torch.uint8), dim=1, stable=True).indices
    return torch.gather(input_ids, 1, order), torch.gather(attention_mask, 1, order)


def layout_to_json(layout: TokenLayout) -> str:
    """Serialise a layout (with format version and derived ids, for readers)."""
    return json.dumps(layout_to_dict(layout), indent=2)


def layout_to_dict(layout: TokenLayout) -> dict:
    """The layout as a JSON-ready dict (format version, sizes, and derived ids checked on load)."""
    return {
        "format": _FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": layout.kind,
        "codebook_sizes": list(layout.codebook_sizes),
        "num_user_tokens": layout.num_user_tokens,
        # Derived, written for humans and other tools; checked on load.
        "pad_id": layout.pad_id,
        "offsets": list(layout.offsets),
        "eos_id": layout.eos_id,
        "user_base": layout.user_base,
        "vocab_size": layout.vocab_size,
    }


def layout_from_json(text: str) -> TokenLayout:
    """Parse and validate a layout written by layout_to_json."""
    try:
        blob = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInput(f"corrupted token layout JSON: {err}") from err
    return layout_from_dict(blob)


def layout_from_dict(blob: dict) -> TokenLayout:
    """Validate a parsed layout (format, version, derived ids) and build it."""
    if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else None
        raise InvalidInput(f"not a sidmlp token layout (format={found!r})")
    if blob.get("format_version") != FORMAT_VERSION:
        raise InvalidInput(
            f"token layout has format_version {blob.get('format_version')!r}, this version reads {FORMAT_VERSION}"
        )
    try:
        layout = TokenLayout(
            tuple(blob["codebook_sizes"]), num_user_tokens=int(blob["num_user_tokens"]), kind=blob["kind"]
        )
    except KeyError as err:
        raise InvalidInput(f"token layout JSON lacks field {err}") from err
    for name in ("pad_id", "eos_id", "user_base", "vocab_size"):
        if name in blob and blob[name] != getattr(layout, name):
            raise InvalidInput(f"token layout JSON says {name}={blob[name]} but its sizes give {getattr(layout, name)}")
    if "offsets" in blob and list(blob["offsets"]) != list(layout.offsets):
        raise InvalidInput(f"token layout JSON says offsets={blob['offsets']} but its sizes give {list(layout.offsets)}")
    return layout
