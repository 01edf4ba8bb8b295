"""The drop-in generates side by side on an imported official-format teacher (docs/architecture.md, "Measuring speed").

    python bench/drop_in_generate.py              # paper size: batch 32, beam 50, 4,000 items (~1-2 min)
    python bench/drop_in_generate.py --quick      # tiny smoke run (seconds)

The teacher is written the way ztguo715/SID-MLP saves one (a `TIGER` module holding `self.t5`, a
HF T5ForConditionalGeneration in its tokenizer's ids, `torch.save(state_dict)`, a JSON .sem_ids
file, its config.yaml) and read back with sk.import_teacher("sidmlp-official", ...). Random
weights (speed does not depend on their values); sizes from FORMATS.md: 4+4 layers, d_model 128,
d_ff 1024, 6 heads of d_kv 64, 256 codes per digit, --user-tokens user tokens.
Providers (each returns the top --top-n of --beam beams per user):
  hf_generate           model.generate(num_beams, max_new_tokens=L+1) as the official code runs it: unconstrained
  constrained_generate  sk.constrained_generate: the same weights, KV cache, catalog-constrained on the C++ index
                        (renormalize=False: HF's scores with a catalog trie)
  accelerated_generate  AcceleratedRecommender.generate(num_beams=..., num_return_sequences=...) after
                        accelerate() for one epoch on random examples (heads for speed only, not quality)
Providers alternate inside every round (order rotated); medians over --repeats after --warmup.
Writes bench/results/<--name>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import common
import sidmlp_kernels as sk
from sidmlp_kernels.data.examples import Examples

PAPER = dict(num_layers=4, num_decoder_layers=4, d_model=128, d_ff=1024, num_heads=6, d_kv=64)
TINY = dict(num_layers=1, num_decoder_layers=1, d_model=16, d_ff=32, num_heads=2, d_kv=8)


class OfficialTIGER(nn.Module):
    """genrec/models/TIGER/model.py's container: the state_dict keys start with `t5.`."""

    def __init__(self, t5):
        super().__init__()
        self.t5 = t5


def write_official(root: Path, sizes: dict, codebook: int, users: int, items: int, seed: int) -> tuple[Path, ...]:
    """An official-format checkpoint, .sem_ids and config.yaml under root (random weights and SIDs)."""
    from transformers import T5Config, T5ForConditionalGeneration
    import yaml

    torch.manual_seed(seed)
    eos = 4 * codebook + 1 + users  # TIGERTokenizer: base_user_token + n_user_tokens
    t5 = T5ForConditionalGeneration(T5Config(**sizes, dropout_rate=0.1, vocab_size=eos + 1, pad_token_id=0,
                                             eos_token_id=eos, decoder_start_token_id=0, feed_forward_proj="relu"))
    ckpt = root / "TIGER-AmazonReviews2023-category_Bench.pth"
    torch.save(OfficialTIGER(t5).state_dict(), ckpt)
    g = torch.Generator().manual_seed(seed)
    seen: dict[tuple, int] = {}
    sem = {}
    for i in range(items):
        prefix = tuple(int(c) for c in torch.randint(0, codebook, (3,), generator=g))
        seen[prefix] = seen.get(prefix, 0) + 1  # dedup digit: the count of items sharing the prefix, from 1
        sem[f"B{i:07d}"] = [*prefix, seen[prefix]]
    sids = root / f"Bench_sentence-t5-base_{codebook},{codebook},{codebook},{codebook}.sem_ids"
    sids.write_text(json.dumps(sem))
    cfg = root / "config.yaml"
    cfg.write_text(yaml.safe_dump(dict(sizes, dropout_rate=0.1, feed_forward_proj="relu", n_user_tokens=users,
                                       max_item_seq_len=20, num_beams=50, rq_n_codebooks=3,
                                       rq_codebook_size=codebook)))
    return ckpt, sids, cfg


def random_inputs(catalog, layout, batch: int, history: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    hist = catalog.item_ids[torch.randint(0, catalog.num_items, (batch, history), generator=g)].tolist()
    users = torch.randint(0, layout.num_user_tokens, (batch,), generator=g).tolist()
    return layout.encode_histories(hist, catalog, users=users)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=4000, help="catalog items (random SIDs)")
    p.add_argument("--user-tokens", type=int, default=2000)
    p.add_argument("--history", type=int, default=20, help="history items per user")
    common.add_generate_args(p, "drop_in_generate", repeats=3)
    args = common.parse_generate_args(p, argv, quick=dict(batch=2, beam=4, top_n=3, items=200, user_tokens=10,
                                                          history=3, train_examples=32, repeats=1, warmup=0))
    threads = common.set_threads(args.threads)
    sizes, codebook = (TINY, 16) if args.quick else (PAPER, 256)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt, sids, cfg = write_official(root, sizes, codebook, args.user_tokens, args.items, args.seed)
        sk.import_teacher("sidmlp-official", ckpt, sids, root / "teacher", config=cfg)
        teacher, layout = sk.load_teacher(root / "teacher")
        catalog = sk.SIDCatalog.load(root / "teacher")
    teacher.eval()
    ids, mask = random_inputs(catalog, layout, args.batch, args.history, args.seed)
    tids, tmask = random_inputs(catalog, layout, args.train_examples, args.history, args.seed + 1)
    rows = torch.randint(0, catalog.num_items, (args.train_examples,), generator=torch.Generator().manual_seed(1))
    train = Examples(tids, tmask, catalog.codes[rows], catalog.item_ids[rows])
    fast = sk.accelerate(teacher, catalog, train, layout=layout, epochs=1)
    num_levels = layout.num_levels

    def hf(phases):
        with torch.inference_mode():
            return teacher.generate(input_ids=ids, attention_mask=mask, num_beams=args.beam,
                                    num_return_sequences=args.top_n, max_new_tokens=num_levels + 1,
                                    do_sample=False, pad_token_id=layout.pad_id, eos_token_id=layout.eos_id,
                                    decoder_start_token_id=layout.decoder_start_id)

    def exact(phases):
        return sk.constrained_generate(teacher, catalog, ids, mask, num_beams=args.beam,
                                       num_return_sequences=args.top_n, layout=layout)

    def accelerated(phases):
        return fast.generate(ids, mask, num_beams=args.beam, num_return_sequences=args.top_n)

    providers = {"hf_generate": hf, "constrained_generate": exact, "accelerated_generate": accelerated}
    samples, outputs = common.run_interleaved(providers, repeats=args.repeats, warmup=args.warmup,
                                              budget_s=args.budget_s)
    stats = {name: common.stats_of(s) for name, s in samples.items()}
    for name, out in outputs.items():
        stats[name]["sequences_shape"] = list(out.shape)
        new = out[:, 1:1 + num_levels]
        valid = catalog.lookup(layout.tokens_to_codes(new)) >= 0
        stats[name]["valid_returned_share"] = float(valid.float().mean())
    base = stats["hf_generate"]["median_ms"]
    for name in ("constrained_generate", "accelerated_generate"):
        stats[name]["speedup_vs_hf_generate"] = base / stats[name]["median_ms"]
    stats["accelerated_generate"]["speedup_vs_constrained_generate"] = (
        stats["constrained_generate"]["median_ms"] / stats["accelerated_generate"]["median_ms"])
    record = common.generate_record(
        "drop-in generate: HF generate vs sk.constrained_generate vs AcceleratedRecommender.generate", argv,
        {"teacher": "sidmlp-official import, random weights", "t5": sizes, "codebook_size": codebook,
         "user_tokens": args.user_tokens, "vocab_size": int(teacher.config.vocab_size), "items": catalog.num_items,
         **common.generate_config(args, ids.shape[1], threads)}, stats)
    path = common.write_record(record, args.out, args.name)
    print(f"drop-in generate: batch {args.batch}, beam {args.beam}, top {args.top_n}, {catalog.num_items} items, "
          f"{threads} threads, loadavg {record['machine']['loadavg']}")
    common.print_speed_table(stats, "hf_generate", "vs HF")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
