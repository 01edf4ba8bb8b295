"""End-to-end decoding benchmark: HF generate vs our attention decode vs SID-MLP (every backend) vs SID-MLP++.

    python bench/e2e.py                          # default sweep (~10 min on 2 shared cores)
    python bench/e2e.py --catalogs ml-100k=/tmp/prep100k ml-1m=/tmp/prep1m syn-100k syn-1m
    python bench/e2e.py --full                   # whole grid, HF everywhere (hours on 2 cores)

Same inputs and same weights for every provider in a cell (one random paper-config TIGER T5
teacher; a random paper-size SID-MLP student on its encoder; SID-MLP++ = the same heads on a
random MLP encoder). Providers (docs/architecture.md, "Measuring speed"):

  hf_generate            HF generate: unconstrained beam search with KV cache, L+1 new tokens,
                         invalid beams dropped (sidmlp_kernels.teacher.attention_decode.hf_generate)
  attention_constrained  our attention decode: KV cache, cross-attn K/V once per user, catalog
                         constrained (sidmlp_kernels.teacher.attention_decode.attention_beam_search)
  hf_encoder             the T5 encoder alone (HF); the floor of every provider that keeps it
  fast_encoder           FastT5Encoder alone (exact T5 encoder), its own line
  mlp_encoder            the SID-MLP++ MLP encoder alone
  sidmlp[B]              SID-MLP generate on decode backend B (reference | cpu | triton, as
                         SIDMLP_BACKEND names them): HF encoder -> readout -> context projection
                         -> sidmlp_kernels.decode.backends.decode_folded(backend=B)
  sidmlp[B]+fast_encoder the same on FastT5Encoder (own line: a faster encoder is never hidden
                         inside the SID-MLP ratios)
  sidmlp++[B]            SID-MLP++ generate (MLP encoder) on the best backend (the automatic
                         choice; SIDMLP_BACKEND overrides it)

Timing: providers alternate inside every round (rotated order), medians and IQR over repeats
after warm-up; slow providers get fewer repeats (--budget-s) and non-headline cells skip
providers whose call is estimated over --max-call-s (noted in the JSON). Decode phase =
everything after the encoder: measured inside the SID-MLP calls, and total minus the HF
encoder's median for the attention baselines (their encoder runs inside generate).
Outputs: bench/results/TAG.json, TAG.csv, TAG_headline.md and PNG plots (bench/plots.py).
This script is the end-to-end benchmark's only entry point (the package has no `bench` command).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

import common
from common import (
    LargestTensors,
    fmt_ms,
    fmt_x,
    load_catalog_case,
    make_inputs,
    run_interleaved,
    stats_of,
)

FORMAT_VERSION = 1
HF, ATTN, HF_ENC = "hf_generate", "attention_constrained", "hf_encoder"
ENCODERS = (HF_ENC, "fast_encoder", "mlp_encoder")  # encoder-only lines (no decode, no ratios)
# Speed targets (CPU, batch 32, beam 50, paper config, fp32): see docs/architecture.md, "Measuring speed".
TARGETS = (
    ("sidmlp_e2e_vs_hf_generate", "sidmlp", HF, "e2e", 50.0),
    ("sidmlp_e2e_vs_attention_constrained", "sidmlp", ATTN, "e2e", 8.74),
    ("sidmlp_decode_vs_attention_constrained", "sidmlp", ATTN, "decode", 8.74),
    ("sidmlpPP_e2e_vs_attention_constrained", "sidmlp++", ATTN, "e2e", 15.0),
)


def _log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- providers


def available_backends(device: str, requested: Optional[list[str]]) -> tuple[list[str], str, dict[str, str]]:
    """(backends to time, the automatic choice, why others are out) for `device`."""
    from sidmlp_kernels.decode.backends import BACKENDS, select_backend

    dev = torch.device(device)
    names = list(requested) if requested else list(BACKENDS)
    ok, why = [], {}
    for b in names:
        if b == "triton" and dev.type != "cuda" and not requested:
            why[b] = "triton runs on CUDA only (CPU needs TRITON_INTERPRET: a correctness tool, not a speed path)"
            continue
        try:
            select_backend(dev, b)
            ok.append(b)
        except (RuntimeError, ValueError) as err:
            why[b] = str(err)
    best = select_backend(dev)
    if best not in ok:
        ok.append(best)
    return ok, best, why


def make_providers(models, case, ids, mask, beam: int, top_n: int, backends: list[str], best: str,
                   wanted: Optional[set[str]], device: str) -> dict[str, Any]:
    """name -> fn(phases) for one cell; every provider sees the same inputs and weights."""
    from sidmlp_kernels.decode.types import Encoded
    from sidmlp_kernels.teacher.attention_decode import attention_beam_search, hf_generate
    from sidmlp_kernels.decode.backends import decode_folded

    cat, layout, teacher = case.catalog, models.layout, models.teacher
    out: dict[str, Any] = {}

    def want(family: str) -> bool:
        return wanted is None or family in wanted

    if want(HF):
        out[HF] = lambda ph: hf_generate(teacher, layout, cat, ids, mask, beam, top_n)
    if want(ATTN):
        out[ATTN] = lambda ph: attention_beam_search(teacher, layout, cat, ids, mask, beam, top_n, constrained=True)
    if want(HF_ENC):
        out[HF_ENC] = lambda ph: teacher.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    if want("fast_encoder") and models.fast_encoder is not None:
        out["fast_encoder"] = lambda ph: models.fast_encoder(ids, mask)
    if want("mlp_encoder"):
        out["mlp_encoder"] = lambda ph: models.sidmlp_pp.encoder(ids, mask)

    def generate(rec, backend, encode=None):
        def fn(ph):
            with ph("encode"):
                enc = rec.encode(ids, mask) if encode is None else encode()
            with ph("decode"):
                return decode_folded(rec.folded, rec.context_projection(enc), cat, beam, top_n, backend=backend)

        return fn

    if want("sidmlp"):
        for b in backends:
            out[f"sidmlp[{b}]"] = generate(models.sidmlp, b)
    if want("sidmlp+fast_encoder") and models.fast_encoder is not None:
        out[f"sidmlp[{best}]+fast_encoder"] = generate(
            models.sidmlp, best, lambda: Encoded(models.fast_encoder(ids, mask), mask.bool()))
    if want("sidmlp++"):
        out[f"sidmlp++[{best}]"] = generate(models.sidmlp_pp, best)
    return out


def _family(name: str) -> str:
    if name.startswith("sidmlp++"):
        return "sidmlp++"
    if name.startswith("sidmlp") and name.endswith("+fast_encoder"):
        return "sidmlp+fast_encoder"
    if name.startswith("sidmlp["):
        return "sidmlp"
    return name


def _units(name: str, batch: int, beam: int) -> int:
    """Work units a call scales with: users for encoders, users x beams for decoders."""
    return batch if name in ENCODERS else batch * beam


# ---------------------------------------------------------------- result checks


def _valid_fraction(out) -> Optional[float]:
    items = getattr(out, "items", None)
    if not isinstance(items, torch.Tensor):
        return None
    return float((items >= 0).float().mean())


def _same_items(a, b) -> Optional[float]:
    """Fraction of users whose ranked items agree exactly."""
    ia, ib = getattr(a, "items", None), getattr(b, "items", None)
    if not isinstance(ia, torch.Tensor) or not isinstance(ib, torch.Tensor) or ia.shape != ib.shape:
        return None
    return float((ia.cpu() == ib.cpu()).all(dim=1).float().mean())


def annotate_cell(cell: dict[str, Any], outputs: dict[str, Any], best: str) -> None:
    """Ratios vs both attention baselines (end to end and decode phase), users/s, result sanity."""
    prov = cell["providers"]
    batch = cell["batch"]
    enc = prov.get(HF_ENC, {}).get("median_ms")
    for name, p in prov.items():
        med = p.get("median_ms")
        if med is None:
            continue
        p["users_per_s"] = batch / (med / 1e3)
        if "phases" in p and "decode" in p["phases"]:
            p["decode_phase_ms"] = p["phases"]["decode"]["median_ms"]
            p["decode_phase_method"] = "measured inside the call (everything after the encoder)"
        elif name in (HF, ATTN) and enc is not None:
            p["decode_phase_ms"] = med - enc
            p["decode_phase_method"] = "total median - hf_encoder median"
    for base, key in ((HF, "hf"), (ATTN, "attention")):
        b = prov.get(base)
        if not b or b.get("median_ms") is None:
            continue
        for name, p in prov.items():
            if p.get("median_ms") is None or name in ENCODERS:
                continue
            p[f"speedup_vs_{key}"] = b["median_ms"] / p["median_ms"]
            bd, pd = b.get("decode_phase_ms"), p.get("decode_phase_ms")
            if bd is not None and pd and pd > 0:
                p[f"decode_speedup_vs_{key}"] = bd / pd
    ref = outputs.get("sidmlp[reference]")
    for name, out in outputs.items():
        if name not in prov:
            continue
        vf = _valid_fraction(out)
        if vf is not None:
            prov[name]["valid_fraction"] = vf
        if hasattr(out, "num_invalid"):
            prov[name]["invalid_beams_returned"] = int(out.num_invalid.sum())
        if name.startswith("sidmlp") and name != "sidmlp[reference]" and ref is not None and "++" not in name:
            prov[name]["same_items_as_reference"] = _same_items(out, ref)


def memory_pass(providers: dict[str, Any], device: str) -> dict[str, Optional[float]]:
    """Peak RSS growth (MiB) of one call per provider, every buffer >= 64 KiB on fresh pages."""
    fresh = common.fresh_page_allocator()
    out: dict[str, Optional[float]] = {}
    with torch.inference_mode():
        for name, fn in providers.items():
            common.trim_heap()
            sample, _ = common.time_call(fn, device)
            out[name] = sample.peak_rss_delta_mib if fresh else None
    return out


def memory_check(models, case, ids, mask, beam: int, top_n: int, backends: list[str], best: str) -> dict[str, Any]:
    """Largest tensor each student decode creates after the encoder vs one per-beam copy of the encoder output."""
    from sidmlp_kernels.decode.backends import decode_folded

    result: dict[str, Any] = {}
    recs = [(f"sidmlp[{b}]", models.sidmlp, b) for b in backends] + [(f"sidmlp++[{best}]", models.sidmlp_pp, best)]
    with torch.inference_mode():
        for name, rec, backend in recs:
            enc = rec.encode(ids, mask)
            enc_bytes = enc.states.numel() * enc.states.element_size()
            with LargestTensors(keep=5) as probe:
                decode_folded(rec.folded, rec.context_projection(enc), case.catalog, beam, top_n, backend=backend)
            per_beam = beam * enc_bytes
            result[name] = {
                "encoder_output_shape": list(enc.states.shape),
                "encoder_output_bytes": enc_bytes,
                "per_beam_copy_bytes": per_beam,
                "largest_tensor_bytes": probe.largest_bytes,
                "largest_vs_encoder_output": probe.largest_bytes / enc_bytes,
                "largest_tensors": probe.report(),
                "tensors_created": probe.num_tensors,
                "bytes_created": probe.total_bytes,
                "no_per_beam_encoder_copy": probe.largest_bytes < per_beam,
            }
    return result


# ---------------------------------------------------------------- the sweep


def _parse_cell(text: str, n: int, what: str) -> list[str]:
    parts = text.split(":")
    if len(parts) != n:
        raise ValueError(f"{what} must look like {'CATALOG:BATCH:BEAM' if n == 3 else 'BATCH:BEAM'}, got {text!r}")
    return parts


def plan_cells(args, names: list[str]) -> tuple[list[tuple[str, int, int]], tuple[str, int, int]]:
    """Cells (catalog, batch, beam) in run order (cheap first per catalog) and the headline cell."""
    hc, hb, hw = _parse_cell(args.headline, 3, "--headline")
    headline_cat = hc if hc in names else names[0]
    headline = (headline_cat, int(hb), int(hw))
    cb, cw = (int(x) for x in _parse_cell(args.catalog_cell, 2, "--catalog-cell"))
    cells = []
    for name in [headline_cat] + [n for n in names if n != headline_cat]:
        if args.full or name == headline_cat:
            grid = {(b, w) for b in args.batches for w in args.beams}
            if name == headline_cat:
                grid.add((headline[1], headline[2]))
        else:
            grid = {(cb, cw)}
        cells += [(name, b, w) for b, w in sorted(grid, key=lambda bw: (bw[0] * bw[1], bw[0]))]
    return cells, headline


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the sweep; returns the report (also written as JSON/CSV/markdown/PNG)."""
    from sidmlp_kernels.decode.constrained import has_extension

    repeats = args.repeats or (15 if args.full else 9)
    budget_s = args.budget_s if args.budget_s is not None else (60.0 if args.full else 20.0)
    max_call_s = args.max_call_s if args.max_call_s is not None else (600.0 if args.full else 45.0)
    threads = common.set_threads(args.threads)
    device = args.device
    for v, name in ((args.top_n, "--top-n"), (repeats, "--repeats"), (args.history, "--history")):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if any(w < args.top_n for w in args.beams):
        raise ValueError(f"every beam in --beams must be >= --top-n ({args.top_n}), got {args.beams}")
    out_dir = Path(args.out) if args.out else common.RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(args.providers) if args.providers else None
    backends, best, backend_notes = available_backends(device, args.backends)
    load_start = common.loadavg()
    t_start = time.perf_counter()
    _log(f"threads {threads}, device {device}, backends {backends} (auto: {best}), repeats <= {repeats}, "
         f"budget {budget_s:.0f} s per provider and cell, load {load_start}")

    cases: dict[str, Any] = {}
    for spec in args.catalogs:
        case = load_catalog_case(spec, args.prepared_root, args.syn_k, args.syn_levels, args.seed)
        if case.name in cases:
            raise ValueError(f"catalog {case.name!r} is given twice in --catalogs")
        cases[case.name] = case
        _log(f"catalog {case.name}: {case.catalog.num_items} items, {case.source} ({case.build_s:.1f} s)")
    cells, headline = plan_cells(args, list(cases))
    models_by_sizes: dict[tuple, Any] = {}
    estimates: dict[str, tuple[float, int]] = {}  # provider -> (ms per unit, units it was measured at)
    report_cells: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    headline_ctx = None

    progress = None
    if not args.no_progress:
        try:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(cells), desc="cells", unit="cell", leave=True)
        except ImportError:
            progress = None
    for name, batch, beam in cells:
        case = cases[name]
        sizes = tuple(case.catalog.codebook_sizes)
        if sizes not in models_by_sizes:
            models_by_sizes[sizes] = common.build_models(
                case.catalog, args.preset, args.seed, head_hidden=args.head_hidden, student_ffn=args.student_ffn,
                mlp_ffn=args.mlp_ffn, mlp_layers=args.mlp_layers, device=device)
        models = models_by_sizes[sizes]
        ids, mask = make_inputs(case, models.layout, batch, args.history, args.seed)
        ids, mask = ids.to(device), mask.to(device)
        is_headline = (name, batch, beam) == headline
        providers = make_providers(models, case, ids, mask, beam, args.top_n, backends, best, wanted, device)
        skipped: dict[str, str] = {}
        if not args.full and name != headline[0] and HF in providers:
            skipped[HF] = ("runs on the headline catalog only by default (its cost does not depend on the "
                           "catalog: unconstrained over K codes per digit); --full times it here")
            del providers[HF]
        warm: dict[str, int] = {}
        for p in list(providers):
            est = None
            if p in estimates:
                per_unit, _ = estimates[p]
                est = per_unit * _units(p, batch, beam)
            if est is not None and est > max_call_s * 1e3 and not is_headline:
                skipped[p] = f"estimated {est / 1e3:.0f} s per call > --max-call-s {max_call_s:.0f}"
                del providers[p]
                continue
            warm[p] = args.warmup if est is None or est < 2000 else 0
        _log(f"cell {name} batch {batch} beam {beam}: {len(providers)} providers"
             + (f", skipped {sorted(skipped)}" if skipped else ""))
        with torch.inference_mode():
            samples, outputs = run_interleaved(
                providers, repeats=repeats, min_repeats=max(args.min_repeats, 3 if is_headline else 1),
                warmup=warm, budget_s=budget_s, device=device)
        prov = {}
        for p, ss in samples.items():
            prov[p] = stats_of(ss)
            prov[p]["warmup_calls"] = warm.get(p, 0)
            units = _units(p, batch, beam)
            # Keep the estimate from the biggest cell measured so far (closest to the cells still to come).
            if p not in estimates or units >= estimates[p][1]:
                estimates[p] = (prov[p]["median_ms"] / units, units)
        cell = {
            "catalog": name, "num_items": case.catalog.num_items, "batch": batch, "beam": beam, "top_n": args.top_n,
            "seq_len": int(ids.shape[1]), "real_token_fraction": float(mask.float().mean()),
            "headline": is_headline, "providers": prov, "skipped": skipped, "loadavg": common.loadavg(),
        }
        annotate_cell(cell, outputs, best)
        report_cells.append(cell)
        if is_headline:
            headline_ctx = (models, case, ids, mask, beam, list(providers), cell)
        del outputs
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.close()
    if headline_ctx is not None and not args.no_memory_check:
        # After all timing: these passes change the allocator's settings and run under a dispatch mode.
        models, case, ids, mask, beam, names, cell = headline_ctx
        _log("memory pass on the headline cell (one call per provider, fresh pages) and per-beam-copy check")
        providers = make_providers(models, case, ids, mask, beam, args.top_n, backends, best, wanted, device)
        growth = memory_pass({n: providers[n] for n in names if n in providers}, device)
        for n, mib in growth.items():
            cell["providers"][n]["peak_rss_growth_mib"] = mib
        memory = memory_check(models, case, ids, mask, beam, args.top_n, backends, best)

    models0 = next(iter(models_by_sizes.values()))
    report = {
        "benchmark": "sidmlp-kernels end-to-end decode",
        "format_version": FORMAT_VERSION,
        "command": " ".join(sys.argv),
        "machine": common.machine_info(device),
        "config": {
            "device": device, "dtype": "float32", "threads": threads, "top_n": args.top_n,
            "history_items_synthetic": args.history, "repeats_max": repeats, "min_repeats": args.min_repeats,
            "warmup": args.warmup, "budget_s": budget_s, "max_call_s": max_call_s, "full": bool(args.full),
            "headline": {"catalog": headline[0], "batch": headline[1], "beam": headline[2]},
            "backends": backends, "auto_backend": best, "backends_unavailable": backend_notes,
            "extension": has_extension(), "models": models0.config,
            "catalogs": {n: {"num_items": c.catalog.num_items, "source": c.source,
                             "codebook_sizes": list(c.catalog.codebook_sizes)} for n, c in cases.items()},
            "decode_phase": "everything after the encoder; attention baselines: total - hf_encoder median",
            "peak_rss": ("peak_rss_delta_mib: growth of VmHWM over a timed call (reset via /proc/self/clear_refs), "
                         "max over calls, allocator caches warm; peak_rss_growth_mib (headline cell): the same "
                         "over one call after all timing, glibc serving buffers >= 64 KiB from fresh pages"),
        },
        "load_average": {"start": load_start, "end": common.loadavg()},
        "wall_s": time.perf_counter() - t_start,
        "cells": report_cells,
        "memory_check": memory,
    }
    report["targets"] = check_targets(report, best)
    report["headline_markdown"] = headline_markdown(report)
    write_outputs(report, out_dir, args.tag, plots=not args.no_plots)
    return report


# ---------------------------------------------------------------- reporting


def headline_cell(report: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The cell marked headline (None if it did not run)."""
    return next((c for c in report["cells"] if c.get("headline")), None)


def check_targets(report: dict[str, Any], best: str) -> list[dict[str, Any]]:
    """The section-6 speed targets on the headline cell: value, threshold, met."""
    cell = headline_cell(report)
    if cell is None:
        return []
    prov = cell["providers"]
    names = {"sidmlp": f"sidmlp[{best}]", "sidmlp++": f"sidmlp++[{best}]"}
    out = []
    for key, who, base, kind, threshold in TARGETS:
        p = prov.get(names[who], {})
        field = ("speedup_vs_hf" if base == HF else "speedup_vs_attention")
        if kind == "decode":
            field = "decode_" + field
        value = p.get(field)
        out.append({"target": key, "provider": names[who], "baseline": base, "phase": kind,
                    "threshold": threshold, "value": value, "met": None if value is None else value >= threshold})
    for name, p in prov.items():
        mem = p.get("peak_rss_growth_mib", p.get("peak_rss_delta_mib"))
        if mem is not None:
            out.append({"target": f"peak_rss_mib[{name}]", "provider": name, "value": mem,
                        "threshold": None, "met": None})
    return out


ORDER = (HF, ATTN, HF_ENC, "fast_encoder", "mlp_encoder")


def _sorted_names(names) -> list[str]:
    def key(n: str):
        if n in ORDER:
            return (ORDER.index(n), n)
        return (len(ORDER) + {"sidmlp": 0, "sidmlp+fast_encoder": 1, "sidmlp++": 2}.get(_family(n), 3), n)

    return sorted(names, key=key)


def headline_markdown(report: dict[str, Any]) -> str:
    """The README table: batch 32, beam 50, ML-100K (the configured headline cell)."""
    cell = headline_cell(report)
    if cell is None:
        return "(headline cell did not run)\n"
    m, cfg = report["machine"], report["config"]
    lines = [
        f"End to end, {cell['catalog']} ({cell['num_items']} items), batch {cell['batch']}, beam {cell['beam']}, "
        f"top {cell['top_n']}, {cfg['dtype']}, {m['cpu']} ({m['logical_cpus']} cores, {cfg['threads']} torch threads), "
        f"torch {m['torch']}, paper TIGER config with random weights; medians of alternating repeats; "
        f"load average {report['load_average']['start']} -> {report['load_average']['end']}.",
        "",
        "| provider | ms / batch (median, IQR) | users/s | vs HF generate | vs attention (constrained) "
        "| decode-phase ms | decode vs HF | decode vs attention | peak RSS growth MiB (one call) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in _sorted_names(cell["providers"]):
        p = cell["providers"][name]
        mem = p.get("peak_rss_growth_mib", p.get("peak_rss_delta_mib"))
        lines.append(
            f"| {name} | {fmt_ms(p.get('median_ms'))} ({fmt_ms(p.get('iqr_ms'))}, n={p.get('n')}) "
            f"| {p.get('users_per_s', 0):,.0f} | {fmt_x(p.get('speedup_vs_hf'))} | {fmt_x(p.get('speedup_vs_attention'))} "
            f"| {fmt_ms(p.get('decode_phase_ms'))} | {fmt_x(p.get('decode_speedup_vs_hf'))} "
            f"| {fmt_x(p.get('decode_speedup_vs_attention'))} | {'-' if mem is None else f'{mem:.0f}'} |"
        )
    for name, why in cell.get("skipped", {}).items():
        lines.append(f"| {name} | skipped: {why} | | | | | | | |")
    lines.append("")
    met = [t for t in report.get("targets", []) if t.get("threshold") is not None]
    if met:
        lines.append("Targets: " + "; ".join(
            f"{t['target']} {fmt_x(t['value'])} (>= {t['threshold']}x: {'met' if t['met'] else 'MISSED'})" for t in met))
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("catalog", "num_items", "batch", "beam", "top_n", "provider", "n", "median_ms", "p25_ms", "p75_ms",
              "iqr_ms", "min_ms", "cpu_median_ms", "users_per_s", "decode_phase_ms", "speedup_vs_hf",
              "speedup_vs_attention", "decode_speedup_vs_hf", "decode_speedup_vs_attention", "peak_rss_delta_mib",
              "peak_rss_growth_mib",
              "valid_fraction", "skipped")


def write_outputs(report: dict[str, Any], out_dir: Path, tag: str, plots: bool = True) -> dict[str, Path]:
    """TAG.json, TAG.csv, TAG_headline.md (+ PNG plots); returns the paths written."""
    paths = {"json": out_dir / f"{tag}.json", "csv": out_dir / f"{tag}.csv", "md": out_dir / f"{tag}_headline.md"}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_finite(report), indent=1, allow_nan=False))
    tmp.replace(paths["json"])
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for cell in report["cells"]:
            base = {k: cell[k] for k in ("catalog", "num_items", "batch", "beam", "top_n")}
            for name in _sorted_names(cell["providers"]):
                p = cell["providers"][name]
                row = dict(base, provider=name, skipped="")
                row.update({k: _round(p.get(k)) for k in CSV_FIELDS if k in p})
                w.writerow(row)
            for name, why in cell.get("skipped", {}).items():
                w.writerow(dict(base, provider=name, skipped=why))
    paths["md"].write_text(report["headline_markdown"])
    if plots:
        try:
            import plots as _plots

            paths.update(_plots.make_plots(report, out_dir, tag))
        except ImportError as err:  # matplotlib missing: numbers are still written
            print(f"[e2e] plots skipped: {err}", file=sys.stderr)
    return paths


def _finite(obj):
    """JSON-safe copy: non-finite floats become None (strict JSON has no NaN/Infinity)."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def _round(v):
    return round(v, 4) if isinstance(v, float) and math.isfinite(v) else v


def print_summary(report: dict[str, Any]) -> None:
    """Every cell as a compact table, then the headline markdown and the memory check."""
    for cell in report["cells"]:
        print(f"\n## {cell['catalog']} ({cell['num_items']} items) batch {cell['batch']} beam {cell['beam']} "
              f"(T={cell['seq_len']}, load {cell['loadavg']})")
        print(f"{'provider':<32}{'median ms':>11}{'IQR':>9}{'n':>4}{'users/s':>10}{'vs HF':>8}{'vs attn':>9}"
              f"{'decode ms':>11}{'dec vs attn':>12}{'RSS MiB':>9}")
        for name in _sorted_names(cell["providers"]):
            p = cell["providers"][name]
            mem = p.get("peak_rss_growth_mib", p.get("peak_rss_delta_mib"))
            print(f"{name:<32}{fmt_ms(p.get('median_ms')):>11}{fmt_ms(p.get('iqr_ms')):>9}{p.get('n', 0):>4}"
                  f"{p.get('users_per_s', 0):>10,.0f}{fmt_x(p.get('speedup_vs_hf')):>8}"
                  f"{fmt_x(p.get('speedup_vs_attention')):>9}{fmt_ms(p.get('decode_phase_ms')):>11}"
                  f"{fmt_x(p.get('decode_speedup_vs_attention')):>12}{'-' if mem is None else f'{mem:.0f}':>9}")
        for name, why in cell.get("skipped", {}).items():
            print(f"{name:<32} skipped: {why}")
    print("\n" + report["headline_markdown"])
    for name, mc in report.get("memory_check", {}).items():
        print(f"memory check {name}: largest tensor after the encoder {mc['largest_tensor_bytes'] / 2**20:.2f} MiB "
              f"({mc['largest_tensors'][0]['op'] if mc['largest_tensors'] else '-'}), encoder output "
              f"{mc['encoder_output_bytes'] / 2**20:.2f} MiB, a per-beam copy {mc['per_beam_copy_bytes'] / 2**20:.1f} MiB"
              f" -> {'no per-beam copy' if mc['no_per_beam_encoder_copy'] else 'PER-BEAM COPY SUSPECTED'}")


DEFAULT_CATALOGS = ("ml-100k", "ml-1m", "syn-100k", "syn-1m")
PROVIDERS = ("hf_generate", "attention_constrained", "hf_encoder", "fast_encoder", "mlp_encoder", "sidmlp",
             "sidmlp+fast_encoder", "sidmlp++")


def build_parser() -> argparse.ArgumentParser:
    """The options of bench/e2e.py."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark, print the summary, write the results."""
    args = build_parser().parse_args(argv)
    report = run(args)
    print_summary(report)
    out_dir = Path(args.out) if args.out else common.RESULTS
    print(f"\nwrote {out_dir / (args.tag + '.json')}, .csv, _headline.md"
          + ("" if args.no_plots else ", plots") + f" in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
