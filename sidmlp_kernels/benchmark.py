"""`sidmlp bench`: options of the end-to-end benchmark and a thin runner for bench/e2e.py.

The benchmark itself lives in the repository's bench/ directory (it is not shipped in the
wheel); `cmd_bench` finds bench/e2e.py next to the package (editable install or source
checkout), in $SIDMLP_BENCH_DIR, or under the working directory, and runs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

__all__ = ["add_bench_arguments", "cmd_bench", "find_bench_script", "DEFAULT_CATALOGS"]

DEFAULT_CATALOGS = ("ml-100k", "ml-1m", "syn-100k", "syn-1m")
PROVIDERS = ("hf_generate", "attention_constrained", "hf_encoder", "fast_encoder", "mlp_encoder", "sidmlp",
             "sidmlp+fast_encoder", "sidmlp++")


def add_bench_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `sidmlp bench` / bench/e2e.py options to a (sub)parser and return it."""
    g = parser.add_argument_group("sweep")
    g.add_argument("--catalogs", nargs="+", default=list(DEFAULT_CATALOGS), metavar="SPEC",
                   help="ml-100k, ml-1m (optionally NAME=PREPARED_DIR) or syn-<n> (random unique codes), "
                        f"default: {' '.join(DEFAULT_CATALOGS)}")
    g.add_argument("--prepared-root", default="runs/prepared",
                   help="where ml-100k / ml-1m are looked for (ROOT/NAME) and prepared when missing")
    g.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    g.add_argument("--beams", type=int, nargs="+", default=[10, 50])
    g.add_argument("--headline", default="ml-100k:32:50", metavar="CATALOG:BATCH:BEAM",
                   help="the cell of the headline table and the speed targets (default ml-100k:32:50)")
    g.add_argument("--catalog-cell", default="32:50", metavar="BATCH:BEAM",
                   help="the cell swept over the other catalogs (default 32:50; --full sweeps the grid)")
    g.add_argument("--full", action="store_true",
                   help="whole grid on every catalog, HF generate everywhere, more repeats (slow: hours on 2 cores)")
    g.add_argument("--providers", nargs="+", default=None, metavar="NAME",
                   help=f"subset of {', '.join(PROVIDERS)} (default: all available)")
    g.add_argument("--backends", nargs="+", default=None, choices=("reference", "cpu", "triton"),
                   help="SID-MLP decode backends (default: every one that runs on --device)")
    g.add_argument("--top-n", type=int, default=10, help="items returned per user (every provider)")
    g.add_argument("--history", type=int, default=20, help="items per random history (synthetic catalogs)")
    t = parser.add_argument_group("timing")
    t.add_argument("--repeats", type=int, default=None, help="timed calls per provider and cell (default 9; --full 15)")
    t.add_argument("--min-repeats", type=int, default=1, help="fewest timed calls of a slow provider (headline: >= 3)")
    t.add_argument("--warmup", type=int, default=1, help="untimed calls per provider and cell (skipped for calls > 2 s)")
    t.add_argument("--budget-s", type=float, default=None,
                   help="seconds of timed calls per provider and cell; slow providers get fewer repeats (default 20; --full 60)")
    t.add_argument("--max-call-s", type=float, default=None,
                   help="skip a provider in a (non-headline) cell whose estimated call exceeds this (default 45; --full 600)")
    t.add_argument("--threads", type=int, default=2, help="torch intra-op threads (0: torch's default)")
    m = parser.add_argument_group("models")
    m.add_argument("--preset", default="paper", help="teacher T5 preset (paper = TIGER: 4+4 layers, d 128, ff 1024, 6x64)")
    m.add_argument("--head-hidden", type=int, default=512, help="SID-MLP head hidden width H")
    m.add_argument("--student-ffn", type=int, default=1024, help="SID-MLP context FFN width")
    m.add_argument("--mlp-ffn", type=int, default=None, help="SID-MLP++ encoder FFN width (default 2*d_model, as accelerate())")
    m.add_argument("--mlp-layers", type=int, default=2, help="SID-MLP++ encoder layers")
    m.add_argument("--syn-k", type=int, default=256, help="codebook size K of synthetic catalogs")
    m.add_argument("--syn-levels", type=int, default=4, help="digits L of synthetic catalogs")
    m.add_argument("--device", default="cpu", help="cpu or cuda (the triton backend runs on cuda only)")
    m.add_argument("--seed", type=int, default=0)
    o = parser.add_argument_group("output")
    o.add_argument("--out", default=None, help="results directory (default: bench/results of the checkout)")
    o.add_argument("--tag", default="e2e", help="file stem: TAG.json, TAG.csv, TAG_headline.md, TAG_*.png")
    o.add_argument("--no-plots", action="store_true")
    o.add_argument("--no-memory-check", action="store_true", help="skip the per-beam-copy check of the student")
    o.add_argument("--no-progress", action="store_true")
    o.add_argument("--bench-script", default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=cmd_bench)
    return parser


def find_bench_script(explicit: Optional[str] = None) -> Path:
    """Path of bench/e2e.py: explicit, $SIDMLP_BENCH_DIR, next to the package, or under the cwd."""
    candidates = []
    if explicit:
        candidates.append(Path(explicit))
    if os.environ.get("SIDMLP_BENCH_DIR"):
        candidates.append(Path(os.environ["SIDMLP_BENCH_DIR"]) / "e2e.py")
    candidates.append(Path(__file__).resolve().parents[1] / "bench" / "e2e.py")
    candidates.append(Path.cwd() / "bench" / "e2e.py")
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "sidmlp bench runs bench/e2e.py from a source checkout of sidmlp-kernels, and none was found "
        f"(looked at {', '.join(str(p) for p in candidates)}); run it from the repository "
        "(pip install -e .) or set SIDMLP_BENCH_DIR to the checkout's bench/ directory"
    )


def _load(path: Path) -> ModuleType:
    bench_dir = str(path.parent)
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)  # e2e.py imports its neighbours (common.py)
    spec = importlib.util.spec_from_file_location("sidmlp_bench_e2e", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cmd_bench(args: argparse.Namespace) -> int:
    """`sidmlp bench`: run the end-to-end benchmark with the parsed options; 0 on success."""
    module: Any = _load(find_bench_script(getattr(args, "bench_script", None)))
    return int(module.run_cli(args) or 0)
