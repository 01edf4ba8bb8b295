"""Where a SID-MLP student loses its teacher: KL(teacher || student) and top-1 agreement per digit.

On ground-truth prefixes of N random training examples and of the first N validation users, the
student in eval mode (no dropout). A gap between the two rows is a generalisation gap; a large
train KL is a fit the heads do not reach. docs/results/ml-1m-quality.md (session 27) quotes it:

    python scripts/fidelity_by_digit.py --prepared P1M --teacher T9 --student S4 --examples 2000
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def per_digit(student, store) -> dict:
    """{digit: kl, top1, teacher_entropy} of the student against the stored teacher logits."""
    batch = store.batch(torch.arange(len(store)))
    logits = student(batch["states"], batch["mask"], batch["target_codes"])
    out = {}
    for level, (s, t) in enumerate(zip(logits, batch["teacher_logits"])):
        log_s, log_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
        out[level] = {
            "kl": round(float(F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)), 4),
            "top1": round(float((s.argmax(-1) == t.argmax(-1)).float().mean()), 3),
            "teacher_entropy": round(float(-(log_t.exp() * log_t).sum(-1).mean()), 3),
        }
    return out


def main() -> None:
    from sidmlp_kernels.accelerated import AcceleratedRecommender
    from sidmlp_kernels.data.examples import build_examples
    from sidmlp_kernels.data.prepare import load_prepared
    from sidmlp_kernels.distill.features import extract_features
    from sidmlp_kernels.teacher.adapters import as_adapter
    from sidmlp_kernels.teacher.models import load_teacher

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepared", required=True, help="a `sidmlp prepare` directory")
    p.add_argument("--teacher", required=True, help="the teacher directory")
    p.add_argument("--student", required=True, help="a SID-MLP directory distilled from that teacher")
    p.add_argument("--examples", type=int, default=2000, help="training examples and validation users (each)")
    p.add_argument("--max-prefixes-per-user", type=int, default=10, help="as the student was distilled")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.examples < 1:
        p.error("--examples must be >= 1")
    torch.set_num_threads(args.threads)
    prepared = load_prepared(args.prepared)
    catalog, split = prepared.catalog, prepared.split
    teacher, layout = load_teacher(args.teacher, catalog=catalog)
    rec = AcceleratedRecommender.from_pretrained(args.student, teacher=teacher, catalog=catalog)
    if rec.encoder is not None:
        p.error(f"{args.student} is a SID-MLP++ (its own encoder); pass a SID-MLP student")
    student = rec.student.eval()
    teacher.eval()
    adapter = as_adapter(teacher, catalog, layout)
    train = build_examples(split, catalog, layout, "train", max_prefixes_per_user=args.max_prefixes_per_user,
                           seed=0, padding_side="left")
    valid = build_examples(split, catalog, layout, "valid", padding_side="left")
    picks = {
        "train": train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:args.examples]),
        "valid": valid.subset(torch.arange(min(args.examples, len(valid)))),
    }
    with torch.no_grad():
        for name, examples in picks.items():
            print(name, json.dumps(per_digit(student, extract_features(adapter, examples, None, catalog=catalog))))


if __name__ == "__main__":
    main()
