"""CPU constrained beam step: C++ index (sidmlp_kernels._C) vs the PyTorch reference.

Reference step = catalog.valid_children(prefixes) + sidmlp_kernels.decode.reference.beam_step_reference,
the way beam_search_reference runs it (the `reference` backend). Extension step =
ConstrainedIndex.beam_step on node states (the C++ op of the `cpu` backend). Both get identical
inputs, recorded from one reference search over random logits on a synthetic catalog (uniform
random unique codes, L digits of K). Also times a whole L-step decode (logits precomputed, so no
model time) and the index build. Each side is called directly: SIDMLP_BACKEND does not apply.

    python bench/bench_constrained_step.py                  # 1K, 100K, 1M items
    python bench/bench_constrained_step.py --items 1000 --repeats 5 --out /tmp/constrained_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from common import RESULTS, cpu_model, synthetic_catalog, time_repeats
from sidmlp_kernels.decode.constrained import ConstrainedIndex, constrained_beam_search
from sidmlp_kernels.decode.reference import beam_search_reference, beam_step_reference
from sidmlp_kernels.decode.search import extend_prefixes


def time_ms(fn, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """(median, min) wall time in ms; the min shows the cost without other processes' noise."""
    times = time_repeats(fn, repeats, warmup)
    return statistics.median(times), min(times)


def bench_catalog(n: int, args) -> dict:
    t0 = time.perf_counter()
    cat = synthetic_catalog(n, args.K, args.L, args.seed)
    catalog_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = ConstrainedIndex.from_catalog(cat)
    index_s = time.perf_counter() - t0

    g = torch.Generator().manual_seed(args.seed + 1)
    # Fixed random logits per level, sliced to the current width (B, W, K).
    tables = [torch.randn(args.batch, args.beam, args.K, generator=g) * 2 for _ in range(args.L)]

    def step_fn(level, prefixes, parents):
        return tables[level][:, : prefixes.shape[1]]

    # Record each level's inputs from one reference search.
    recorded = []
    prefixes = torch.zeros(args.batch, 1, 0, dtype=torch.long)
    scores = torch.zeros(args.batch, 1)
    for level in range(args.L):
        logits = step_fn(level, prefixes, None).contiguous()
        recorded.append((prefixes, scores, logits))
        width = prefixes.shape[1]
        valid = cat.valid_children(prefixes.reshape(args.batch * width, level)).reshape(args.batch, width, -1)
        valid &= torch.isfinite(scores).unsqueeze(-1)
        scores, parents, tokens = beam_step_reference(logits, scores, valid, args.beam)
        prefixes = extend_prefixes(prefixes, parents, tokens)

    levels = []
    for level, (prefixes, scores, logits) in enumerate(recorded):
        width = prefixes.shape[1]
        state = index.prefix_state(prefixes)

        def ref_step():
            valid = cat.valid_children(prefixes.reshape(args.batch * width, level)).reshape(args.batch, width, -1)
            valid &= torch.isfinite(scores).unsqueeze(-1)
            return beam_step_reference(logits, scores, valid, args.beam)

        def ext_step():
            return index.beam_step(logits, scores, state, args.beam)

        # Same answer before timing (scores within float tolerance).
        torch.testing.assert_close(ext_step()[0], ref_step()[0], atol=1e-4, rtol=1e-4)
        ref_ms, ref_min = time_ms(ref_step, args.repeats)
        ext_ms, ext_min = time_ms(ext_step, args.repeats)
        children = index.num_nodes(level + 1) / index.num_nodes(level)
        levels.append(
            {
                "level": level,
                "width": width,
                "mean_valid_children": round(children, 2),
                "reference_ms": ref_ms,
                "ext_ms": ext_ms,
                "speedup": ref_ms / ext_ms,
                "reference_min_ms": ref_min,
                "ext_min_ms": ext_min,
            }
        )

    ref_search, ref_search_min = time_ms(
        lambda: beam_search_reference(step_fn, cat, args.batch, args.beam, args.top_n), args.repeats
    )
    ext_search, ext_search_min = time_ms(
        lambda: constrained_beam_search(step_fn, index, args.batch, args.beam, args.top_n), args.repeats
    )
    return {
        "items": cat.num_items,
        "catalog_build_s": catalog_s,
        "index_build_s": index_s,
        "index_bytes": index.nbytes,
        "nodes_per_level": [index.num_nodes(level) for level in range(args.L + 1)],
        "levels": levels,
        "step_total": {
            "reference_ms": sum(l["reference_ms"] for l in levels),
            "ext_ms": sum(l["ext_ms"] for l in levels),
            "speedup": sum(l["reference_ms"] for l in levels) / sum(l["ext_ms"] for l in levels),
        },
        "search": {
            "reference_ms": ref_search,
            "ext_ms": ext_search,
            "speedup": ref_search / ext_search,
            "reference_min_ms": ref_search_min,
            "ext_min_ms": ext_search_min,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--beam", type=int, default=50)
    parser.add_argument("--top-n", type=int, default=10)
    parser.add_argument("--K", type=int, default=256)
    parser.add_argument("--L", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "constrained_step.json",
                        help="JSON path (default bench/results/constrained_step.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results = []
    for n in tqdm(args.items, desc="catalogs"):
        results.append(bench_catalog(n, args))

    report = {
        "benchmark": "constrained_beam_step_cpu",
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average_1m_at_end": os.getloadavg()[0],
        },
        "config": {
            "batch": args.batch,
            "beam": args.beam,
            "top_n": args.top_n,
            "K": args.K,
            "L": args.L,
            "dtype": "float32",
            "repeats": args.repeats,
            "catalog": "uniform random unique codes",
            "reference_step": "catalog.valid_children + sidmlp_kernels.decode.reference.beam_step_reference",
            "ext_step": "ConstrainedIndex.beam_step (sidmlp::beam_step CPU)",
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(f"\nCPU: {report['machine']['cpu']}, torch threads {torch.get_num_threads()}, float32, "
          f"batch {args.batch}, beam {args.beam}, K {args.K}, L {args.L}; medians (and mins) of {args.repeats}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'items':>9} {'level':>5} {'width':>5} {'children':>8} {'ref ms':>9} {'ext ms':>8} {'speedup':>8}"
          f" {'ref min':>9} {'ext min':>8}")
    for r in results:
        for l in r["levels"]:
            print(f"{r['items']:>9} {l['level']:>5} {l['width']:>5} {l['mean_valid_children']:>8} "
                  f"{l['reference_ms']:>9.3f} {l['ext_ms']:>8.3f} {l['speedup']:>7.1f}x"
                  f" {l['reference_min_ms']:>9.3f} {l['ext_min_ms']:>8.3f}")
        t = r["step_total"]
        print(f"{r['items']:>9} {'sum':>5} {'':>5} {'':>8} {t['reference_ms']:>9.3f} {t['ext_ms']:>8.3f} {t['speedup']:>7.1f}x")
        s = r["search"]
        print(f"{r['items']:>9} {'search':>5} {'':>5} {'':>8} {s['reference_ms']:>9.3f} {s['ext_ms']:>8.3f} {s['speedup']:>7.1f}x"
              f" {s['reference_min_ms']:>9.3f} {s['ext_min_ms']:>8.3f}"
              f"   (index build {r['index_build_s']:.2f} s, {r['index_bytes'] / 2**20:.1f} MiB)")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
