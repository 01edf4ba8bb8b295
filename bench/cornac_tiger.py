"""cornac's TIGER, a peer a user could pick instead, against ours on the same model (docs/architecture.md, "Measuring speed").

    python bench/cornac_tiger.py              # ML-100K-size catalog (1,682 items), batch 32, beam 50 (~3-5 min)
    python bench/cornac_tiger.py --quick      # tiny smoke run (seconds)

Needs cornac 3.0.1 (`pip install -e ".[bench]"`). cornac builds its TIGER its own way and this script
only drives it: rkmeans semantic IDs (3 levels of --codebook codes + cornac's dedup level) over random
item features, the paper's T5 sizes (cornac's defaults: 4+4 layers, d_model 128, d_ff 1024, 6 heads of
d_kv 64), max_len 20. `--epochs 0` (the default) keeps cornac's random initial weights (speed does not
depend on their values); `--epochs N` trains N epochs of cornac's own fit on the random sessions. The
model is saved with cornac's Recommender.save and read back with sk.import_teacher("cornac", ...), so
every provider decodes the same weights over the same catalog for the same --batch random histories
of --history items (cornac item indices; our item ids are those indices).
Providers (each returns the top --top-n of --beam beams per user):
  cornac_rank           cornac's own recommendation: TIGER.rank(user, k=top_n, history_items=h) for each user
                        of the batch (scoring='beam', n_beams=--beam: generate_beam, trie-constrained, one
                        history per call, the decoder rerun over the whole prefix at every level)
  cornac_exact          (--exact) the same with scoring='exact': every item's log-likelihood (score_all_items)
  constrained_generate  sk.constrained_generate(renormalize=False) on the imported teacher: cornac's scoring
                        rule (log-softmax over each level's head, then the mask), the whole batch at once, the
                        constraint on the C++ index
  accelerated_generate  AcceleratedRecommender.generate(num_beams=..., num_return_sequences=...) after
                        accelerate() for one epoch on random examples (heads for speed only, not quality)
Providers alternate inside every round (order rotated); medians over --repeats after --warmup.
`agreement` records whether cornac_rank's top-n lists equal constrained_generate's (users whose lists are equal).
Writes bench/results/<--name>.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import common
import sidmlp_kernels as sk
from sidmlp_kernels.data.examples import Examples

PAPER = dict(d_model=128, d_ff=1024, num_heads=6, d_kv=64, num_enc_layers=4, num_dec_layers=4)
TINY = dict(d_model=16, d_ff=32, num_heads=2, d_kv=8, num_enc_layers=1, num_dec_layers=1)


def cornac_tiger(items: int, sizes: dict, codebook: int, max_len: int, epochs: int, seed: int):
    """cornac's TIGER fit by cornac on `items` items: random sessions covering every item, random features."""
    from cornac.data import FeatureModality
    from cornac.eval_methods import NextItemEvaluation
    from cornac.models import TIGER

    rng = np.random.default_rng(seed)
    raw = [f"item{j}" for j in range(items)]
    order = np.concatenate([rng.permutation(items) for _ in range(max(1, 20 * max_len // items + 1))])
    rows = [(f"s{i // max_len}", raw[item], i % max_len) for i, item in enumerate(order)]  # sessions of max_len
    features = rng.normal(size=(items, 64)).astype("float32")
    method = NextItemEvaluation.from_splits(train_data=rows, test_data=rows[:max_len], fmt="SIT",
                                            item_feature=FeatureModality(features=features, ids=raw))
    rec = TIGER(tokenizer="rkmeans", rqvae_num_levels=3, rqvae_codebook_size=codebook, max_len=max_len,
                n_epochs=epochs, scoring="beam", device="cpu", seed=seed, **sizes)
    with torch.random.fork_rng():  # cornac's fit reseeds torch's global RNG
        rec.fit(method.train_set)
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1682, help="catalog items (default: ML-100K's 1,682)")
    p.add_argument("--codebook", type=int, default=256, help="codes per rkmeans level (3 levels + cornac's dedup)")
    p.add_argument("--history", type=int, default=20, help="history items per user (cornac's max_len)")
    p.add_argument("--epochs", type=int, default=0, help="cornac fit epochs (0: cornac's random initial weights)")
    p.add_argument("--exact", action="store_true", help="also time cornac's scoring='exact'")
    common.add_generate_args(p, "cornac_tiger", repeats=5)
    args = common.parse_generate_args(p, argv, quick=dict(batch=2, beam=4, top_n=3, items=120, codebook=4, history=4,
                                                          train_examples=32, repeats=1, warmup=0))
    try:
        import cornac
    except ImportError:
        p.error('needs cornac 3.0.1: pip install -e ".[bench]"')
    threads = common.set_threads(args.threads)
    sizes = TINY if args.quick else PAPER

    rec = cornac_tiger(args.items, sizes, args.codebook, args.history, args.epochs, args.seed)
    rec.n_beams = args.beam
    with tempfile.TemporaryDirectory() as tmp:
        saved = rec.save(tmp)
        sk.import_teacher("cornac", saved, None, Path(tmp) / "teacher")
        teacher, layout = sk.load_teacher(Path(tmp) / "teacher")
        catalog = sk.SIDCatalog.load(Path(tmp) / "teacher")
    g = np.random.default_rng(args.seed + 1)
    hist = [g.choice(catalog.num_items, args.history, replace=False).tolist() for _ in range(args.batch)]
    ids, mask = layout.encode_histories(hist, catalog)
    train_hist = [g.choice(catalog.num_items, args.history, replace=False).tolist()
                  for _ in range(args.train_examples)]
    tids, tmask = layout.encode_histories(train_hist, catalog)
    rows = torch.as_tensor(g.integers(0, catalog.num_items, args.train_examples))
    fast = sk.accelerate(teacher, catalog, Examples(tids, tmask, catalog.codes[rows], catalog.item_ids[rows]),
                         layout=layout, epochs=1)

    def cornac_with(scoring):
        def run(phases):
            rec.scoring = scoring
            with torch.inference_mode():
                return [rec.rank(0, k=args.top_n, history_items=h)[0][: args.top_n].tolist() for h in hist]
        return run

    def exact(phases):
        return sk.constrained_generate(teacher, catalog, ids, mask, num_beams=args.beam,
                                       num_return_sequences=args.top_n, renormalize=False,
                                       return_dict_in_generate=True).items.tolist()

    def accelerated(phases):
        return fast.generate(ids, mask, num_beams=args.beam, num_return_sequences=args.top_n,
                             return_dict_in_generate=True).items.tolist()

    providers = {"cornac_rank": cornac_with("beam"), "constrained_generate": exact,
                 "accelerated_generate": accelerated}
    if args.exact:
        providers["cornac_exact"] = cornac_with("exact")
    samples, outputs = common.run_interleaved(providers, repeats=args.repeats, warmup=args.warmup,
                                              budget_s=args.budget_s)
    stats = {name: common.stats_of(s) for name, s in samples.items()}
    valid = set(catalog.item_ids.tolist())
    for name, out in outputs.items():
        stats[name]["valid_returned_share"] = float(np.mean([i in valid for row in out for i in row]))
    base = stats["cornac_rank"]["median_ms"]
    for name in stats:
        stats[name]["speedup_vs_cornac_rank"] = base / stats[name]["median_ms"]
    stats["accelerated_generate"]["speedup_vs_constrained_generate"] = (
        stats["constrained_generate"]["median_ms"] / stats["accelerated_generate"]["median_ms"])
    equal = [a == b for a, b in zip(outputs["cornac_rank"], outputs["constrained_generate"])]
    weights = ("cornac's random initial weights" if args.epochs == 0 else
               f"{args.epochs} epochs of cornac's fit on random sessions")
    record = common.generate_record(
        "cornac 3.0.1 TIGER (its own rank) vs sk.constrained_generate vs AcceleratedRecommender.generate", argv,
        {"teacher": f"cornac {cornac.__version__} TIGER, rkmeans SIDs over random features, {weights}", "t5": sizes,
         "level_sizes": [int(k) for k in rec.level_sizes], "items": catalog.num_items,
         **common.generate_config(args, ids.shape[1], threads)}, stats,
        agreement={"cornac_rank_equals_constrained_generate_users": int(sum(equal)), "users": len(equal)})
    path = common.write_record(record, args.out, args.name)
    print(f"cornac TIGER vs ours: batch {args.batch}, beam {args.beam}, top {args.top_n}, {catalog.num_items} items "
          f"(levels {record['config']['level_sizes']}), {threads} threads, loadavg {record['machine']['loadavg']}")
    common.print_speed_table(stats, "cornac_rank", "vs cornac")
    print(f"top-{args.top_n} lists equal to cornac's: {sum(equal)} of {len(equal)} users")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
