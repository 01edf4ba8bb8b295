"""Component breakdown of one SID-MLP generate() call, so the next optimisation target is visible.

    python bench/breakdown.py                                  # ML-100K, batch 32, beam 50, cpu backend
    python bench/breakdown.py --catalog ml-100k=/tmp/prep100k --backend reference --profile
    python bench/breakdown.py --catalog syn-2000 --batch 4 --beam 10 --repeats 2 --out /tmp/breakdown.json

--backend names a decode backend as SIDMLP_BACKEND does: cpu (C++ extension ops) or reference
(PyTorch). Stages (modules under sidmlp_kernels.decode), timed one after the other inside every
repeat (medians over repeats after warm-up):
  encoder             the teacher's T5 encoder (HF), as AcceleratedRecommender.encode runs it
  context readout     SIDMLP.context: pooled query, single-query cross-attention, FFN
  context projection  folded.project_context: ctx @ W_ctx per head, once per user
  digit l: head       the folded head on the live beams (gather-add, LayerNorm, GELU, hidden -> K);
                      cpu backend: backends._head_logits_cpu (dense GEMM or valid-children dot products)
  digit l: beam step  constraint + top-k: constrained.ConstrainedIndex.beam_step (cpu) or
                      catalog.valid_children + reference.beam_step_reference (reference)
  digit l: bookkeeping prefix extension (search.extend_prefixes: parents' prefixes + new digit)
  final lookup        constrained.ConstrainedIndex.finalize (cpu) or reference.finalize_beams (reference)
Each digit step is compared with its floor, the bare GEMM of the same shape
(torch.mm of the (B*W_l, H) hidden rows with the (H, K) output weight), timed in the same round.
The staged pipeline is checked to return decode_folded's items; its sum is compared with
a whole generate() timed in the same rounds. Writes bench/results/breakdown.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

import common
from common import fmt_ms, load_catalog_case, make_inputs, summarize


class StageClock:
    """Accumulates wall ms per named stage within one round."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1e3
        return out


def staged_generate(models, catalog, ids, mask, beam: int, top_n: int, backend: str, clock: StageClock,
                    shapes: Optional[list] = None):
    """SID-MLP generate split into its stages (same ops as decode.backends.decode_folded for `backend`)."""
    from sidmlp_kernels.decode import backends as bk
    from sidmlp_kernels.decode import constrained as cs
    from sidmlp_kernels.decode.folded import folded_logits, project_context
    from sidmlp_kernels.decode.reference import beam_step_reference, finalize_beams
    from sidmlp_kernels.decode.search import extend_prefixes

    rec = models.sidmlp
    folded = rec.folded
    enc = clock.run("encoder", lambda: rec.encode(ids, mask))
    ctx = clock.run("context readout", lambda: rec.student.context(enc.states.float(), enc.mask))
    ctx_proj = clock.run("context projection", lambda: project_context(folded, ctx))
    batch, num_levels = ids.shape[0], catalog.num_levels
    scores = torch.zeros(batch, 1)
    prefixes = torch.zeros(batch, 1, 0, dtype=torch.long)
    if backend == "cpu":
        index = cs.index_for(catalog, ctx.device)
        states = torch.zeros(batch, 1, dtype=torch.long)
        for level in range(num_levels):
            logits = clock.run(f"digit {level}: head", lambda: bk._head_logits_cpu(
                folded, level, ctx_proj[level], prefixes, states, index))
            if shapes is not None:
                shapes.append((level, batch * prefixes.shape[1]))
            scores, parents, tokens, new_state = clock.run(f"digit {level}: beam step", lambda: index.beam_step(
                logits, scores, cs.PrefixState(states, level), beam))
            states = new_state.nodes
            if level + 1 < num_levels:
                prefixes = clock.run(f"digit {level}: bookkeeping", lambda: extend_prefixes(prefixes, parents, tokens))
        return clock.run("final lookup", lambda: index.finalize(cs.PrefixState(states, num_levels), scores, top_n))
    if backend != "reference":
        raise ValueError(f"breakdown covers the 'cpu' and 'reference' backends, got {backend!r}")
    for level in range(num_levels):
        logits = clock.run(f"digit {level}: head", lambda: folded_logits(folded, level, ctx_proj[level], prefixes))
        if shapes is not None:
            shapes.append((level, batch * prefixes.shape[1]))
        width, k = prefixes.shape[1], catalog.codebook_sizes[level]

        def step():
            valid = catalog.valid_children(prefixes.reshape(batch * width, level)).reshape(batch, width, k)
            valid &= torch.isfinite(scores).unsqueeze(-1)
            return beam_step_reference(logits, scores, valid, beam)

        scores, parents, tokens = clock.run(f"digit {level}: beam step", step)
        prefixes = clock.run(f"digit {level}: bookkeeping", lambda: extend_prefixes(prefixes, parents, tokens))
    return clock.run("final lookup", lambda: finalize_beams(catalog, prefixes, scores, top_n))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time the stages; returns the report (also written as JSON)."""
    from sidmlp_kernels.decode.types import Encoded
    from sidmlp_kernels.decode.backends import decode_folded

    threads = common.set_threads(args.threads)
    load_start = common.loadavg()
    case = load_catalog_case(args.catalog, args.prepared_root, args.syn_k, args.syn_levels, args.seed)
    models = common.build_models(case.catalog, args.preset, args.seed, head_hidden=args.head_hidden)
    ids, mask = make_inputs(case, models.layout, args.batch, args.history, args.seed)
    cat, beam, top_n, backend = case.catalog, args.beam, args.top_n, args.backend
    folded = models.sidmlp.folded
    rec, pp = models.sidmlp, models.sidmlp_pp

    def whole():
        return decode_folded(rec.folded, rec.context_projection(rec.encode(ids, mask)), cat, beam, top_n, backend)

    with torch.inference_mode():
        shapes: list = []
        staged = staged_generate(models, cat, ids, mask, beam, top_n, backend, StageClock(), shapes)
        reference = whole()
        matches = bool(torch.equal(staged.items.cpu(), reference.items.cpu()))
        # Floors: the bare (B*W_l, H) x (H, K_l) GEMM of each digit, on random rows of that shape.
        g = torch.Generator().manual_seed(args.seed)
        floors = {level: (torch.randn(rows, folded.out_weight[level].shape[1], generator=g),
                          folded.out_weight[level]) for level, rows in shapes}
        extra: dict[str, Callable[[], Any]] = {
            "generate() (decode_folded, one call)": whole,
            "alt: FastT5Encoder": lambda: models.fast_encoder(ids, mask),
            "alt: MLP encoder (SID-MLP++)": lambda: pp.encoder(ids, mask),
            "alt: SID-MLP++ generate()": lambda: decode_folded(pp.folded, pp.context_projection(pp.encode(ids, mask)),
                                                               cat, beam, top_n, backend),
            "alt: SID-MLP generate() on FastT5Encoder": lambda: decode_folded(
                rec.folded, rec.context_projection(Encoded(models.fast_encoder(ids, mask), mask.bool())),
                cat, beam, top_n, backend),
        }
        rounds: list[dict[str, float]] = []
        for r in range(args.warmup + args.repeats):
            clock = StageClock()
            staged_generate(models, cat, ids, mask, beam, top_n, backend, clock)
            for level, (x, w) in floors.items():
                clock.run(f"digit {level}: floor GEMM", lambda: torch.mm(x, w.t()))
            names = list(extra)
            k = r % len(names)
            for name in names[k:] + names[:k]:  # rotate who goes first
                clock.run(name, extra[name])
            if r >= args.warmup:
                rounds.append(clock.ms)
        prof_rows = profile_generate(whole, args.profile_rows) if args.profile else None

    names = list(rounds[0])
    med = {n: summarize([r[n] for r in rounds]) for n in names}
    stage_names = [n for n in names if not n.startswith(("alt:", "generate()")) and "floor" not in n]
    total = statistics.median([sum(r[n] for n in stage_names) for r in rounds])
    rows = []
    for n in stage_names:
        m = med[n]["median_ms"]
        rows.append({"component": n, "median_ms": m, "iqr_ms": med[n]["iqr_ms"], "share": m / total})
    digits = []
    for level, rows_l in shapes:
        step_keys = [f"digit {level}: head", f"digit {level}: beam step"]
        step = statistics.median([sum(r[k] for k in step_keys) for r in rounds])
        head = med[f"digit {level}: head"]["median_ms"]
        floor = med[f"digit {level}: floor GEMM"]["median_ms"]
        h = int(folded.out_weight[level].shape[1])
        k = int(folded.out_weight[level].shape[0])
        digits.append({"level": level, "gemm_shape": [rows_l, h, k], "head_ms": head,
                       "beam_step_ms": med[f"digit {level}: beam step"]["median_ms"], "step_ms": step,
                       "floor_gemm_ms": floor, "step_vs_floor": step / floor, "head_vs_floor": head / floor,
                       "within_2x_of_floor": step <= 2 * floor})
    report = {
        "benchmark": "sidmlp generate() component breakdown",
        "command": " ".join(sys.argv),
        "machine": common.machine_info(),
        "config": {"catalog": case.name, "num_items": cat.num_items, "source": case.source, "batch": args.batch,
                   "beam": beam, "top_n": top_n, "backend": backend, "threads": threads, "dtype": "float32",
                   "repeats": args.repeats, "warmup": args.warmup, "seq_len": int(ids.shape[1]),
                   "models": models.config},
        "load_average": {"start": load_start, "end": common.loadavg()},
        "staged_matches_decode_folded": matches,
        "stages": rows,
        "stages_total_ms": total,
        "others": {n: med[n] for n in names if n.startswith(("alt:", "generate()"))},
        "digit_steps_vs_floor": digits,
        "profile_top_ops": prof_rows,
    }
    out = Path(args.out) if args.out else common.RESULTS / "breakdown.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    report["path"] = str(out)
    return report


def profile_generate(fn: Callable[[], Any], top: int = 15) -> list[dict[str, Any]]:
    """torch.profiler over a few generate() calls: top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            fn()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return [{"op": e.key, "calls": e.count // 3, "self_cpu_ms_per_call": e.self_cpu_time_total / 3e3,
             "share": e.self_cpu_time_total / total} for e in events]


def print_report(rep: dict[str, Any]) -> None:
    """Tables: stages with shares, digit steps vs floor, alternatives, profile."""
    c = rep["config"]
    print(f"\nSID-MLP generate() breakdown: {c['catalog']} ({c['num_items']} items), batch {c['batch']}, "
          f"beam {c['beam']}, backend {c['backend']}, {c['threads']} threads, fp32, T={c['seq_len']}; "
          f"medians of {c['repeats']}; load {rep['load_average']['start']} -> {rep['load_average']['end']}; "
          f"staged == decode_folded: {rep['staged_matches_decode_folded']}")
    print(f"{'component':<28}{'median ms':>11}{'IQR':>9}{'share':>8}")
    for r in rep["stages"]:
        print(f"{r['component']:<28}{fmt_ms(r['median_ms']):>11}{fmt_ms(r['iqr_ms']):>9}{r['share']:>8.1%}")
    print(f"{'sum of stages':<28}{fmt_ms(rep['stages_total_ms']):>11}")
    for n, s in rep["others"].items():
        print(f"{n:<44}{fmt_ms(s['median_ms']):>11}{fmt_ms(s['iqr_ms']):>9}")
    print(f"\n{'digit':>5} {'GEMM (M,H,K)':>18} {'head ms':>9} {'step ms':>9} {'floor ms':>9} {'step/floor':>11}")
    for d in rep["digit_steps_vs_floor"]:
        shape = "x".join(map(str, d["gemm_shape"]))
        print(f"{d['level']:>5} {shape:>18} {fmt_ms(d['head_ms']):>9} {fmt_ms(d['step_ms']):>9} "
              f"{fmt_ms(d['floor_gemm_ms']):>9} {d['step_vs_floor']:>10.2f}x"
              f"{'' if d['within_2x_of_floor'] else '  (> 2x floor)'}")
    if rep.get("profile_top_ops"):
        print(f"\n{'op (torch.profiler, generate())':<44}{'calls':>6}{'self ms':>10}{'share':>8}")
        for p in rep["profile_top_ops"]:
            print(f"{p['op'][:43]:<44}{p['calls']:>6}{p['self_cpu_ms_per_call']:>10.2f}{p['share']:>8.1%}")
    print(f"\nwrote {rep['path']}")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", default="ml-100k", help="ml-100k[=DIR], ml-1m[=DIR] or syn-<n> (see bench/e2e.py)")
    p.add_argument("--prepared-root", default="runs/prepared")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--beam", type=int, default=50)
    p.add_argument("--top-n", type=int, default=10)
    p.add_argument("--backend", default="cpu", choices=("cpu", "reference"))
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--preset", default="paper")
    p.add_argument("--head-hidden", type=int, default=512)
    p.add_argument("--history", type=int, default=20)
    p.add_argument("--syn-k", type=int, default=256)
    p.add_argument("--syn-levels", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="also torch.profiler over generate(): top ops")
    p.add_argument("--profile-rows", type=int, default=15)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/breakdown.json)")
    args = p.parse_args(argv)
    print_report(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
