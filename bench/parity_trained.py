"""Backend parity on a trained model: every backend's ranked top-50 lists vs the PyTorch reference.

    python bench/parity_trained.py --prepared DIR --teacher DIR --student DIR

Backends as SIDMLP_BACKEND names them: reference (PyTorch), cpu (C++ extension ops), triton
(CUDA ops; on CPU it runs interpreted, so it checks only the first --triton-users users).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import torch


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", required=True, help="prepared dataset directory (catalog + test histories)")
    ap.add_argument("--teacher", required=True, help="trained teacher run directory")
    ap.add_argument("--student", required=True, help="saved AcceleratedRecommender directory (SID-MLP)")
    ap.add_argument("--triton-users", type=int, default=8, help="users checked on the triton backend")
    args = ap.parse_args(argv)
    # Triton reads TRITON_INTERPRET when it is first imported: set it before the package loads its kernels.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)
    from sidmlp_kernels import AcceleratedRecommender, build_examples, load_prepared, load_teacher
    from sidmlp_kernels.decode.backends import decode_folded

    prep = load_prepared(args.prepared)
    model, layout = load_teacher(args.teacher)
    fast = AcceleratedRecommender.load(args.student, teacher=model, catalog=prep.catalog, layout=layout)
    ex = build_examples(prep.split, prep.catalog, layout, part="test")
    checks = ((slice(None), ("reference", "cpu")), (slice(0, args.triton_users), ("reference", "cpu", "triton")))
    with torch.no_grad():
        for users, backends in checks:
            ids, mask = ex.input_ids[users], ex.attention_mask[users]
            proj = fast.context_projection(fast.encode(ids, mask))
            outs = {b: decode_folded(fast.folded, proj, prep.catalog, 50, 50, backend=b) for b in backends}
            ref = outs["reference"]
            for b, o in outs.items():
                same = (o.items == ref.items).all(dim=1)
                print(f"{b:9s} users={ids.shape[0]} identical ranked top-50 lists: {int(same.sum())}/{ids.shape[0]}, "
                      f"max |score diff| {float((o.scores - ref.scores).abs().max()):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
