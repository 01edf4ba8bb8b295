"""Whole-catalog batch recommendation (`sidmlp recommend`): every user of a users file, top-n
catalog items each, written as one parquet file.

The users are cut into shards of `shard_size` consecutive rows. Shard s goes to rank s % world
(torchrun: every rank one process; alone: rank 0 of 1), is decoded in batches of `batch_size`
and written atomically as WORK/shard-s.parquet; a shard already there is skipped, so a rerun of
an interrupted job resumes. The shards and batches are the same whatever the number of
processes, so after the last rank is done rank 0 concatenates the shards in order into an
output with the single-process run's rows. WORK/job.json records what the shards were made
from (users file, model files, top-n, beam, shard and batch sizes, history length): shards of
another job are refused, never mixed in.

A model is a saved AcceleratedRecommender (SID-MLP with its teacher, or SID-MLP++) decoded with
its generate(), or a teacher directory decoded with the teacher's own constrained attention
beam search (what `sidmlp compare` scores for the teacher).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .accelerated import AcceleratedRecommender
from .data.catalog import SIDCatalog
from .data.layout import TokenLayout
from .data.users import Users, arrow
from .decode.types import GenerationOutput, check_beam_args
from .errors import InvalidInput, InvalidInputType
from .io import provenance, read_json, read_meta, write_meta
from .teacher.attention_decode import attention_beam_search
from .teacher.models import load_teacher
from .training import barrier, broadcast_object, dist_info

__all__ = ["RecommendJob", "Ranker", "load_ranker", "merge_shards", "recommend", "run_shards"]

logger = logging.getLogger(__name__)

_JOB_FORMAT, _JOB_VERSION = "sidmlp-recommend-job", 1
OUTPUT_FORMAT, OUTPUT_VERSION = "sidmlp-recommendations", 1
_JOB = "job.json"


@dataclass(frozen=True)
class RecommendJob:
    """What to compute per user: the top_n items of a beam_size beam over the last max_history items."""

    top_n: int = 10
    beam_size: int = 50
    shard_size: int = 1024
    batch_size: int = 256
    max_history: int = 20

    def __post_init__(self) -> None:
        check_beam_args(self.beam_size, self.top_n, ("beam_size (--beam)", "top_n (--top-n)"))
        for name, flag in (("shard_size", "--shard-size"), ("batch_size", "--batch-size"),
                           ("max_history", "--max-history")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInputType(f"{name} ({flag}) must be an int, got {value!r}")
            if value < 1:
                raise InvalidInput(f"{name} ({flag}) must be >= 1, got {value}")

    def shards(self, num_users: int) -> list[tuple[int, int]]:
        """[lo, hi) user rows of every shard, in order."""
        return [(lo, min(num_users, lo + self.shard_size)) for lo in range(0, num_users, self.shard_size)]


@dataclass
class Ranker:
    """A loaded model: its catalog and token layout, how it pads inputs, and its decode."""

    catalog: SIDCatalog
    layout: TokenLayout
    padding_side: str
    decode: Callable[[torch.Tensor, torch.Tensor, int, int], GenerationOutput]
    device: torch.device
    fingerprint: str  # of the files the model was loaded from


def _files_fingerprint(*directories: Path) -> str:
    """sha256 over every file (path and bytes) under the given directories."""
    h = hashlib.sha256()
    for root in directories:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _teacher_dir(directory: Path) -> Optional[Path]:
    """The directory holding teacher.json (a train-teacher run's best/, or the directory itself), else None."""
    for d in (directory / "best", directory):
        if (d / "teacher.json").is_file():
            return d
    return None


def _padding_side(model) -> str:
    """Encoder-decoder teachers read right-padded inputs, decoder-only ones left-padded (as build_examples is used)."""
    return "right" if getattr(getattr(model, "config", None), "is_encoder_decoder", False) else "left"


def _load_catalog(directory: Path, flag: str) -> SIDCatalog:
    """A catalog directory, or the catalog/ of a `sidmlp prepare` (or imported teacher) directory."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{flag} {directory} is not a directory")
    return SIDCatalog.load(directory / "catalog" if (directory / "catalog").is_dir() else directory)


def load_ranker(model: str | Path, teacher: Optional[str | Path] = None, catalog: Optional[str | Path] = None,
                device: str | torch.device = "cpu") -> Ranker:
    """Load `model`: an AcceleratedRecommender directory (SID-MLP needs `teacher`, the directory of the teacher
    it was distilled from) or a teacher directory (its catalog from `catalog`, a prepared or catalog directory,
    or the teacher directory's own catalog/)."""
    model, device = Path(model), torch.device(device)
    if not model.is_dir():
        raise FileNotFoundError(f"model (--model) {model} is not a directory")
    if (model / "accelerated.json").is_file():
        meta = read_json(model / "accelerated.json", "re-create it with `sidmlp distill`")
        saved_catalog = SIDCatalog.load(model / "catalog")
        if catalog is not None and _load_catalog(Path(catalog), "catalog (--catalog)") != saved_catalog:
            raise InvalidInput(f"catalog (--catalog) {catalog} is not the catalog {model} was distilled for")
        teacher_model, dirs = None, [model]
        if meta.get("encoder") == "teacher":
            if teacher is None:
                raise InvalidInput(f"model (--model) {model} is a SID-MLP model that runs on its teacher's encoder: "
                                   "pass --teacher DIR, the teacher it was distilled from")
            teacher_model, _ = load_teacher(teacher, device=device, catalog=saved_catalog)
            dirs.append(_teacher_dir(Path(teacher)))
        elif teacher is not None:
            raise InvalidInput(f"model (--model) {model} is a SID-MLP++ model (its own MLP encoder): drop --teacher")
        rec = AcceleratedRecommender.from_pretrained(model, teacher=teacher_model).to(device)
        padding = "right" if rec.sequence_format.encoder_decoder else "left"

        def decode(ids, mask, beam_size, top_n):
            return rec.generate(ids, mask, beam_size=beam_size, top_n=top_n)

        return Ranker(rec.catalog, rec.layout, padding, decode, device, _files_fingerprint(*dirs))
    found = _teacher_dir(model)
    if found is None:
        raise InvalidInput(f"model (--model) {model} holds neither an accelerated model (accelerated.json, from "
                           "`sidmlp distill`) nor a teacher (teacher.json, from `sidmlp train-teacher` or `import`)")
    if teacher is not None:
        raise InvalidInput(f"model (--model) {model} is itself a teacher: drop --teacher")
    if catalog is None and not (found / "catalog").is_dir() and not (model / "catalog").is_dir():
        raise InvalidInput(f"model (--model) {model} is a teacher without a catalog/: pass --catalog DIR (the "
                           "`sidmlp prepare` directory it was trained on)")
    cat = _load_catalog(Path(catalog) if catalog is not None else model, "catalog (--catalog)")
    net, layout = load_teacher(model, device=device, catalog=cat)

    def decode(ids, mask, beam_size, top_n):
        with torch.inference_mode():
            return attention_beam_search(net, layout, cat, ids, mask, beam_size, top_n)

    return Ranker(cat, layout, _padding_side(net), decode, device, _files_fingerprint(found))


def _job_meta(users: Users, ranker: Ranker, job: RecommendJob) -> dict:
    return {"users": users.fingerprint, "num_users": len(users), "model": ranker.fingerprint, **asdict(job)}


def _shard_path(work: Path, index: int) -> Path:
    return work / f"shard-{index:05d}.parquet"


def _shard_done(path: Path, rows: int) -> bool:
    """True when `path` is a readable shard of `rows` rows (a damaged one counts as not done)."""
    if not path.is_file():
        return False
    pa = arrow()
    try:
        return pa.parquet.ParquetFile(path).metadata.num_rows == rows
    except (pa.ArrowException, OSError):
        return False


def _write_parquet(table, path: Path) -> None:
    """Write a table atomically (a temporary sibling renamed into place)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    arrow().parquet.write_table(table, tmp)
    os.replace(tmp, path)


def _rows_table(users: Users, lo: int, hi: int, out: GenerationOutput):
    pa = arrow()
    items, scores = out.items.cpu().numpy(), out.scores.float().cpu().numpy()
    n, k = items.shape
    offsets = pa.array(range(0, n * k + 1, k), pa.int32())
    return pa.table({"user": users.users.slice(lo, hi - lo),
                     "items": pa.ListArray.from_arrays(offsets, pa.array(items.reshape(-1), pa.int64())),
                     "scores": pa.ListArray.from_arrays(offsets, pa.array(scores.reshape(-1), pa.float32()))})


def run_shards(ranker: Ranker, users: Users, job: RecommendJob, work_dir: str | Path, rank: int = 0,
               world: int = 1, show_progress: bool = False) -> int:
    """Decode and write this rank's missing shards (s % world == rank); returns how many it computed."""
    from tqdm.auto import tqdm

    work = Path(work_dir)
    shards = job.shards(len(users))
    todo = []
    for s in range(rank, len(shards), world):
        path = _shard_path(work, s)
        if not _shard_done(path, shards[s][1] - shards[s][0]):
            if path.exists():
                logger.warning("%s is damaged or of another size: recomputing it", path)
            todo.append(s)
    mine = len(range(rank, len(shards), world))
    if len(todo) < mine:
        logger.info("rank %d: %d of its %d shards already written in %s, resuming", rank, mine - len(todo), mine, work)
    total = sum(shards[s][1] - shards[s][0] for s in todo)
    desc = "recommend" if world == 1 else f"recommend (rank {rank} of {world})"
    with tqdm(total=total, desc=desc, unit="user", disable=not show_progress) as bar:
        for s in todo:
            lo, hi = shards[s]
            parts = []
            for b in range(lo, hi, job.batch_size):
                e = min(hi, b + job.batch_size)
                ids, mask = ranker.layout.encode_histories(users.histories(b, e), ranker.catalog,
                                                           padding_side=ranker.padding_side,
                                                           max_history=job.max_history)
                parts.append(ranker.decode(ids.to(ranker.device), mask.to(ranker.device), job.beam_size, job.top_n))
                bar.update(e - b)
            out = GenerationOutput(*(torch.cat([getattr(p, f).cpu() for p in parts]) for f in ("items", "codes",
                                                                                                "scores")))
            _write_parquet(_rows_table(users, lo, hi, out), _shard_path(work, s))
    return len(todo)


def merge_shards(users: Users, job: RecommendJob, work_dir: str | Path, out: str | Path,
                 info: Optional[dict] = None) -> None:
    """Concatenate every shard, in order, into `out` (atomically); its schema metadata records the job."""
    pa = arrow()
    work, out = Path(work_dir), Path(out)
    shards = job.shards(len(users))
    missing = [str(_shard_path(work, s)) for s, (lo, hi) in enumerate(shards)
               if not _shard_done(_shard_path(work, s), hi - lo)]
    if missing:
        raise InvalidInput(f"cannot merge: {len(missing)} shard(s) missing, e.g. {missing[0]}; rerun the same command")
    table = pa.concat_tables([pa.parquet.read_table(_shard_path(work, s)) for s in range(len(shards))])
    meta = {"format": OUTPUT_FORMAT, "format_version": OUTPUT_VERSION, **asdict(job), **(info or {})}
    _write_parquet(table.replace_schema_metadata({"sidmlp": json.dumps(meta)}), out)


def _claim_work_dir(work: Path, meta: dict, out: Path, overwrite: bool) -> Optional[str]:
    """Rank 0: make `work` this job's (job.json), or say why not; overwrite=True clears it and `out` first."""
    hint = f"delete {work} or pass overwrite=True (--overwrite) to start over"
    if overwrite:
        shutil.rmtree(work, ignore_errors=True)
        out.unlink(missing_ok=True)
    elif out.exists():
        return f"out (--out) {out} already exists; pass overwrite=True (--overwrite) to replace it"
    if (work / _JOB).is_file():
        try:
            saved = read_meta(work / _JOB, _JOB_FORMAT, _JOB_VERSION, hint=hint)
        except InvalidInput as err:
            return str(err)
        differ = sorted(k for k in meta if saved.get(k) != meta[k])
        if differ:
            return (f"{work} holds shards of another job (it differs in {', '.join(differ)}: "
                    f"{ {k: saved.get(k) for k in differ} } there, { {k: meta[k] for k in differ} } now); {hint}")
        return None
    if work.exists() and any(work.iterdir()):
        return f"work dir (--work-dir) {work} is not empty and holds no {_JOB}; {hint}"
    work.mkdir(parents=True, exist_ok=True)
    write_meta(work / _JOB, _JOB_FORMAT, _JOB_VERSION, meta)
    return None


def recommend(ranker: Ranker, users: Users, out: str | Path, job: Optional[RecommendJob] = None, *,
              work_dir: Optional[str | Path] = None, overwrite: bool = False, keep_shards: bool = False,
              show_progress: bool = False) -> Path:
    """Top-n recommendations for every user into `out` (.parquet), resumable per shard, split over torchrun ranks.

    Every rank calls it (under torchrun each decodes its shards; module docstring); rank 0 merges. The work
    directory (default OUT.shards) holds the shards until the merge, then is removed unless keep_shards.
    Output columns: user (as in the users file), items (top_n item ids, best first; -1 where fewer items
    exist), scores (their beam scores, float32; -inf for -1).
    """
    job = job or RecommendJob()
    if not isinstance(job, RecommendJob):
        raise InvalidInputType(f"job must be a RecommendJob, got {type(job).__name__}")
    out = Path(out)
    if out.suffix != ".parquet":
        raise InvalidInput(f"out (--out) {out} must be a .parquet file")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"out (--out) {out}: directory {out.parent} does not exist")
    users.check_items(ranker.catalog)
    work = Path(work_dir) if work_dir is not None else out.with_name(out.name + ".shards")
    rank, world = dist_info()
    meta = _job_meta(users, ranker, job)
    problem = _claim_work_dir(work, meta, out, overwrite) if rank == 0 else None
    problem = broadcast_object(problem)
    if problem:
        raise InvalidInput(problem)
    run_shards(ranker, users, job, work, rank, world, show_progress=show_progress and rank == 0)
    barrier()
    if rank == 0:
        merge_shards(users, job, work, out, {"users": meta["users"], "model": meta["model"],
                                             "provenance": provenance({"users": meta["users"], "model": meta["model"]})})
        if not keep_shards:
            shutil.rmtree(work)
        logger.info("wrote %s: %d users, top %d", out, len(users), job.top_n)
    barrier()
    return out
