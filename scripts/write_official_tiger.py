"""Write a TIGER teacher the way the official SID-MLP code (ztguo715/SID-MLP, genrec/) saves one.

Random weights at the paper's size (genrec/models/TIGER/config.yaml: 4+4 layers, d_model 128,
d_ff 1024, 6 heads of 64, relu), for trying `sidmlp import --format sidmlp-official` without a
checkpoint of your own. The SIDs come from a `sidmlp prepare` directory: its catalog's codes,
written as the official `.sem_ids` JSON {raw item id: [c1, c2, c3, dedup]} with dedup from 1.

    python scripts/write_official_tiger.py --prepared P --out DIR [--n-user-tokens 2000]

writes DIR/TIGER-ml.pth (the state_dict of a module holding the T5 as `t5`), DIR/ml.sem_ids and
DIR/config.yaml.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from transformers import T5Config, T5ForConditionalGeneration

from sidmlp_kernels.data.prepare import load_prepared

PAPER = dict(num_layers=4, num_decoder_layers=4, d_model=128, d_ff=1024, num_heads=6, d_kv=64,
             dropout_rate=0.1, feed_forward_proj="relu")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepared", required=True, help="a `sidmlp prepare` directory (its catalog gives the SIDs)")
    p.add_argument("--out", required=True, help="directory to write the three files into")
    p.add_argument("--n-user-tokens", type=int, default=2000, help="the tokenizer's user tokens (paper: 2000)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    prepared = load_prepared(args.prepared)
    codes, sizes = prepared.catalog.codes, list(prepared.catalog.codebook_sizes)
    if codes[:, -1].max() + 1 >= sizes[-1]:
        raise SystemExit(f"the catalog's dedup digit reaches {int(codes[:, -1].max())}: it does not fit the official "
                         f"layout's dedup-from-1 codes with K={sizes[-1]}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sem_ids = {str(raw): [*map(int, row[:-1]), int(row[-1]) + 1]
               for raw, row in zip(prepared.data.raw_item_ids, codes.tolist())}
    (out / "ml.sem_ids").write_text(json.dumps(sem_ids))
    eos = sum(sizes) + 1 + args.n_user_tokens  # pad, codes, user tokens, EOS
    torch.manual_seed(args.seed)
    t5 = T5ForConditionalGeneration(T5Config(**PAPER, vocab_size=eos + 1, pad_token_id=0, eos_token_id=eos,
                                             decoder_start_token_id=0))
    torch.save({f"t5.{k}": v for k, v in t5.state_dict().items()}, out / "TIGER-ml.pth")
    config = dict(PAPER, n_user_tokens=args.n_user_tokens, rq_n_codebooks=len(sizes) - 1,
                  rq_codebook_size=sizes[0], num_beams=50, max_item_seq_len=20)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    print(f"wrote {out}/TIGER-ml.pth, ml.sem_ids ({len(sem_ids)} items), config.yaml")


if __name__ == "__main__":
    main()
