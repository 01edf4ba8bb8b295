"""bf16 inference on CPU (generate(dtype=torch.bfloat16)) against fp32: speed and quality in one run.

Speed (side by side, alternating, medians; batch B of test users, beam 50, top 10):
- the encoders alone: the trained teacher's (as SID-MLP runs it) and a random TIGER paper-config
  T5 encoder (HF), fp32 vs bf16 autocast;
- the whole generate() of the trained SID-MLP, fp32 vs bf16 (bf16 encoder; readout and heads float32),
  and, as an ablation, with the readout and heads in bf16 too (encode/context_projection/decode(dtype=)).
Quality (every test user, beam 50, top 10): Recall@10 and NDCG@10 of fp32 and bf16, a paired
bootstrap over users of bf16 - fp32 (10,000 resamples, 95%), and the top-10 overlap of the two.

  python bench/bench_bf16.py --prepared PREP --teacher TEACHER_DIR --model SIDMLP_DIR --threads 2 --tag bf16_ml100k
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import common

BF16 = torch.bfloat16


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepared", required=True, help="a `sidmlp prepare` directory (ML-100K)")
    p.add_argument("--teacher", required=True, help="the teacher directory the model was distilled from")
    p.add_argument("--model", required=True, help="a SID-MLP directory (`sidmlp distill`)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--beam", type=int, default=50)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-paper-t5", action="store_true", help="skip the random paper-config T5 encoder")
    p.add_argument("--out", default=str(common.RESULTS))
    p.add_argument("--tag", default="bf16")
    args = p.parse_args()

    from sidmlp_kernels import AcceleratedRecommender, build_examples, build_t5_teacher, load_prepared, load_teacher
    from sidmlp_kernels.metrics import ndcg_at_k, paired_bootstrap, recall_at_k, top_overlap
    from sidmlp_kernels.teacher.adapters import as_adapter

    def all_bf16(b_ids, b_mask):
        """The ablation: encoder, context readout and heads all under the bf16 autocast."""
        proj = rec.context_projection(rec.encode(b_ids, b_mask, dtype=BF16), dtype=BF16)
        return rec.decode(proj, args.beam, 10, dtype=BF16)

    threads = common.set_threads(args.threads)
    prepared = load_prepared(args.prepared)
    teacher, layout = load_teacher(args.teacher, catalog=prepared.catalog)
    rec = AcceleratedRecommender.from_pretrained(args.model, teacher=teacher, catalog=prepared.catalog, layout=layout)
    padding = "right" if getattr(teacher.config, "is_encoder_decoder", False) else "left"
    test = build_examples(prepared.split, prepared.catalog, layout, "test", padding_side=padding)
    ids, mask, _, _ = test.batch(torch.arange(min(args.batch, len(test))))

    providers = {
        "teacher_encoder_fp32": lambda ph: rec.encode(ids, mask, dtype=torch.float32),
        "teacher_encoder_bf16": lambda ph: rec.encode(ids, mask, dtype=BF16),
        "generate_fp32": lambda ph: rec.generate(ids, mask, beam_size=args.beam, top_n=10, dtype=torch.float32),
        "generate_bf16": lambda ph: rec.generate(ids, mask, beam_size=args.beam, top_n=10, dtype=BF16),
        "generate_all_layers_bf16": lambda ph: all_bf16(ids, mask),
    }
    if not args.no_paper_t5:
        paper = build_t5_teacher(layout, "paper", seed=0).eval()
        paper_encode = as_adapter(paper, prepared.catalog, layout).encode
        right_ids, right_mask, _, _ = build_examples(prepared.split, prepared.catalog, layout, "test").batch(
            torch.arange(ids.shape[0]))

        def paper_encoder(dtype):
            def run(ph):
                with torch.inference_mode(), torch.autocast("cpu", dtype=BF16, enabled=dtype == BF16):
                    return paper_encode(right_ids, right_mask)
            return run

        providers["paper_t5_encoder_fp32"] = paper_encoder(torch.float32)
        providers["paper_t5_encoder_bf16"] = paper_encoder(BF16)
    samples, _ = common.run_interleaved(providers, repeats=args.repeats, warmup=2, budget_s=None)
    speed = {name: common.stats_of(s) for name, s in samples.items()}
    ratios = {base: speed[f"{base}_bf16"]["median_ms"] / speed[f"{base}_fp32"]["median_ms"]
              for base in sorted({n.rsplit("_", 1)[0] for n in providers}) if f"{base}_fp32" in speed}
    ratios["generate_all_layers"] = speed["generate_all_layers_bf16"]["median_ms"] / speed["generate_fp32"]["median_ms"]

    # Quality over every test user, same batches for both dtypes.
    items = {}
    runs = {"fp32": lambda i, m: rec.generate(i, m, beam_size=args.beam, top_n=10, dtype=torch.float32),
            "bf16": lambda i, m: rec.generate(i, m, beam_size=args.beam, top_n=10, dtype=BF16),
            "all_layers_bf16": all_bf16}
    for name, run in runs.items():
        parts = []
        for lo in range(0, len(test), 128):
            b_ids, b_mask, _, _ = test.batch(torch.arange(lo, min(len(test), lo + 128)))
            parts.append(run(b_ids, b_mask).items)
        items[name] = torch.cat(parts)
    targets = test.target_items
    quality = {name: {"recall@10": float(recall_at_k(v, targets, 10)), "ndcg@10": float(ndcg_at_k(v, targets, 10))}
               for name, v in items.items()}
    for metric, fn in (("recall@10", recall_at_k), ("ndcg@10", ndcg_at_k)):
        boot = paired_bootstrap(fn(items["bf16"], targets, 10, per_instance=True),
                                fn(items["fp32"], targets, 10, per_instance=True))
        quality[f"bf16_minus_fp32_{metric}"] = [boot["mean_difference"], boot["ci_low"], boot["ci_high"]]
    quality["top10_overlap"] = top_overlap(items["bf16"], items["fp32"], 10)
    quality["identical_top10_lists"] = float((items["bf16"] == items["fp32"]).all(dim=1).double().mean())
    quality["ablation"] = {"all_layers_bf16_top10_overlap": top_overlap(items["all_layers_bf16"], items["fp32"], 10)}

    report = {"format_version": 1, "bench": "bf16", "machine": common.machine_info(),
              "config": {**vars(args), "threads": threads, "users": len(test),
                         "teacher_config": teacher.config.to_dict().get("model_type")},
              "speed": speed, "bf16_over_fp32": ratios, "quality": quality}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"{args.tag}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"batch {ids.shape[0]}, beam {args.beam}, {threads} threads; medians of {args.repeats} alternating repeats\n")
    print("| what | fp32 ms | bf16 ms | bf16 / fp32 |\n|---|---:|---:|---:|")
    for base, ratio in ratios.items():
        fp32 = speed[f"{base}_fp32" if f"{base}_fp32" in speed else "generate_fp32"]["median_ms"]
        print(f"| {base} | {fp32:.1f} | {speed[base + '_bf16']['median_ms']:.1f} | {ratio:.2f} |")
    q = quality
    print(f"\n{len(test)} test users: fp32 recall@10 {q['fp32']['recall@10']:.4f} ndcg@10 {q['fp32']['ndcg@10']:.4f}; "
          f"bf16 recall@10 {q['bf16']['recall@10']:.4f} ndcg@10 {q['bf16']['ndcg@10']:.4f}")
    for metric in ("recall@10", "ndcg@10"):
        d = q[f"bf16_minus_fp32_{metric}"]
        print(f"  bf16 - fp32 {metric}: {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]")
    print(f"  top-10 overlap {q['top10_overlap']:.4f}, identical lists {q['identical_top10_lists']:.3f}; "
          f"ablation, readout and heads in bf16 too: {q['ablation']['all_layers_bf16_top10_overlap']:.4f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
