"""Dataset -> split -> item embeddings -> Semantic IDs -> catalog, saved to one directory."""

from __future__ import annotations

import logging

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import ArtifactError, provenance, read_json, read_meta, write_json, write_meta
from .catalog import SIDCatalog
from .movielens import DATASETS, InteractionData, Split, leave_last_out, load_movielens
from .embeddings import DEFAULT_MODEL, embed_texts
from .sid_files import codes_for_items, read_sid_file, sid_code_stats
from .semantic_ids import CodebookTooSmall, auto_codebook_size, build_semantic_ids
from ..errors import InvalidInput, InvalidInputType

__all__ = ["FORMAT_VERSION", "Prepared", "load_prepared", "prepare"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_FORMAT = "sidmlp-prepared"


@dataclass
class Prepared:
    """A prepared dataset: interactions, split, SID catalog, SID stats and the config used."""

    data: InteractionData
    split: Split
    catalog: SIDCatalog
    stats: dict[str, Any]
    config: dict[str, Any]


def prepare(
    dataset: str,
    out_dir: str | Path,
    num_levels: int = 4,
    codebook_size: int | str = 256,
    max_history: int = 20,
    k_core: int | None = None,
    pca_dim: int | None = None,
    seed: int = 0,
    embedding_cache_dir: str | Path | None = None,
    show_progress: bool = False,
    overwrite: bool = False,
    sids: str | Path | None = None,
    sids_format: str = "sidmlp-official",
) -> Prepared:
    """Build and save data.json, catalog/, sid_stats.json (+ embedding cache) for a dataset.

    Every argument is checked before anything on disk changes. A non-empty out_dir is refused
    unless overwrite=True (`--overwrite`); its embedding cache is then reused.
    codebook_size="auto" picks K from the catalog size (semantic_ids.auto_codebook_size), doubled
    until the dedup digit fits; config.json records the K used and codebook_rule "auto".
    sids: another code base's SID file (data/sid_files.py, `sids_format`) to use instead of building
    Semantic IDs: every dataset item must be in it (by raw item id); K = codebook_size per digit.
    """
    t0 = time.perf_counter()
    _check_prepare_args(dataset, num_levels, codebook_size, max_history, k_core, pca_dim, seed)
    if sids is not None and codebook_size == "auto":
        raise InvalidInput("codebook_size (--codebook-size) must be the SID file's codes per digit with sids "
                           "(--sids), not 'auto'")
    if sids is not None:
        sid_codes, sid_keys = read_sid_file(sids, sids_format)  # before anything on disk changes
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"out_dir (--out) {out} is a file, expected a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "a prepared dataset" if (out / "data.json").is_file() else "files"
        raise InvalidInput(f"out_dir (--out) {out} is not empty (it holds {what}); pass overwrite=True "
                         "(--overwrite) to replace it, or choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    # A rerun first invalidates the old result, so a crash midway cannot pair new files with it.
    (out / "data.json").unlink(missing_ok=True)
    config = {
        "dataset": dataset, "num_levels": num_levels, "codebook_size": codebook_size,
        "max_history": max_history, "k_core": k_core, "pca_dim": pca_dim, "seed": seed,
        "embedding_model": DEFAULT_MODEL,
    }
    data = load_movielens(dataset, k_core=k_core)
    split = leave_last_out(data, max_history=max_history)
    if sids is None:
        catalog, stats = _semantic_id_catalog(data, split, config, out, embedding_cache_dir, show_progress)
        codebook_size = config["codebook_size"]
    else:
        codes = codes_for_items(sid_keys, sid_codes, data.raw_item_ids, sids)
        try:
            catalog = SIDCatalog.from_codes(np.arange(data.num_items), codes, codebook_size)
        except ValueError as err:
            raise ArtifactError(Path(sids), f"does not give this dataset a valid catalog with codebook_size "
                                            f"{codebook_size} ({err})") from err
        num_levels = catalog.num_levels
        config.update(num_levels=num_levels, embedding_model=None, sids=str(sids), sids_format=sids_format)
        stats = sid_code_stats(codes, catalog.codebook_sizes)

    # data.json is written last: its presence marks a complete directory.
    catalog.save(out / "catalog")
    stats = dict(stats, num_users=data.num_users, num_interactions=data.num_interactions,
                 num_split_users=len(split.test_targets))
    write_json(out / "sid_stats.json", stats)
    write_meta(out / "data.json", _FORMAT, FORMAT_VERSION, {
        "config": config,
        "catalog_fingerprint": catalog.fingerprint(),
        "provenance": provenance({"dataset": dataset, "catalog": catalog.fingerprint()}),
        "data": asdict(data),
        "split": asdict(split),
    }, indent=None)
    usage = ", ".join(f"{u:.3f}" for u in stats["code_usage"])
    fit = (f", reconstruction rel. error {stats['reconstruction_rel']:.3f}" if sids is None
           else f", from {sids} ({sids_format})")
    logger.info(
        f"{dataset}: {data.num_items} items, {data.num_users} users, "
        f"{data.num_interactions} interactions ({len(split.test_targets)} users in split)\n"
        f"  SIDs L={num_levels} K={codebook_size}: code usage per level [{usage}], "
        f"distinct prefixes {stats['distinct_prefixes']}, {stats['collision_items']} items in "
        f"{stats['collision_groups']} colliding {num_levels - 1}-prefixes, max dedup digit "
        f"{stats['max_dedup_digit']}{fit}\n"
        f"  wrote {out} in {time.perf_counter() - t0:.1f}s"
    )
    return Prepared(data=data, split=split, catalog=catalog, stats=stats, config=config)


def _semantic_id_catalog(data, split, config: dict, out: Path, embedding_cache_dir, show_progress: bool):
    """MiniLM embeddings -> residual k-means Semantic IDs -> (catalog, SID stats); resolves K "auto" in config."""
    cache = Path(embedding_cache_dir) if embedding_cache_dir is not None else out / "embeddings"
    emb = embed_texts(data.item_text, cache, DEFAULT_MODEL, show_progress=show_progress)
    train_items = np.unique(np.fromiter((i for s in split.train_sequences for i in s), dtype=np.int64))
    num_levels, codebook_size = config["num_levels"], config["codebook_size"]
    fit = dict(num_levels=num_levels, pca_dim=config["pca_dim"], seed=config["seed"])
    if codebook_size == "auto":
        config["codebook_rule"] = "auto"
        codebook_size = auto_codebook_size(data.num_items, num_levels)
        while True:
            try:
                sids = build_semantic_ids(emb, train_items, codebook_size=codebook_size, **fit)
                break
            except CodebookTooSmall:
                codebook_size *= 2
        config["codebook_size"] = codebook_size
    else:
        sids = build_semantic_ids(emb, train_items, codebook_size=codebook_size, **fit)
    catalog = SIDCatalog.from_codes(np.arange(data.num_items), sids.codes, (codebook_size,) * num_levels)
    return catalog, sids.stats


def _check_prepare_args(dataset, num_levels, codebook_size, max_history, k_core, pca_dim, seed) -> None:
    """ValueError/TypeError naming the argument (and its flag) for any bad prepare() option."""
    if dataset not in DATASETS:
        raise InvalidInput(f"dataset (--dataset) must be one of {', '.join(sorted(DATASETS))}, got {dataset!r}")
    if codebook_size == "auto":
        codebook_size = 2  # checked: any catalog gets a valid K
    checks = (("num_levels", "--levels", num_levels, 2, False), ("codebook_size", "--codebook-size", codebook_size, 2, False),
              ("max_history", "--max-history", max_history, 1, False), ("k_core", "--k-core", k_core, 1, True),
              ("pca_dim", "--pca-dim", pca_dim, 1, True), ("seed", "--seed", seed, 0, False))
    for name, flag, value, low, optional in checks:
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputType(f"{name} ({flag}) must be an int, got {value!r}")
        if value < low:
            raise InvalidInput(f"{name} ({flag}) must be >= {low}, got {value}")


def load_prepared(out_dir: str | Path) -> Prepared:
    """Load and validate a directory written by prepare()."""
    out = Path(out_dir)
    hint = f"re-create it with `sidmlp prepare --dataset NAME --out {out}`"
    path = out / "data.json"
    if not path.is_file():
        raise FileNotFoundError(f"{out} is not a prepared dataset (no data.json); {hint}")
    blob = read_meta(path, _FORMAT, FORMAT_VERSION, required=("config", "data", "split"), hint=hint)
    try:
        data = InteractionData(**blob["data"])
        split = Split(**blob["split"])
        config = dict(blob["config"])
    except (KeyError, TypeError) as e:
        raise ArtifactError(path, f"corrupted ({e})", hint) from e
    stats = read_json(out / "sid_stats.json", hint)
    try:
        catalog = SIDCatalog.load(out / "catalog")
    except (FileNotFoundError, ValueError) as e:
        raise InvalidInput(f"{e}; {hint}") from e
    if "catalog_fingerprint" in blob and catalog.fingerprint() != blob["catalog_fingerprint"]:
        raise ArtifactError(out / "catalog", f"does not match the catalog {path.name} was built with", hint)
    if catalog.num_items != data.num_items or not np.array_equal(catalog.item_ids.numpy(), np.arange(data.num_items)):
        raise InvalidInput(
            f"catalog in {out / 'catalog'} has {catalog.num_items} items, data.json has "
            f"{data.num_items} (item ids must be 0..n-1); {hint}"
        )
    n_users = len(split.test_targets)
    if not (len(split.train_sequences) == len(split.valid_histories) == len(split.valid_targets)
            == len(split.test_histories) == n_users) or len(data.sequences) != data.num_users:
        raise InvalidInput(f"inconsistent split/sequence lengths in {path}; {hint}")
    return Prepared(data=data, split=split, catalog=catalog, stats=stats, config=config)
