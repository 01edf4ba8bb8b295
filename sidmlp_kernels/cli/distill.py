"""`sidmlp distill` (torchrun-ready: `torchrun --nproc_per_node=N -m sidmlp_kernels.cli distill ...`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..configs import MIXERS, READOUTS, AccelerateConfig, DistillConfig, EncoderTrainConfig, MLPEncoderSizes, StudentSizes


def add_distill_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `sidmlp distill` options to a (sub)parser and return it."""
    p = parser
    p.add_argument("--prepared", required=True, help="directory written by `sidmlp prepare`")
    p.add_argument("--teacher", required=True, help="teacher run directory (train-teacher --out) or saved model dir")
    p.add_argument("--out", required=True, help="where the accelerated recommender is saved")
    p.add_argument("--work-dir", default=None, help="features + resumable checkpoints")
    p.add_argument("--replace-encoder", action="store_true", help="SID-MLP++: also distil an MLP encoder")
    p.add_argument("--joint-encoder", action="store_true",
                   help="SID-MLP++: after fitting the teacher's states (stage 1), train the MLP encoder together "
                        "with the heads on the distillation loss (default: the heads alone, on fixed states)")
    p.add_argument("--init-student", default=None, metavar="DIR",
                   help="start the heads from this saved SID-MLP (e.g. SID-MLP++ heads from SID-MLP's)")
    p.add_argument("--max-prefixes-per-user", type=int, default=20,
                   help="random cap on training prefixes per user")
    p.add_argument("--teacher-beam", type=int, default=AccelerateConfig.teacher_beam, metavar="W",
                   help="also distil at every prefix of the teacher's own constrained beam of width W on each "
                        "training example (one teacher beam search per example at extraction; 0 = off)")
    d, sizes, enc, enc_train = DistillConfig, StudentSizes, MLPEncoderSizes, EncoderTrainConfig
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (split over torchrun ranks)")
    p.add_argument("--alpha", type=float, default=d.alpha, help="weight of the KL term")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--patience", type=int, default=d.patience, help="evaluations without improvement before stopping")
    p.add_argument("--eval-beam", type=int, default=d.eval_beam,
                   help="beam of the validation generate")
    p.add_argument("--eval-users", type=int, default=None, help="validate on the first N users only")
    p.add_argument("--select-by", choices=("ndcg", "teacher"), default=d.select_by,
                   help="what early stopping keeps: valid NDCG@10, or the top-10 overlap with the teacher's own "
                        "valid top-10 (fidelity; one teacher decode of the valid users first)")
    p.add_argument("--dropout", type=float, default=sizes.dropout)
    p.add_argument("--head-hidden", type=int, default=sizes.head_hidden)
    p.add_argument("--num-heads", type=int, default=sizes.num_heads)
    p.add_argument("--attn-dim", type=int, default=sizes.attn_dim, help="cross-attention width (0 = context width)")
    p.add_argument("--ffn-dim", type=int, default=sizes.ffn_dim)
    p.add_argument("--readout", choices=READOUTS, default=sizes.readout,
                   help="the heads' user context: pool = the paper's cross-attention readout; pool+last = also "
                        "the last real encoder state (for a decoder-only teacher, the state its LM head reads)")
    p.add_argument("--encoder-epochs", type=int, default=enc_train.epochs, help="SID-MLP++ stage-1 epochs")
    p.add_argument("--encoder-layers", type=int, default=enc.layers)
    p.add_argument("--encoder-ffn-dim", type=int, default=enc.ffn_dim, help="default: 2 x teacher hidden size")
    p.add_argument("--encoder-lr", type=float, default=enc_train.lr)
    p.add_argument("--encoder-dropout", type=float, default=enc.dropout,
                   help="SID-MLP++ MLP-encoder dropout (the quickstart uses 0: stage 1 regresses a frozen teacher)")
    p.add_argument("--encoder-mixer", choices=("auto",) + MIXERS, default=enc.mixer,
                   help="how each MLP-encoder token sees its sequence: mean = the paper's whole-sequence mean; "
                        "causal = means over earlier tokens, uniform and recency-weighted (half-lives of 1 and 4 "
                        "items), as a decoder-only teacher's states see them; auto = causal for a decoder-only "
                        "teacher, mean otherwise")
    p.add_argument("--beam", type=int, default=50, help="beam of the final test evaluation")
    p.add_argument("--test-users", type=int, default=None, help="evaluate the first N test users only")
    p.add_argument("--seed", type=int, default=DistillConfig.seed)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_distill)
    return p



def cmd_distill(args: argparse.Namespace) -> int:
    """`sidmlp distill`: distil SID-MLP (or SID-MLP++) heads from a trained teacher; torchrun-ready."""
    # Built first: a bad option fails in one line before any data is loaded.
    config = AccelerateConfig().with_overrides(
        replace_encoder=args.replace_encoder, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        alpha=args.alpha, temperature=args.temperature, weight_decay=args.weight_decay, patience=args.patience,
        eval_beam=args.eval_beam, seed=args.seed, dropout=args.dropout, head_hidden=args.head_hidden,
        num_heads=args.num_heads, attn_dim=args.attn_dim, ffn_dim=args.ffn_dim, readout=args.readout,
        encoder_epochs=args.encoder_epochs,
        encoder_layers=args.encoder_layers, encoder_ffn_dim=args.encoder_ffn_dim, encoder_lr=args.encoder_lr,
        encoder_dropout=args.encoder_dropout,
        encoder_mixer=args.encoder_mixer, teacher_beam=args.teacher_beam, joint_encoder=args.joint_encoder, select_by=args.select_by,
    )
    import torch
    import torch.distributed as dist

    from ..accelerated import AcceleratedRecommender, accelerate
    from ..evaluation import evaluate_recommender
    from ..training import TrainingInterrupted, barrier, dist_info
    from ..data.examples import build_examples
    from ..data.prepare import load_prepared
    from ..io import provenance, write_json
    from ..teacher.models import load_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world = dist_info()
    log = print if rank == 0 else (lambda s: None)
    prepared = load_prepared(args.prepared)
    catalog, split = prepared.catalog, prepared.split
    teacher, layout = load_teacher(args.teacher, catalog=catalog)
    padding = "right" if getattr(teacher.config, "is_encoder_decoder", False) else "left"
    cap = args.max_prefixes_per_user or None
    train = build_examples(split, catalog, layout, "train", max_prefixes_per_user=cap, seed=args.seed,
                           padding_side=padding)
    valid = build_examples(split, catalog, layout, "valid", padding_side=padding)
    if args.eval_users:
        valid = valid.subset(torch.arange(min(args.eval_users, len(valid))))
    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else out / "work"
    log(f"[distill] {len(train)} train examples, {len(valid)} valid users, {world} process(es), "
        f"{'SID-MLP++' if args.replace_encoder else 'SID-MLP'}")
    init = None
    if args.init_student:
        init = AcceleratedRecommender.from_pretrained(args.init_student, teacher=teacher, catalog=catalog,
                                                      layout=layout).student
    t0 = time.perf_counter()
    try:
        rec = accelerate(teacher, catalog, train, valid, config, layout=layout, work_dir=work, init_student=init,
                         show_progress=not args.no_progress and rank == 0)
    except TrainingInterrupted as stop:
        where = f"checkpoint {stop.checkpoint}" if stop.checkpoint else "no checkpoint yet"
        log(f"[distill] interrupted at step {stop.step} ({where}); run the same command again to resume "
            f"(features and checkpoints in {work} are reused)")
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        return 130
    if rank == 0:
        rec.info["distill_seconds"] = time.perf_counter() - t0
        rec.save_pretrained(out)
        log(f"[distill] saved {out} ({rec.info['distill_seconds']:.0f}s)")
        test = build_examples(split, catalog, layout, "test", padding_side=padding)
        m = evaluate_recommender(rec, test, beam_size=args.beam, top_n=10, max_users=args.test_users,
                                 show_progress=not args.no_progress)
        log(f"[distill] test ({m['num_users']} users, beam {args.beam}): recall@10 {m['recall@10']:.4f} "
            f"ndcg@10 {m['ndcg@10']:.4f}  encode {m['encode_seconds']:.2f}s decode {m['decode_seconds']:.2f}s")
        write_json(out / "test_metrics.json", {**{k: v for k, v in m.items() if k != "items"},
                                               "provenance": provenance({"catalog": catalog.fingerprint()})})
    barrier()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return 0


def register(sub) -> None:
    """Add `sidmlp distill` to the subcommands."""
    p = sub.add_parser("distill", help="distil SID-MLP (or SID-MLP++) heads from a trained teacher")
    add_distill_arguments(p)
