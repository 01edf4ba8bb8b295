"""Other code bases' Semantic-ID files: read them, and match their items to a dataset's.

A SID file names each item's codes: ztguo715/SID-MLP's ``.sem_ids`` JSON ``{item: [c_1, ..,
dedup]}`` (format "sidmlp-official") or XiaoLongtaoo/TIGER's ``.npy`` (N, L) codes whose row i
is item i + 1 ("tiger-xlt"). `prepare(sids=...)` builds a dataset's catalog from one, so that a
teacher imported with the same file (`import_teacher(..., prepared=...)`) fits that dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InvalidInput
from ..io import ArtifactError

__all__ = ["SID_FILE_FORMATS", "codes_for_items", "read_sid_file", "sid_code_stats"]


def _read_official(path: Path) -> tuple[np.ndarray, list]:
    """{item: [c1, .., dedup]} (JSON, file order = item ids 1..N); the last digit's code is dedup itself."""
    try:
        blob = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(path, f"is not a JSON SID file ({err})") from err
    if not isinstance(blob, dict) or not blob:
        raise ArtifactError(path, "must be a non-empty JSON object {item: [c1, c2, c3, dedup]}")
    widths = {len(v) if isinstance(v, list) else -1 for v in blob.values()}
    if len(widths) != 1 or -1 in widths:
        raise ArtifactError(path, f"every value must be a list of the same length, got lengths {sorted(widths)}")
    try:
        codes = np.array(list(blob.values()), dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as err:
        raise ArtifactError(path, f"codes must be integers ({err})") from err
    return codes, list(blob)


def _read_xlt(path: Path) -> tuple[np.ndarray, list]:
    """(N, L) integer codes in a .npy file; row i is item i + 1."""
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ArtifactError(path, f"is not a .npy array of codes ({err})") from err
    if codes.ndim != 2 or codes.shape[0] == 0 or not np.issubdtype(codes.dtype, np.integer):
        raise ArtifactError(path, f"must be an (N, L) integer array, got shape {codes.shape} dtype {codes.dtype}")
    return codes.astype(np.int64), list(range(1, codes.shape[0] + 1))


SID_FILE_FORMATS: dict[str, Callable[[Path], tuple[np.ndarray, list]]] = {
    "sidmlp-official": _read_official,
    "tiger-xlt": _read_xlt,
}


def read_sid_file(path: str | Path, format: str) -> tuple[np.ndarray, list]:
    """(codes (N, L) int64, item keys in file order) of a code base's SID file."""
    if format not in SID_FILE_FORMATS:
        raise InvalidInput(f"SID file format must be one of {sorted(SID_FILE_FORMATS)}, got {format!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SID file at {path}")
    return SID_FILE_FORMATS[format](path)


def codes_for_items(keys: Sequence, codes: np.ndarray, raw_item_ids: Sequence[str], path: str | Path) -> np.ndarray:
    """Row i = the codes of dataset item i, found by its raw id among the file's keys (as strings).

    Every dataset item must have a SID (ArtifactError naming the file and the first missing ids);
    items of the file that the dataset lacks are left out.
    """
    by_key: dict[str, int] = {}
    for row, key in enumerate(keys):
        if str(key) in by_key:
            raise ArtifactError(path, f"names item {key!r} twice")
        by_key[str(key)] = row
    missing = [raw for raw in raw_item_ids if str(raw) not in by_key]
    if missing:
        raise ArtifactError(path, f"has no SID for {len(missing)} of the dataset's {len(raw_item_ids)} items "
                                  f"(first: {missing[:5]}); the SID file must name items by the dataset's raw ids")
    return codes[[by_key[str(raw)] for raw in raw_item_ids]]


def sid_code_stats(codes: np.ndarray, codebook_sizes: Sequence[int]) -> dict:
    """Code usage and prefix counts of given codes (the stats build_semantic_ids reports, minus the fit's)."""
    n, num_levels = codes.shape
    _, counts = np.unique(codes[:, :-1], axis=0, return_counts=True)
    return {
        "num_items": int(n),
        "num_levels": int(num_levels),
        "codebook_sizes": [int(k) for k in codebook_sizes],
        "code_usage": [len(np.unique(codes[:, level])) / int(k) for level, k in enumerate(codebook_sizes)],
        "distinct_prefixes": [len(np.unique(codes[:, : level + 1], axis=0)) for level in range(num_levels)],
        "collision_items": int(counts[counts > 1].sum()),
        "collision_groups": int((counts > 1).sum()),
        "max_dedup_digit": int(codes[:, -1].max()),
    }
