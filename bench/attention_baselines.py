"""Latency of the attention-decoder baselines, side by side in one run.

    python bench/attention_baselines.py                       # paper TIGER config, random weights
    python bench/attention_baselines.py --teacher RUN_DIR --prepared PREP_DIR

Lines (median ms per batch of --batch users, --beam beams):
  hf_generate            HF generate: unconstrained beam search, KV cache, L+1 new tokens, top_n returned
  t5_encoder             the HF T5 encoder alone (a floor for every decoder that keeps it)
  attention_constrained  our cached decode (cross K/V once per user, digit-restricted logits,
                         catalog-constrained reference beam step), encoder included
  attention_unconstrained  the same without the catalog mask
Each decode line also reports its decode phase (total - encoder median).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from common import CatalogCase, cpu_model, make_inputs, time_repeats
from sidmlp_kernels import SIDCatalog, TokenLayout, build_t5_teacher, load_teacher
from sidmlp_kernels.teacher.attention_decode import attention_beam_search, hf_generate


def random_catalog(num_items: int, k: int, levels: int, seed: int) -> SIDCatalog:
    """Random (L-1)-digit prefixes + a dedup digit, like RQ-VAE SIDs."""
    g = torch.Generator().manual_seed(seed)
    prefixes = torch.randint(0, k, (num_items, levels - 1), generator=g)
    keys = prefixes @ (k ** torch.arange(levels - 2, -1, -1))
    order = torch.argsort(keys, stable=True)
    sorted_keys = keys[order]
    first = torch.searchsorted(sorted_keys, sorted_keys)
    dedup = torch.empty(num_items, dtype=torch.long)
    dedup[order] = torch.arange(num_items) - first
    codes = torch.cat([prefixes, dedup.unsqueeze(1)], dim=1)
    return SIDCatalog.from_codes(torch.arange(num_items), codes, [k] * levels)


def timed(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """(median, every) wall ms of `repeats` calls after `warmup`."""
    times = time_repeats(fn, repeats, warmup)
    return statistics.median(times), times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=None, help="trained teacher run dir (default: random paper-config T5)")
    p.add_argument("--prepared", default=None, help="prepared dataset (catalog + real histories)")
    p.add_argument("--preset", default="paper")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--beam", type=int, default=50)
    p.add_argument("--top-n", type=int, default=50, help="sequences HF returns (design table: 50)")
    p.add_argument("--history", type=int, default=20, help="items per synthetic history")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--json", default=None, help="write results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.prepared:
        from sidmlp_kernels import load_prepared

        prepared = load_prepared(args.prepared)
        case = CatalogCase("prepared", prepared.catalog, prepared.split, f"prepared {args.prepared}")
    else:
        case = CatalogCase("random-1682", random_catalog(1682, 256, 4, seed=0), None, "random SIDs")
    catalog = case.catalog
    if args.teacher:
        model, layout = load_teacher(args.teacher)
    else:
        layout = TokenLayout.for_catalog(catalog)
        model = build_t5_teacher(layout, args.preset, seed=0)
    model.eval()
    # Real test histories (prepared) or random --history-item ones (seed 1).
    ids, mask = make_inputs(case, layout, args.batch, args.history, seed=1)

    rows: dict[str, dict] = {}
    with torch.inference_mode():
        enc_ms, enc_all = timed(lambda: model.encoder(input_ids=ids, attention_mask=mask), args.repeats)
        rows["t5_encoder"] = dict(median_ms=enc_ms, all_ms=enc_all)
        runs = {
            "attention_constrained": lambda: attention_beam_search(
                model, layout, catalog, ids, mask, args.beam, args.top_n, constrained=True),
            "attention_unconstrained": lambda: attention_beam_search(
                model, layout, catalog, ids, mask, args.beam, args.top_n, constrained=False),
        }
        if not args.skip_hf:
            runs = {"hf_generate": lambda: hf_generate(model, layout, catalog, ids, mask, args.beam, args.top_n),
                    **runs}
        for name, fn in runs.items():
            med, all_ms = timed(fn, args.repeats)
            rows[name] = dict(median_ms=med, all_ms=all_ms, decode_phase_ms=med - enc_ms)
    meta = dict(
        machine=cpu_model(), threads=torch.get_num_threads(), dtype="float32",
        batch=args.batch, beam=args.beam, top_n=args.top_n, repeats=args.repeats,
        teacher=args.teacher or f"random {args.preset} T5", input_tokens=int(ids.shape[1]),
        torch=torch.__version__,
    )
    print(f"# {meta}")
    print(f"{'provider':<26}{'median ms':>11}{'decode ms':>11}{'vs HF':>8}{'decode vs HF':>14}")
    hf = rows.get("hf_generate")
    for name, r in rows.items():
        dec = r.get("decode_phase_ms")
        ratio = f"{hf['median_ms'] / r['median_ms']:.1f}x" if hf else "-"
        dratio = f"{hf['decode_phase_ms'] / dec:.1f}x" if hf and dec and dec > 0 else "-"
        dec_txt = f"{dec:.1f}" if dec is not None else "-"
        print(f"{name:<26}{r['median_ms']:>11.1f}{dec_txt:>11}{ratio:>8}{dratio:>14}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(meta=meta, results=rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
