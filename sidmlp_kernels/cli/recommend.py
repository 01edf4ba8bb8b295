"""`sidmlp recommend` (torchrun-ready: `torchrun --nproc_per_node=N -m sidmlp_kernels.cli recommend ...`) and
`sidmlp export-users` (a users file from a prepared split)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import set_threads


def cmd_recommend(args: argparse.Namespace) -> int:
    """`sidmlp recommend`: top-n items for every user of --users into --out (parquet), resumable, torchrun-ready."""
    from ..recommend import RecommendJob

    job = RecommendJob(top_n=args.top_n, beam_size=args.beam, shard_size=args.shard_size, batch_size=args.batch_size,
                       max_history=args.max_history)  # a bad option fails here, before anything is loaded
    import torch
    import torch.distributed as dist

    from ..data.users import read_users
    from ..recommend import load_ranker, recommend
    from ..training import dist_info

    set_threads(args.threads)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = args.device
    if device == "cuda":
        if not torch.cuda.is_available():
            from ..errors import InvalidInput

            raise InvalidInput("device (--device) cuda: no CUDA device is visible")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)  # NCCL: one GPU per rank
        device = f"cuda:{local}"
    elif distributed:
        os.environ.setdefault("SIDMLP_DIST_BACKEND", "gloo")  # CPU tensors: gloo even where a GPU is visible
    rank, world = dist_info()
    try:
        users = read_users(args.users)
        ranker = load_ranker(args.model, teacher=args.teacher, catalog=args.catalog, device=device)
        out = recommend(ranker, users, args.out, job, work_dir=args.work_dir, overwrite=args.overwrite,
                        keep_shards=args.keep_shards, show_progress=not args.no_progress)
        if rank == 0:
            print(f"[recommend] {len(users)} users, top {job.top_n} (beam {job.beam_size}), {world} process(es) "
                  f"-> {out}")
    except KeyboardInterrupt:
        if rank == 0:
            work = args.work_dir or f"{args.out}.shards"
            print(f"[recommend] interrupted; run the same command again to resume (finished shards in {work} "
                  "are kept)")
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def cmd_export_users(args: argparse.Namespace) -> int:
    """`sidmlp export-users`: the users file of a prepared split (user = split index, its history, its target)."""
    from ..data.prepare import load_prepared
    from ..data.users import users_from_split, write_users
    from ..errors import InvalidInput

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InvalidInput(f"out (--out) {out} already exists; pass --overwrite to replace it")
    users, histories, targets = users_from_split(load_prepared(args.prepared).split, args.part)
    write_users(out, users, histories, extra={"target": targets})
    print(f"[export-users] {len(users)} {args.part} users -> {out}")
    return 0


def register(sub) -> None:
    """Add `sidmlp recommend` and `sidmlp export-users` to the subcommands."""
    p = sub.add_parser("recommend", help="top-n catalog items for every user of a users file, into one parquet "
                                         "file (resumable per shard; torchrun splits users over processes)")
    p.add_argument("--model", required=True,
                   help="a `sidmlp distill` directory (SID-MLP or SID-MLP++), or a teacher directory (train-teacher "
                        "run or `sidmlp import` output: decoded with its constrained attention beam search)")
    p.add_argument("--teacher", default=None, help="the teacher a SID-MLP --model was distilled from")
    p.add_argument("--catalog", default=None,
                   help="a `sidmlp prepare` (or catalog) directory: the catalog of a teacher --model that has none")
    p.add_argument("--users", required=True,
                   help="users file: .parquet or .jsonl with columns user (int or string, unique) and history (item "
                        "ids, oldest first); `sidmlp export-users` writes one from a prepared split")
    p.add_argument("--out", required=True, help="output .parquet: columns user, items (best first), scores")
    p.add_argument("--top-n", type=int, default=10, help="items per user")
    p.add_argument("--beam", type=int, default=50, help="beam size (>= --top-n)")
    p.add_argument("--max-history", type=int, default=20,
                   help="the last N items of each history are read (the model's `sidmlp prepare --max-history`)")
    p.add_argument("--batch-size", type=int, default=256, help="users per generate() call")
    p.add_argument("--shard-size", type=int, default=1024,
                   help="users per shard (the unit of resumption and of the split over processes)")
    p.add_argument("--work-dir", default=None, help="where shards are kept until the merge (default: OUT.shards)")
    p.add_argument("--keep-shards", action="store_true", help="keep the work directory after the merge")
    p.add_argument("--overwrite", action="store_true", help="replace --out and discard the shards of an earlier job")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: one GPU per torchrun rank (LOCAL_RANK), NCCL; cpu: gloo")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_recommend)

    e = sub.add_parser("export-users", help="write the users file of a prepared split (for `sidmlp recommend`)")
    e.add_argument("--prepared", required=True, help="directory written by `sidmlp prepare`")
    e.add_argument("--part", choices=("valid", "test"), default="test",
                   help="which histories: test = every item but the last (the test inputs), valid = without the "
                        "last two")
    e.add_argument("--out", required=True, help="users file to write: .parquet or .jsonl (a target column too)")
    e.add_argument("--overwrite", action="store_true", help="replace --out")
    e.set_defaults(func=cmd_export_users)
