"""Backend parity on a trained model: every backend's ranked top-50 lists vs the PyTorch reference.

python bench/parity_trained.py --prepared DIR --teacher DIR --student DIR
(Triton runs interpreted on CPU, so it checks only the first --triton-users users.)
"""
import argparse
import os

import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(1)
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--prepared", required=True)
ap.add_argument("--teacher", required=True)
ap.add_argument("--student", required=True)
ap.add_argument("--triton-users", type=int, default=8)
args = ap.parse_args()
from sidmlp_kernels.data.prepare import load_prepared
from sidmlp_kernels.teacher.models import load_teacher
from sidmlp_kernels.accelerated import AcceleratedRecommender
from sidmlp_kernels.data.examples import build_examples
from sidmlp_kernels.decode.backends import decode_folded

prep = load_prepared(args.prepared)
model, layout = load_teacher(args.teacher)
fast = AcceleratedRecommender.load(args.student, teacher=model, catalog=prep.catalog, layout=layout)
ex = build_examples(prep.split, prep.catalog, layout, part="test")
with torch.no_grad():
    for users, backends in ((slice(None), ("reference", "cpu")), (slice(0, args.triton_users), ("reference", "cpu", "triton"))):
        ids, mask = ex.input_ids[users], ex.attention_mask[users]
        proj = fast.context_projection(fast.encode(ids, mask))
        outs = {b: decode_folded(fast.folded, proj, prep.catalog, 50, 50, backend=b) for b in backends}
        ref = outs["reference"]
        for b, o in outs.items():
            same = (o.items == ref.items).all(dim=1)
            print(f"{b:9s} users={ids.shape[0]} identical ranked top-50 lists: {int(same.sum())}/{ids.shape[0]}, "
                  f"max |score diff| {float((o.scores - ref.scores).abs().max()):.2e}")
