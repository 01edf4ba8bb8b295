"""The users file of `sidmlp recommend`: one row per user, a user id and the history of item ids.

Two encodings of one table, picked by the file's suffix:
- `.parquet`: columns `user` (int64 or string) and `history` (list<int64>, oldest item first);
- `.jsonl`: one JSON object per line, `{"user": 17, "history": [3, 9, 4]}`.
Other columns are allowed and ignored (`users_from_split` writes a `target` column beside them).
User ids are unique and kept as given (type included) in the recommendations; every history holds
at least one catalog item id. `write_users` writes either encoding atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import InvalidInput, InvalidInputType, MissingDependency
from .catalog import SIDCatalog
from .movielens import Split

__all__ = ["USER_COLUMN", "HISTORY_COLUMN", "SUFFIXES", "Users", "read_users", "users_from_split", "write_users"]

USER_COLUMN = "user"
HISTORY_COLUMN = "history"
SUFFIXES = (".parquet", ".jsonl")


def arrow():
    """pyarrow (a dependency of the package); a MissingDependency saying how to install it if absent."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (a submodule: imported for its side effect on `pyarrow`)
    except ImportError as err:
        raise MissingDependency("users and recommendation files need pyarrow: pip install pyarrow") from err
    return pyarrow


@dataclass
class Users:
    """N users: `users` (a pyarrow Array of ids, type kept), histories as flat `items` + `offsets` (N + 1,)."""

    users: Any
    items: np.ndarray
    offsets: np.ndarray
    fingerprint: str = ""  # sha256 of the file read, "" when built in memory

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def histories(self, lo: int, hi: int) -> list[np.ndarray]:
        """The histories of users lo..hi-1 (views into `items`)."""
        return [self.items[self.offsets[i] : self.offsets[i + 1]] for i in range(lo, hi)]

    def check_items(self, catalog: SIDCatalog, flag: str = "--users") -> None:
        """InvalidInput naming the first user whose history holds an item the catalog does not have."""
        known = np.isin(self.items, catalog.item_ids.numpy())
        if known.all():
            return
        pos = int(np.argmax(~known))
        row = int(np.searchsorted(self.offsets, pos, side="right")) - 1
        raise InvalidInput(f"users file ({flag}): the history of user {self.users[row].as_py()!r} (row {row}) holds "
                           f"item {int(self.items[pos])}, which is not in the model's catalog "
                           f"({catalog.num_items} items)")


def _fail(path: Path, problem: str) -> InvalidInput:
    return InvalidInput(f"users file (--users) {path}: {problem}; expected columns {USER_COLUMN!r} (int or string, "
                        f"unique) and {HISTORY_COLUMN!r} (a non-empty list of item ids), as `sidmlp export-users` "
                        "writes them")


def _suffix(path: Path, flag: str) -> str:
    if path.suffix not in SUFFIXES:
        raise InvalidInput(f"{flag} {path}: unknown file type {path.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    return path.suffix


def _read_table(path: Path):
    pa = arrow()
    if path.suffix == ".parquet":
        try:
            return pa.parquet.read_table(path)
        except (pa.ArrowException, OSError) as err:
            raise _fail(path, f"not a readable parquet file ({err})") from err
    rows = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise _fail(path, f"line {lineno} is not JSON ({err})") from err
            if not isinstance(row, dict):
                raise _fail(path, f"line {lineno} is a JSON {type(row).__name__}, not an object")
            rows.append(row)
    if not rows:
        raise _fail(path, "no users")
    for i, row in enumerate(rows):
        for name in (USER_COLUMN, HISTORY_COLUMN):
            if name not in row:
                raise _fail(path, f"the object of user row {i} has no {name!r}")
        hist = row[HISTORY_COLUMN]
        # pyarrow would truncate 1.5 to 1 without a word: only JSON integers are item ids.
        if hist is not None and (not isinstance(hist, list) or any(
                x is not None and (isinstance(x, bool) or not isinstance(x, int)) for x in hist)):
            raise _fail(path, f"the history of user row {i} is {json.dumps(hist)}, not a list of integer item ids")
    try:
        return pa.table({USER_COLUMN: [r[USER_COLUMN] for r in rows],
                         HISTORY_COLUMN: pa.array([r[HISTORY_COLUMN] for r in rows], pa.list_(pa.int64()))})
    except (pa.ArrowException, TypeError, OverflowError) as err:
        raise _fail(path, f"mixed or non-integer values ({err})") from err


def read_users(path: str | Path) -> Users:
    """Read and validate a users file (.parquet or .jsonl; module docstring)."""
    pa = arrow()
    path = Path(path)
    _suffix(path, "users file (--users)")
    if not path.is_file():
        raise FileNotFoundError(f"users file (--users) {path} does not exist")
    table = _read_table(path)
    missing = [c for c in (USER_COLUMN, HISTORY_COLUMN) if c not in table.column_names]
    if missing:
        raise _fail(path, f"it has columns {table.column_names}, missing {missing}")
    if table.num_rows == 0:
        raise _fail(path, "no users")
    users = table.column(USER_COLUMN).combine_chunks()
    hist = table.column(HISTORY_COLUMN).combine_chunks()
    if not (pa.types.is_integer(users.type) or pa.types.is_string(users.type) or pa.types.is_large_string(users.type)):
        raise _fail(path, f"column {USER_COLUMN!r} is {users.type}")
    if users.null_count:
        raise _fail(path, f"user row {users.is_null().to_pylist().index(True)} has no user id")
    if not (pa.types.is_list(hist.type) or pa.types.is_large_list(hist.type)) or not (
            pa.types.is_integer(hist.type.value_type) or pa.types.is_null(hist.type.value_type)):
        raise _fail(path, f"column {HISTORY_COLUMN!r} is {hist.type}")
    if hist.null_count or hist.flatten().null_count:
        raise _fail(path, f"user {_first_null_row(hist, users)!r} has a missing history or item id")
    unique, counts = np.unique(np.asarray(users.to_numpy(zero_copy_only=False)), return_counts=True)
    if (counts > 1).any():
        raise _fail(path, f"user {unique[np.argmax(counts > 1)].item()!r} appears {counts.max()} times")
    offsets = np.asarray(hist.offsets.to_numpy(), dtype=np.int64)
    offsets = offsets - offsets[0]
    empty = np.flatnonzero(np.diff(offsets) == 0)
    if empty.size:
        raise _fail(path, f"the history of user {users[int(empty[0])].as_py()!r} (row {int(empty[0])}) is empty")
    items = np.asarray(hist.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
    return Users(users, items, offsets, fingerprint=_file_hash(path))


def _first_null_row(hist, users) -> Any:
    for i, h in enumerate(hist.to_pylist()):
        if h is None or any(x is None for x in h):
            return users[i].as_py()
    return None


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def write_users(path: str | Path, users: Sequence, histories: Sequence[Sequence[int]],
                extra: Optional[dict[str, Sequence]] = None) -> None:
    """Write a users file (.parquet or .jsonl by suffix) atomically; `extra` adds columns (e.g. targets)."""
    pa = arrow()
    path = Path(path)
    _suffix(path, "out (--out)")
    if len(users) != len(histories):
        raise InvalidInput(f"users has {len(users)} entries but histories has {len(histories)}")
    columns = {USER_COLUMN: list(users), HISTORY_COLUMN: [[int(i) for i in h] for h in histories]}
    for name, values in (extra or {}).items():
        if name in columns or len(values) != len(users):
            raise InvalidInput(f"extra column {name!r} must be new and hold {len(users)} values")
        columns[name] = list(values)
    if any(not isinstance(u, (int, str, np.integer)) or isinstance(u, bool) for u in columns[USER_COLUMN]):
        raise InvalidInputType("user ids must be ints or strings")
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    if path.suffix == ".parquet":
        table = pa.table({USER_COLUMN: columns[USER_COLUMN],
                          HISTORY_COLUMN: pa.array(columns[HISTORY_COLUMN], pa.list_(pa.int64())),
                          **{k: v for k, v in columns.items() if k not in (USER_COLUMN, HISTORY_COLUMN)}})
        pa.parquet.write_table(table, tmp)
    else:
        with tmp.open("w") as fh:
            for row in zip(*columns.values()):
                fh.write(json.dumps(dict(zip(columns, (_plain(v) for v in row)))) + "\n")
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def users_from_split(split: Split, part: str = "test") -> tuple[list[int], list[list[int]], list[int]]:
    """(user ids, histories, targets) of a split part: user = the split's user index (the row of
    build_examples(..., part)), history = the items the model reads for that part."""
    if part == "valid":
        histories, targets = split.valid_histories, split.valid_targets
    elif part == "test":
        histories, targets = split.test_histories, split.test_targets
    else:
        raise InvalidInput(f"part (--part) must be 'valid' or 'test', got {part!r}")
    return list(range(len(histories))), [list(h) for h in histories], list(targets)
