"""TokenLayout: how Semantic-ID digits map to token ids of a generative recommender.

A layout names, for each digit l, the token id of its code 0 (``offsets[l]``; code c of digit l
is token ``offsets[l] + c``, so each digit's K_l codes are contiguous), the pad id, the EOS id,
the decoder-start id (encoder-decoders), a range of U user tokens ``[user_base, user_base + U)``
anywhere in the vocabulary (U = 0: no user token), and whether encoder inputs end with EOS.
Digit ranges and the user range must not overlap; pad and EOS lie outside them (they may be
the same id). Presets (``kind``), K_l the codebook sizes:

``"tiger"`` (this package's own teachers; the default)::

    id 0                                   pad (also the T5 decoder start token)
    ids offset_l .. offset_l + K_l - 1     digit l's codes, offset_l = 1 + K_0 + ... + K_{l-1}
    id eos_id = 1 + sum(K)                 end of sequence (ends every input and every label)
    ids user_base .. user_base + U - 1     user/bos tokens (user_base = eos_id + 1),
                                           U = num_user_tokens (TIGER hashes user ids
                                           into U buckets; U = 1 is a plain bos token)
    vocab_size = user_base + U

``"sidmlp-official"`` (ztguo715/SID-MLP, genrec/models/TIGER/tokenizer.py): pad 0, the same
digit offsets, user tokens from ``1 + sum(K)``, EOS = ``1 + sum(K) + U`` (after the user
tokens), decoder start 0, vocab_size = EOS + 1.

``"tiger-xlt"`` (XiaoLongtaoo/TIGER, model/dataset.py): offsets ``1 + 256 l`` (a fixed stride of
256, so K_l <= 256), pad = EOS = decoder start = 0, no user token, and inputs carry no EOS
(a history is just its SID tokens).

``"custom"``: every id given explicitly (offsets, pad_id, eos_id, user_base when U > 0,
decoder_start_id defaults to pad_id, input_eos to True).

``"tokenizer"`` (a causal LLM with SID tokens added to its tokenizer: MiniOneRec, LC-Rec): each
code's token id given per digit (``token_ids[l][c]``, any ids: ``add_tokens(sorted(...))`` orders
them as strings, so they are neither contiguous in code order nor ``offset + code``), pad_id and
eos_id (they may be one id); no user token, no EOS in inputs, decoder start = pad. Its inputs are
text prompts (teacher/llm.py builds them): any tokens of the vocabulary, SID tokens or not.

An encoder input (history) is ``[user token (if U > 0), SID tokens of history items (oldest
first)..., EOS (if input_eos)]``. Padding is on the right by default (T5's relative positions
make both sides equivalent for the encoder); causal LMs use left padding so the prompt's last
token sits in the last column for every row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..io import ArtifactError, read_meta, write_json
from .catalog import SIDCatalog
from ..errors import InvalidInput, InvalidInputType

FORMAT_VERSION = 1
_FORMAT = "sidmlp-token-layout"
_KINDS = ("tiger", "sidmlp-official", "tiger-xlt", "custom", "tokenizer")
PADDING_SIDES = ("right", "left")
# The ids a layout can be given explicitly (kind "custom") and that presets derive.
_ID_FIELDS = ("offsets", "pad_id", "eos_id", "user_base", "decoder_start_id", "input_eos")
_XLT_STRIDE = 256  # XiaoLongtaoo/TIGER: token = c + 256 l + 1 whatever the codebook sizes


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _preset_ids(kind: str, sizes: tuple[int, ...], users: int) -> dict:
    """The ids a preset kind derives from codebook sizes and the number of user tokens."""
    cum = [1]
    for k in sizes[:-1]:
        cum.append(cum[-1] + k)
    total = sum(sizes)
    if kind == "tiger":
        return dict(offsets=tuple(cum), pad_id=0, eos_id=1 + total, user_base=2 + total,
                    decoder_start_id=0, input_eos=True)
    if kind == "sidmlp-official":
        return dict(offsets=tuple(cum), pad_id=0, eos_id=1 + total + users, user_base=1 + total,
                    decoder_start_id=0, input_eos=True)
    # tiger-xlt
    return dict(offsets=tuple(1 + _XLT_STRIDE * level for level in range(len(sizes))), pad_id=0, eos_id=0,
                user_base=None, decoder_start_id=0, input_eos=False)


# Each kind's default number of user tokens, which is also its least (tiger-xlt has none at all).
_USERS = {"tiger": 1, "sidmlp-official": 1, "tiger-xlt": 0, "custom": 0, "tokenizer": 0}


@dataclass(frozen=True)
class TokenLayout:
    """Token ids of a SID vocabulary: per-digit code ranges, pad, EOS, decoder start, user tokens.

    ``TokenLayout(codebook_sizes)`` is the TIGER layout; ``kind`` picks another preset, and
    ``kind="custom"`` takes every id explicitly (see the module docstring).
    """

    codebook_sizes: tuple[int, ...]
    num_user_tokens: Optional[int] = None
    kind: str = "tiger"
    offsets: Optional[tuple[int, ...]] = None
    pad_id: Optional[int] = None
    eos_id: Optional[int] = None
    user_base: Optional[int] = None
    decoder_start_id: Optional[int] = None
    input_eos: Optional[bool] = None
    token_ids: Optional[tuple[tuple[int, ...], ...]] = None  # kind "tokenizer": token_ids[l][c]

    def __post_init__(self) -> None:
        sizes = tuple(self.codebook_sizes) if not isinstance(self.codebook_sizes, int) else None
        if sizes is None or len(sizes) == 0:
            raise InvalidInput(f"codebook_sizes must be a non-empty sequence of ints, got {self.codebook_sizes!r}")
        for k in sizes:
            if not _is_int(k) or int(k) < 1:
                raise InvalidInput(f"codebook_sizes must all be ints >= 1, got {sizes}")
        sizes = tuple(int(k) for k in sizes)
        if self.kind not in _KINDS:
            raise InvalidInput(f"kind must be one of {_KINDS}, got {self.kind!r}")
        users = _USERS[self.kind] if self.num_user_tokens is None else self.num_user_tokens
        least = _USERS[self.kind]
        no_users = self.kind in ("tiger-xlt", "tokenizer")
        if not _is_int(users) or users < least or (no_users and users != 0):
            need = "0 (it has no user tokens)" if no_users else f"an int >= {least}"
            raise InvalidInput(f"num_user_tokens must be {need} for kind {self.kind!r}, got {self.num_user_tokens!r}")
        users = int(users)
        if self.kind == "tiger-xlt" and max(sizes) > _XLT_STRIDE:
            raise InvalidInput(f"kind 'tiger-xlt' puts digits {_XLT_STRIDE} ids apart: codebook_sizes must be "
                               f"<= {_XLT_STRIDE}, got {list(sizes)}")
        if (self.token_ids is not None) != (self.kind == "tokenizer"):
            raise InvalidInput("token_ids go with kind 'tokenizer' (and it needs them): got kind "
                               f"{self.kind!r} with token_ids={'given' if self.token_ids is not None else None}")
        given = {name: getattr(self, name) for name in _ID_FIELDS if getattr(self, name) is not None}
        if self.kind == "tokenizer":
            ids = self._tokenizer_ids(sizes, given)
        elif self.kind == "custom":
            ids = self._custom_ids(sizes, users, given)
        else:
            ids = _preset_ids(self.kind, sizes, users)
        for name, value in given.items():
            value = tuple(int(v) for v in value) if name == "offsets" else value
            if value != ids[name]:
                raise InvalidInput(f"kind {self.kind!r} has {name}={ids[name]!r} for these sizes, got {name}="
                                   f"{value!r}; pass kind='custom' to give other ids")
        if users == 0:
            ids["user_base"] = None
        object.__setattr__(self, "codebook_sizes", sizes)
        object.__setattr__(self, "num_user_tokens", users)
        for name, value in ids.items():
            object.__setattr__(self, name, value)
        self._check_ranges()

    def _tokenizer_ids(self, sizes: tuple[int, ...], given: dict) -> dict:
        """Validated ids of a tokenizer layout; stores token_ids as a tuple of int tuples."""
        table = self.token_ids
        if isinstance(table, (int, str)) or len(table) != len(sizes):
            raise InvalidInput(f"token_ids must hold one sequence per digit ({len(sizes)}), got {len(table)!r}")
        rows = []
        for level, (row, k) in enumerate(zip(table, sizes)):
            row = tuple(row)
            if len(row) != k or not all(_is_int(t) for t in row):
                raise InvalidInput(f"token_ids[{level}] must hold {k} int token ids (codebook size), got {len(row)}")
            rows.append(tuple(int(t) for t in row))
        object.__setattr__(self, "token_ids", tuple(rows))
        for name in ("pad_id", "eos_id"):
            if not _is_int(given.get(name)):
                raise InvalidInput(f"kind 'tokenizer' needs {name} (an int token id), got {given.get(name)!r}")
        for name in ("offsets", "user_base"):
            if name in given:
                raise InvalidInput(f"kind 'tokenizer' takes token_ids, not {name}")
        if given.get("input_eos", False) is not False:
            raise InvalidInput("kind 'tokenizer' inputs are prompts: input_eos must be False")
        pad = int(given["pad_id"])
        start = given.get("decoder_start_id", pad)
        return dict(offsets=None, pad_id=pad, eos_id=int(given["eos_id"]), user_base=None,
                    decoder_start_id=int(start), input_eos=False)

    @staticmethod
    def _custom_ids(sizes: tuple[int, ...], users: int, given: dict) -> dict:
        """Validated explicit ids of a custom layout (decoder start defaults to pad, input_eos to True)."""
        needed = ["offsets", "pad_id", "eos_id"] + (["user_base"] if users else [])
        missing = [name for name in needed if name not in given]
        if missing:
            raise InvalidInput(f"kind 'custom' needs {', '.join(missing)} (the layout's explicit token ids)")
        offsets = given["offsets"]
        if isinstance(offsets, (int, str)) or len(offsets) != len(sizes) or not all(_is_int(o) for o in offsets):
            raise InvalidInput(f"offsets must hold one int per digit ({len(sizes)}), got {offsets!r}")
        ids = dict(offsets=tuple(int(o) for o in offsets), input_eos=given.get("input_eos", True),
                   user_base=given.get("user_base"))
        for name in ("pad_id", "eos_id", "decoder_start_id", "user_base"):
            value = given.get(name, given["pad_id"] if name == "decoder_start_id" else None)
            if value is None and name == "user_base":
                continue
            if not _is_int(value):
                raise InvalidInput(f"{name} must be an int token id, got {value!r}")
            ids[name] = int(value)
        if not isinstance(ids["input_eos"], bool):
            raise InvalidInputType(f"input_eos must be a bool, got {ids['input_eos']!r}")
        return ids

    def _check_ranges(self) -> None:
        """ValueError for negative ids or overlapping digit / user / special-token ranges."""
        if self.token_ids is not None:
            self._check_table()
            return
        ranges = [(f"digit {level}'s codes", *self.digit_token_range(level)) for level in range(self.num_levels)]
        if self.num_user_tokens:
            ranges.append(("the user tokens", self.user_base, self.user_base + self.num_user_tokens))
        specials = [("pad_id", self.pad_id), ("eos_id", self.eos_id), ("decoder_start_id", self.decoder_start_id)]
        for name, start, _ in ranges:
            if start < 0:
                raise InvalidInput(f"token layout: {name} start at {start}; token ids must be >= 0")
        for name, value in specials:
            if value < 0:
                raise InvalidInput(f"token layout: {name} is {value}; token ids must be >= 0")
        for i, (name_a, lo_a, hi_a) in enumerate(ranges):
            for name_b, lo_b, hi_b in ranges[i + 1:]:
                if lo_a < hi_b and lo_b < hi_a:
                    raise InvalidInput(f"token layout: {name_a} [{lo_a}, {hi_a}) overlap {name_b} [{lo_b}, {hi_b})")
        for name, value in specials[:2]:
            for range_name, lo, hi in ranges:
                if lo <= value < hi:
                    raise InvalidInput(f"token layout: {name} {value} lies inside {range_name} [{lo}, {hi})")

    def _check_table(self) -> None:
        """ValueError for negative, repeated or shared token ids of a tokenizer layout, or pad/EOS among them."""
        owner: dict[int, tuple[int, int]] = {}
        for level, row in enumerate(self.token_ids):
            for code, tok in enumerate(row):
                if tok < 0:
                    raise InvalidInput(f"token layout: token_ids[{level}][{code}] is {tok}; token ids must be >= 0")
                if tok in owner:
                    lv, c = owner[tok]
                    raise InvalidInput(f"token layout: token {tok} names both digit {lv} code {c} and digit {level} "
                                       f"code {code}")
                owner[tok] = (level, code)
        for name in ("pad_id", "eos_id", "decoder_start_id"):
            value = getattr(self, name)
            if value < 0:
                raise InvalidInput(f"token layout: {name} is {value}; token ids must be >= 0")
            if name != "decoder_start_id" and value in owner:
                raise InvalidInput(f"token layout: {name} {value} is digit {owner[value][0]}'s code {owner[value][1]}")

    @classmethod
    def for_catalog(cls, catalog: SIDCatalog, num_user_tokens: Optional[int] = None,
                    kind: str = "tiger") -> "TokenLayout":
        """The `kind` preset layout (TIGER by default) matching a catalog's codebook sizes."""
        return cls(tuple(catalog.codebook_sizes), num_user_tokens=num_user_tokens, kind=kind)

    # ---- token ids (offsets, pad_id, eos_id, user_base, decoder_start_id are fields) ----

    @property
    def num_levels(self) -> int:
        """Number of SID digits L."""
        return len(self.codebook_sizes)

    @property
    def num_code_tokens(self) -> int:
        """sum(K_l): tokens that name a code."""
        return sum(self.codebook_sizes)

    @property
    def vocab_size(self) -> int:
        """Number of token ids the layout uses: 1 + its largest id (a model may have more rows)."""
        tops = [self.pad_id, self.eos_id, self.decoder_start_id]
        if self.token_ids is not None:
            tops += [max(row) for row in self.token_ids]
            return 1 + max(tops)
        tops += [off + k - 1 for off, k in zip(self.offsets, self.codebook_sizes)]
        if self.num_user_tokens:
            tops.append(self.user_base + self.num_user_tokens - 1)
        return 1 + max(tops)

    @property
    def input_length_extra(self) -> int:
        """Tokens an encoder input holds besides its SIDs: the user token (if any) and EOS (if input_eos)."""
        return int(self.num_user_tokens > 0) + int(self.input_eos)

    @property
    def contiguous(self) -> bool:
        """Whether code c of digit l is token offsets[l] + c (every kind but "tokenizer")."""
        return self.token_ids is None

    def digit_token_range(self, level: int) -> tuple[int, int]:
        """[start, stop) token ids of digit `level`'s codes (contiguous layouts; else digit_token_ids)."""
        if not 0 <= level < self.num_levels:
            raise InvalidInput(f"level must be in [0, {self.num_levels}), got {level}")
        if self.token_ids is not None:
            raise InvalidInput("a 'tokenizer' layout's digit tokens are not a contiguous range; use digit_token_ids")
        start = self.offsets[level]
        return start, start + self.codebook_sizes[level]

    def digit_token_ids(self, level: int, device=None) -> torch.Tensor:
        """(K_l,) token id of each code of digit `level`, code order: rows of an embedding or output head."""
        if not 0 <= level < self.num_levels:
            raise InvalidInput(f"level must be in [0, {self.num_levels}), got {level}")
        if self.token_ids is not None:
            return torch.tensor(self.token_ids[level], dtype=torch.long, device=device)
        return torch.arange(*self.digit_token_range(level), device=device)

    def digit_tokens(self, level: int, codes: torch.Tensor) -> torch.Tensor:
        """Token ids of digit `level`'s codes (any shape; codes must be in [0, K_l))."""
        codes = torch.as_tensor(codes).long()
        if self.token_ids is None:
            return codes + self.offsets[level]
        return self.digit_token_ids(level, codes.device)[codes]

    def is_code_token(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bool mask of `tokens` that name a code of some digit (inside a digit's range)."""
        tokens = torch.as_tensor(tokens)
        if self.token_ids is not None:
            every = torch.cat([self.digit_token_ids(level, tokens.device) for level in range(self.num_levels)])
            return torch.isin(tokens, every)
        out = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
        for level in range(self.num_levels):
            start, stop = self.digit_token_range(level)
            out |= (tokens >= start) & (tokens < stop)
        return out

    def user_token(self, user: Optional[int] = None) -> int:
        """Token of a user (hashed into num_user_tokens buckets); None -> bucket 0."""
        if not self.num_user_tokens:
            raise InvalidInput(f"token layout kind {self.kind!r} has no user tokens (num_user_tokens=0)")
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
        if self.token_ids is not None:
            return torch.stack([self.digit_tokens(level, codes[..., level]) for level in range(self.num_levels)], -1)
        return codes.long() + torch.tensor(self.offsets, device=codes.device)

    def tokens_to_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Codes (..., L) of token ids (..., L); -1 where a token is not a code of its digit."""
        tokens = torch.as_tensor(tokens).long()
        if tokens.dim() == 0 or tokens.shape[-1] != self.num_levels:
            raise InvalidInput(f"tokens must have shape (..., {self.num_levels}), got {tuple(tokens.shape)}")
        if self.token_ids is not None:
            return torch.stack([self._table_codes(level, tokens[..., level]) for level in range(self.num_levels)], -1)
        codes = tokens - torch.tensor(self.offsets, device=tokens.device)
        sizes = torch.tensor(self.codebook_sizes, device=tokens.device)
        ok = (codes >= 0) & (codes < sizes)
        return torch.where(ok, codes, torch.full_like(codes, -1))

    def _table_codes(self, level: int, tokens: torch.Tensor) -> torch.Tensor:
        """Code of each token under digit `level`'s table; -1 where it is no code of that digit."""
        ids = self.digit_token_ids(level, tokens.device)
        order = torch.argsort(ids)
        pos = torch.searchsorted(ids[order], tokens.contiguous()).clamp(max=ids.numel() - 1)
        hit = ids[order][pos] == tokens
        return torch.where(hit, order[pos], torch.full_like(tokens, -1))

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
        if self.token_ids is not None:  # a text prompt: any tokens, at least one
            if not bool((real > 0).all()):
                raise InvalidInput(f"input_ids row {int((real == 0).nonzero()[0])} is an empty prompt (no real token)")
            return
        # A non-empty history has at least [user] + one item's L tokens + [EOS].
        need = self.num_levels + self.input_length_extra
        short = (real < need).nonzero().flatten()
        if short.numel():
            row = int(short[0])
            parts = (["user token"] if self.num_user_tokens else []) + [f"one item's {self.num_levels} SID tokens"]
            parts += ["EOS"] if self.input_eos else []
            raise InvalidInput(
                f"input_ids row {row} is an empty history: {int(real[row])} real tokens, need at least "
                f"{need} ({', '.join(parts)})"
            )
        is_code = self.is_code_token(input_ids)
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
        """Encode item histories as [user, SIDs..., EOS] (user / EOS as the layout has them) -> input_ids, attention_mask (B, T)."""
        if padding_side not in PADDING_SIDES:
            raise InvalidInput(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
        if self.token_ids is not None:
            raise InvalidInput("a 'tokenizer' layout's inputs are text prompts: build them with "
                               "teacher.llm.PromptBuilder, not encode_histories")
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
        tokens = torch.where((grid_t >= 0).unsqueeze(-1), tokens, torch.full_like(tokens, self.pad_id)).reshape(n, -1)
        num_levels = self.num_levels
        first = int(self.num_user_tokens > 0)  # column of the first SID token
        total = self.input_length_extra + width * num_levels
        ids = torch.full((n, total), self.pad_id, dtype=torch.long)
        ids[:, first : first + width * num_levels] = tokens
        if first:
            users_col = [self.user_token(None)] * n if users is None else [self.user_token(u) for u in users]
            ids[:, 0] = torch.tensor(users_col, dtype=torch.long)
        elif users is not None:
            raise InvalidInput(f"users were given but token layout kind {self.kind!r} has no user tokens")
        lens_t = torch.from_numpy(lengths)
        if self.input_eos:
            ids[torch.arange(n), first + lens_t * num_levels] = self.eos_id
        real = self.input_length_extra + lens_t * num_levels
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


def drop_final_eos(input_ids: torch.Tensor, attention_mask: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded rows without their final EOS ([user, SIDs..., EOS] -> [user, SIDs...]); ValueError if one lacks it."""
    ids, mask = to_left_padding(input_ids, attention_mask)
    if ids.shape[0] and not bool((ids[:, -1] == eos_id).all()):
        raise InvalidInput(f"input_ids rows must end with the EOS token {eos_id} ([user, SIDs..., EOS])")
    return ids[:, :-1], mask[:, :-1]


def to_right_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-pad rows on the right (real tokens, in order, start in column 0); any padding in."""
    order = torch.sort((~attention_mask.bool()).to(torch.uint8), dim=1, stable=True).indices
    return torch.gather(input_ids, 1, order), torch.gather(attention_mask, 1, order)


def layout_to_json(layout: TokenLayout) -> str:
    """Serialise a layout (with format version and derived ids, for readers)."""
    return json.dumps(layout_to_dict(layout), indent=2)


def layout_to_dict(layout: TokenLayout) -> dict:
    """The layout as a JSON-ready dict (format version, sizes, and derived ids checked on load).

    A "tiger" layout writes exactly the fields every version wrote; other kinds add
    decoder_start_id and input_eos (user_base is null without user tokens).
    """
    blob = {
        "format": _FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": layout.kind,
        "codebook_sizes": list(layout.codebook_sizes),
        "num_user_tokens": layout.num_user_tokens,
        # Derived for the presets, written for humans and other tools; checked on load.
        "pad_id": layout.pad_id,
        "offsets": None if layout.offsets is None else list(layout.offsets),
        "eos_id": layout.eos_id,
        "user_base": layout.user_base,
        "vocab_size": layout.vocab_size,
    }
    if layout.kind != "tiger":
        blob.update(decoder_start_id=layout.decoder_start_id, input_eos=layout.input_eos)
    if layout.token_ids is not None:
        blob["token_ids"] = [list(row) for row in layout.token_ids]
    return blob


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
        sizes, users, kind = tuple(blob["codebook_sizes"]), int(blob["num_user_tokens"]), blob["kind"]
    except KeyError as err:
        raise InvalidInput(f"token layout JSON lacks field {err}") from err
    explicit = {}
    if kind == "custom":  # the ids are the layout; the presets derive theirs (checked below)
        explicit = {name: blob[name] for name in _ID_FIELDS if blob.get(name) is not None}
    if kind == "tokenizer":
        explicit = {name: blob.get(name) for name in ("pad_id", "eos_id", "decoder_start_id", "token_ids")}
        explicit["token_ids"] = tuple(tuple(row) for row in (blob.get("token_ids") or ()))
    layout = TokenLayout(sizes, num_user_tokens=users, kind=kind, **explicit)
    for name in ("pad_id", "eos_id", "user_base", "vocab_size", "decoder_start_id", "input_eos"):
        if name in blob and blob[name] != getattr(layout, name):
            raise InvalidInput(f"token layout JSON says {name}={blob[name]} but its sizes give {getattr(layout, name)}")
    if blob.get("offsets") is not None and list(blob["offsets"]) != list(layout.offsets or ()):
        raise InvalidInput(f"token layout JSON says offsets={blob['offsets']} but its sizes give {list(layout.offsets)}")
    return layout
