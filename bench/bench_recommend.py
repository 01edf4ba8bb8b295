"""Wall time of `sidmlp recommend` for every user of a users file, on 1 process and under torchrun.

Each configuration PxT (P processes of T torch threads each; P > 1 runs under `torchrun
--standalone --nproc_per_node=P`) runs the whole command as a fresh process group: interpreter
start, model load, decode of every user, shard writes and the merge, i.e. what a user waits for.
Configurations alternate inside every round (order rotated), so each sees the same machine
load; medians over rounds. Every run's output must equal the first one's (same rows, same order),
or the script fails.

  python bench/bench_recommend.py --model /tmp/exp/s1m_b16 --teacher /tmp/exp/t1m \\
      --users USERS.parquet --configs 1x1 1x2 2x1 --rounds 3 --tag recommend_ml1m

(USERS from `sidmlp export-users --prepared PREP --out USERS.parquet`.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common


def parse_config(text: str) -> tuple[int, int]:
    """'2x1' -> (2 processes, 1 thread each)."""
    try:
        procs, threads = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PROCSxTHREADS such as 2x1, got {text!r}") from None
    if procs < 1 or threads < 1:
        raise argparse.ArgumentTypeError(f"processes and threads must be >= 1, got {text!r}")
    return procs, threads


def command(procs: int, threads: int, args: argparse.Namespace, out: Path) -> list[str]:
    """The `sidmlp recommend` command line of one configuration."""
    launch = [sys.executable, "-m", "sidmlp_kernels.cli"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
        "-m", "sidmlp_kernels.cli"]
    cmd = [*launch, "recommend", "--model", args.model, "--users", args.users, "--out", str(out),
           "--top-n", str(args.top_n), "--beam", str(args.beam), "--batch-size", str(args.batch_size),
           "--shard-size", str(args.shard_size), "--threads", str(threads), "--no-progress"]
    return cmd + (["--teacher", args.teacher] if args.teacher else [])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a `sidmlp distill` directory (or a teacher directory)")
    p.add_argument("--teacher", default=None, help="the teacher of a SID-MLP --model")
    p.add_argument("--users", required=True, help="users file (`sidmlp export-users`)")
    p.add_argument("--configs", nargs="+", type=parse_config, default=[(1, 1), (1, 2), (2, 1)],
                   metavar="PxT", help="processes x threads per process")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--top-n", type=int, default=10)
    p.add_argument("--beam", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--out", default=str(common.RESULTS), help="results directory")
    p.add_argument("--tag", default="recommend")
    args = p.parse_args()

    import pyarrow.parquet as pq

    work = Path(tempfile.mkdtemp(prefix="bench_recommend_"))
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # --threads sets each process's threads
    names = [f"{procs}x{threads}" for procs, threads in args.configs]
    times: dict[str, list[float]] = {n: [] for n in names}
    reference = None
    try:
        for r in range(args.rounds):
            order = list(range(len(names)))
            order = order[r % len(order):] + order[: r % len(order)]
            for i in order:
                (procs, threads), name = args.configs[i], names[i]
                out = work / f"{name}.parquet"
                out.unlink(missing_ok=True)
                t0 = time.perf_counter()
                proc = subprocess.run(command(procs, threads, args, out), env=env, capture_output=True, text=True)
                seconds = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
                table = pq.read_table(out)
                if reference is None:
                    reference = table
                elif not table.equals(reference):
                    raise SystemExit(f"{name} (round {r}) wrote other recommendations than the first run")
                times[name].append(seconds * 1000)
                print(f"round {r} {name}: {seconds:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    users = reference.num_rows
    base = common.summarize(times[names[0]])["median_ms"]
    rows = {}
    for (procs, threads), name in zip(args.configs, names):
        s = common.summarize(times[name])
        rows[name] = {"processes": procs, "threads_per_process": threads, **s, "times_ms": times[name],
                      "users_per_s": users / (s["median_ms"] / 1000), f"speedup_vs_{names[0]}": base / s["median_ms"],
                      "command": " ".join(command(procs, threads, args, Path("OUT.parquet")))}
    report = {"format_version": 1, "bench": "recommend", "machine": common.machine_info(),
              "config": {k: v for k, v in vars(args).items() if k != "configs"} | {"users": users},
              "outputs_equal": True, "configs": rows}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"{args.tag}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"\n{users} users, top {args.top_n}, beam {args.beam}; wall time of the whole command, median of "
          f"{args.rounds} (every output identical)\n")
    print(f"| processes x threads | wall s (median) | p25-p75 s | users/s | vs {names[0]} |")
    print("|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['median_ms'] / 1000:.1f} | {row['p25_ms'] / 1000:.1f}-{row['p75_ms'] / 1000:.1f} | "
              f"{row['users_per_s']:.0f} | {row[f'speedup_vs_{names[0]}']:.2f}x |")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
