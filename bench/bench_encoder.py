"""HF T5 encoder vs FastT5Encoder, side by side in one run (docs/architecture.md, "Measuring speed": "a faster
encoder path ... is measured as its own line").

    python bench/bench_encoder.py                      # paper TIGER config, batches 1 8 32 128
    python bench/bench_encoder.py --repeats 30 --padded-batches 32 128 --compile

Workloads (random weights, fp32, --threads intra-op threads):
  full    every user has --items history items: T = 1 + 4*items + 1 = 82, no padding
  padded  histories of 1..--items items (uniform), right padded to 82 (real data looks like this)
Providers:
  hf         model.get_encoder()(input_ids, attention_mask).last_hidden_state (HF's default sdpa attention)
  fast       FastT5Encoder.from_hf(model): equal to hf at every position
  fast-skip  FastT5Encoder(skip_padding=True): equal on real tokens, zeros at padding (padded workload only)
  *-compiled torch.compile of the provider (--compile; compile time reported, not timed)
Providers alternate inside every repeat (order rotated), so each sees the same machine load;
speed-up = median(hf) / median(provider), and paired = median over repeats of hf_i / provider_i.
Process CPU time per call (cpu_median_ms) is recorded too: on a shared machine it moves less
than wall time at 1 thread (at 2 threads it includes OpenMP spin-waiting).
Writes bench/results/encoder.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import common
from sidmlp_kernels import FastT5Encoder, TokenLayout, build_t5_teacher
from sidmlp_kernels.teacher.fast_encoder import mkldnn_linear_available

try:
    from tqdm import tqdm
except ImportError:  # progress bar is a nicety, never a requirement
    def tqdm(it, **_):
        return it

K, L = 256, 4  # TIGER: 4 digits of 256 codes
LAYOUT = TokenLayout((K,) * L)  # pad 0, digit tokens, EOS, one user token


def paper_t5(seed: int):
    """Random paper-config TIGER T5 (4 layers, d_model 128, d_ff 1024, 6 heads x 64, ReLU)."""
    return build_t5_teacher(LAYOUT, "paper", seed=seed).eval()


def histories(batch: int, items: int, padded: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[user, SID tokens of random codes..., EOS], right padded to 1 + L*items + 1."""
    g = torch.Generator().manual_seed(seed)
    seq = 1 + L * items + 1
    ids = torch.full((batch, seq), LAYOUT.pad_id, dtype=torch.long)
    mask = torch.zeros(batch, seq, dtype=torch.long)
    counts = torch.randint(1, items + 1, (batch,), generator=g) if padded else torch.full((batch,), items)
    for b, n in enumerate(counts.tolist()):
        codes = LAYOUT.codes_to_tokens(torch.randint(0, K, (n, L), generator=g))
        row = torch.cat([torch.tensor([LAYOUT.user_base]), codes.reshape(-1), torch.tensor([LAYOUT.eos_id])])
        ids[b, : row.numel()] = row
        mask[b, : row.numel()] = 1
    return ids, mask


def run_case(providers: dict, repeats: int, warmup: int) -> dict:
    """Alternating timing of every provider (common.run_interleaved); per-provider stats in ms."""
    samples, _ = common.run_interleaved({n: (lambda ph, fn=fn: fn()) for n, fn in providers.items()},
                                        repeats=repeats, warmup=warmup, budget_s=None)
    times = {n: [x.wall_ms for x in ss] for n, ss in samples.items()}
    out = {}
    for n, ss in samples.items():
        st = common.stats_of(ss)
        out[n] = {k: st[k] for k in ("median_ms", "p25_ms", "p75_ms", "min_ms", "cpu_median_ms", "times_ms")}
    base = times.get("hf")
    if base:
        for n in out:
            out[n]["speedup"] = out["hf"]["median_ms"] / out[n]["median_ms"]
            out[n]["paired_speedup"] = statistics.median(h / t for h, t in zip(base, times[n]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--padded-batches", type=int, nargs="*", default=[32], help="batches of the padded workload")
    p.add_argument("--items", type=int, default=20, help="history items per user (T = 4*items + 2)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15,
                   help="timed repeats at batch >= 32; smaller batches get up to 10x more (they are noisier)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd hf and fast")
    p.add_argument("--out", default=str(common.RESULTS / "encoder.json"),
                   help="JSON path (default bench/results/encoder.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = paper_t5(args.seed)
    enc = model.get_encoder()
    fast = FastT5Encoder.from_hf(model)
    fast_skip = FastT5Encoder.from_hf(model, skip_padding=True)
    compiled = {}
    if args.compile:
        compiled["hf-compiled"] = torch.compile(enc, dynamic=False)
        compiled["fast-compiled"] = torch.compile(FastT5Encoder.from_hf(model, backend="mm"), dynamic=False)

    cases = [("full", b) for b in args.batches] + [("padded", b) for b in args.padded_batches]
    results = []
    load_before = os.getloadavg()
    for workload, b in tqdm(cases, desc="encoder bench", unit="case"):
        ids, mask = histories(b, args.items, workload == "padded", args.seed + b)
        provs = {
            "hf": lambda: enc(input_ids=ids, attention_mask=mask).last_hidden_state,
            "fast": lambda: fast(ids, mask),
        }
        if workload == "padded":
            provs["fast-skip"] = lambda: fast_skip(ids, mask)
        compile_s = {}
        with torch.inference_mode():
            ref = provs["hf"]()
            real = mask.bool()
            err = {n: float((provs[n]() - ref)[real].abs().max()) for n in provs}
            for name, mod in compiled.items():
                fn = (lambda m=mod: m(input_ids=ids, attention_mask=mask).last_hidden_state) if name.startswith("hf") \
                    else (lambda m=mod: m(ids, mask))
                t0 = time.perf_counter()
                out = fn()  # compiles for this shape
                compile_s[name] = time.perf_counter() - t0
                err[name] = float((out - ref)[real].abs().max())
                provs[name] = fn
            reps = args.repeats * min(10, max(1, 32 // b))
            stats = run_case(provs, reps, args.warmup)
        results.append({
            "workload": workload, "batch": b, "seq_len": ids.shape[1], "repeats": reps,
            "real_token_fraction": float(mask.float().mean()), "providers": stats,
            "max_abs_err_vs_hf_real_tokens": err, "compile_s": compile_s,
        })

    record = {
        "benchmark": "t5 encoder (TIGER paper config): HF vs FastT5Encoder",
        "machine": dict(common.machine_info(), mkldnn_linear=mkldnn_linear_available()), "threads": args.threads, "dtype": "float32", "repeats": args.repeats,
        "warmup": args.warmup, "items": args.items, "hf_attn_implementation": enc.config._attn_implementation,
        "fast_backend": fast.resolved_backend, "fast_qkv_table": fast.use_table,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))

    names = []
    for r in results:
        names += [n for n in r["providers"] if n not in names]
    print(f"\nT5 encoder, paper config, fp32, {args.threads} threads, median of {args.repeats}+ repeats "
          f"(p25-p75) ms; x = speed-up vs hf (ratio of medians / median of paired ratios)")
    print(f"machine: {record['machine']['cpu']}, torch {torch.__version__}, fast backend {fast.resolved_backend}, "
          f"load avg {load_before[0]:.1f} -> {record['loadavg_after'][0]:.1f}")
    header = f"{'workload':8s} {'B':>4s} {'real':>5s} " + " ".join(f"{n:>30s}" for n in names)
    print(header)
    for r in results:
        cells = []
        for n in names:
            s = r["providers"].get(n)
            if s is None:
                cells.append(f"{'-':>30s}")
                continue
            ms = f"{s['median_ms']:.2f} ({s['p25_ms']:.1f}-{s['p75_ms']:.1f})"
            x = "" if n == "hf" else f" {s['speedup']:.2f}x/{s['paired_speedup']:.2f}x"
            cells.append(f"{ms + x:>30s}")
        print(f"{r['workload']:8s} {r['batch']:4d} {r['real_token_fraction']:5.2f} " + " ".join(cells))
    worst = max(max(r["max_abs_err_vs_hf_real_tokens"].values()) for r in results)
    print(f"max |fast - hf| on real tokens over all cases: {worst:.2e}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
