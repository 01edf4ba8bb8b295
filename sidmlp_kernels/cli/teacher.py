"""`sidmlp train-teacher` and `sidmlp eval`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..configs import TrainConfig
from ..teacher.presets import ARCHS, GPT2_PRESETS, T5_PRESETS
from .common import set_threads
from ..errors import InvalidInput




def cmd_train_teacher(args: argparse.Namespace) -> int:
    """`sidmlp train-teacher`: train a TIGER (T5) or GPT-2 teacher on a prepared dataset."""
    objective = args.objective or ("sequence" if args.arch == "gpt2" else "prefix")
    if objective == "sequence" and args.arch != "gpt2":
        raise InvalidInput("--objective sequence needs --arch gpt2 (a decoder-only teacher); T5 trains per prefix")
    if args.window is not None and objective != "sequence":
        raise InvalidInput("--window sets the full-sequence objective's windows; it needs --objective sequence")
    if args.dropout is not None and not 0.0 <= args.dropout < 1.0:
        raise InvalidInput(f"--dropout must be in [0, 1), got {args.dropout}")
    extra = dict(prepared=str(Path(args.prepared).resolve()), arch=args.arch, preset=args.preset,
                 objective=objective, dropout=args.dropout, max_prefixes_per_user=args.max_prefixes_per_user, window=args.window)
    if args.init_from:
        extra["init_from"] = str(Path(args.init_from).resolve())
    # Built first: a bad option fails in one line before any data is loaded.
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, max_steps=args.max_steps, max_minutes=args.max_minutes,
        eval_every=args.eval_every,
        eval_beam=args.eval_beam, eval_users=args.eval_users, patience=args.patience, seed=args.seed,
        checkpoint_every=args.checkpoint_every, bf16=args.bf16, progress=not args.no_progress, extra=extra,
    )
    import torch

    from ..data.examples import build_examples
    from ..data.layout import TokenLayout
    from ..data.prepare import load_prepared
    from ..teacher.models import build_gpt2_teacher, build_t5_teacher, load_teacher
    from ..teacher.sequence import build_windows, positions_needed
    from ..teacher.train import train_teacher
    from ..training import TrainingInterrupted
    set_threads(args.threads)
    prepared = load_prepared(args.prepared)
    catalog, split = prepared.catalog, prepared.split
    layout = TokenLayout.for_catalog(catalog)
    padding = "right" if args.arch == "t5" else "left"
    t0 = time.perf_counter()
    if objective == "sequence":
        train = build_windows(split, catalog, layout, window=args.window)
        what = f"{len(train)} train windows ({train.num_items} items)"
    else:
        train = build_examples(split, catalog, layout, "train", max_prefixes_per_user=args.max_prefixes_per_user,
                               seed=args.seed, padding_side=padding)
        what = f"{len(train)} train examples"
    valid = build_examples(split, catalog, layout, "valid", padding_side=padding)
    print(f"[train-teacher] {what}, {len(valid)} valid users (built in {time.perf_counter() - t0:.1f}s); "
          f"arch {args.arch}, preset {args.preset}, objective {objective}")
    if args.arch == "t5":
        sizes = {} if args.dropout is None else dict(dropout_rate=args.dropout)
        model = build_t5_teacher(layout, args.preset, seed=args.seed, **sizes)
    else:
        max_pos = positions_needed(layout, split.max_history, train if objective == "sequence" else None)
        model = build_gpt2_teacher(layout, args.preset, max_positions=max_pos, seed=args.seed,
                                   prompt="items" if objective == "sequence" else "eos", dropout=args.dropout)
    if args.init_from:
        start, start_layout = load_teacher(args.init_from)
        shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
        if start_layout != layout or shapes(start) != shapes(model):
            raise InvalidInput(f"--init-from {args.init_from}: its layout/architecture differs from --arch "
                             f"{args.arch} --preset {args.preset} on this catalog")
        model.load_state_dict(start.state_dict())
        print(f"[train-teacher] weights from {args.init_from} (optimizer and schedule start fresh)")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[train-teacher] {n_params / 1e6:.2f}M parameters, {torch.get_num_threads()} threads")
    try:
        summary = train_teacher(model, layout, catalog, train, valid, args.out, config, resume=not args.fresh,
                                info=dict(extra, params=n_params))
    except TrainingInterrupted as stop:
        where = f"checkpoint {stop.checkpoint}" if stop.checkpoint else "no checkpoint yet"
        print(f"[train-teacher] interrupted at step {stop.step} ({where}); run the same command again "
              "(without --fresh) to resume")
        return 130
    print(json.dumps(summary, indent=2))
    return 0



def _fmt(m: dict[str, float]) -> str:
    return "  ".join(f"{k} {m[k]:.4f}" for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10") if k in m)



# `sidmlp eval`'s decodes under their names in the report (the constrained decode is "the teacher").
_EVAL_NAMES = {"constrained": "teacher", "hf": "teacher_hf_generate", "unconstrained": "teacher_unconstrained"}


def cmd_eval(args: argparse.Namespace) -> int:
    """`sidmlp eval`: Recall/NDCG@5/10 of a teacher's decodes and a most-popular baseline."""
    import torch

    from ..data.examples import build_examples
    from ..data.prepare import load_prepared
    from ..evaluation import most_popular_for, quality_report
    from ..metrics import evaluate_ranking
    from ..teacher.adapters import check_model_layout
    from ..teacher.evaluate import evaluate_teacher
    from ..io import provenance, write_json
    from ..teacher.models import load_teacher
    set_threads(args.threads)
    prepared = load_prepared(args.prepared)
    catalog, split = prepared.catalog, prepared.split
    model, layout = load_teacher(args.teacher, catalog=catalog)
    check_model_layout(model, layout, catalog)
    padding = "right" if getattr(model.config, "is_encoder_decoder", False) else "left"
    examples = build_examples(split, catalog, layout, args.split, padding_side=padding)
    decodes = {"both": ["hf", "constrained"], "all": ["hf", "unconstrained", "constrained"]}.get(
        args.decode, [args.decode]
    )
    n = len(examples) if args.max_users is None else min(args.max_users, len(examples))
    print(f"[eval] {args.teacher} on {args.split} ({n} users), beam {args.beam}, top {args.top_n}")
    rankings, per_decode = {}, {}
    for decode in decodes:
        m = evaluate_teacher(model, layout, catalog, examples, decode=decode, beam_size=args.beam,
                             top_n=args.top_n, batch_size=args.batch_size, max_users=args.max_users,
                             progress=not args.no_progress, return_items=True)
        rankings[_EVAL_NAMES[decode]] = m.pop("items")
        per_decode[decode] = m
        extra = (f"  invalid beams {m['invalid_beams']} of {n * args.top_n} returned "
                 f"({m['invalid_per_user']:.2f}/user)" if decode != "constrained" else "")
        print(f"  {decode:<13} {_fmt(m)}{extra}  [{m['seconds']:.1f}s]")
    users = examples.subset(torch.arange(n))
    popular = most_popular_for(split, args.split)
    print(f"  {'most-popular':<13} {_fmt(evaluate_ranking(popular.expand(n, -1), users.target_items, ks=(5, 10)))}")
    # Is the teacher better than most-popular on these users? Paired bootstrap over users.
    report = quality_report(rankings, users.target_items, popular, teacher=None, seed=args.seed)
    for decode in decodes:
        vs = report[_EVAL_NAMES[decode]]["vs_most_popular"]
        print(f"  {decode} - most-popular, paired bootstrap over {n} users (95% interval): " + "; ".join(
            f"{metric} {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]" for metric, (mean, lo, hi) in vs.items()))
    results: dict[str, Any] = {"dataset": getattr(prepared, "config", {}).get("dataset"), "split": args.split,
                               "users": n, "beam": args.beam, "top_n": args.top_n, "models": report,
                               "decodes": per_decode}
    if args.json_out:
        results["provenance"] = provenance({"catalog": catalog.fingerprint()})
        write_json(args.json_out, results)
    return 0



def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sidmlp train-teacher` and `sidmlp eval` to the subcommands."""
    p = subparsers.add_parser("train-teacher", help="train a TIGER (T5) or GPT-2 teacher on a prepared dataset")
    p.add_argument("--prepared", required=True, help="directory written by `sidmlp prepare`")
    p.add_argument("--out", required=True, help="run directory (best/, checkpoint.pt, history.jsonl)")
    p.add_argument("--arch", choices=ARCHS, default="t5", help="t5 (TIGER, default) or gpt2 (decoder-only)")
    p.add_argument("--preset", choices=sorted(set(T5_PRESETS) | set(GPT2_PRESETS)), default="paper",
                   help="model size: paper = the TIGER paper's (t5: 4+4 layers, d128; hours on a 2-core CPU), "
                        "base (gpt2 only: 2 layers, d128), small (t5 2+2, gpt2 2 layers, d64; minutes) "
                        "or tiny (tests)")
    p.add_argument("--objective", choices=("prefix", "sequence"), default=None,
                   help="prefix: one pass per (history, next item) pair, as TIGER trains (t5 default); "
                        "sequence: one causal pass per window of a user's items, a loss at every SID token "
                        "(gpt2 default; about 18x less compute per epoch on ML-100K)")
    p.add_argument("--window", type=int, default=None,
                   help="items per training window of --objective sequence (default: the split's "
                        "history length + 1)")
    p.add_argument("--dropout", type=float, default=None, help="dropout of the model (default: the preset's)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--max-steps", type=int, default=TrainConfig.max_steps,
                   help="optimizer steps to run (the schedule is sized to them); default: --epochs")
    p.add_argument("--max-minutes", type=float, default=TrainConfig.max_minutes,
                   help="wall-clock budget of this run (it stops, checkpoints, and a rerun resumes)")
    p.add_argument("--max-prefixes-per-user", type=int, default=None,
                   help="random cap on training prefixes per user")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps,
                   help=f"default: {TrainConfig.warmup_frac * 100:g}%% of all steps, "
                        f"at most {TrainConfig.max_warmup_steps}")
    p.add_argument("--eval-every", type=int, default=TrainConfig.eval_every,
                   help="steps between validations")
    p.add_argument("--eval-beam", type=int, default=TrainConfig.eval_beam,
                   help="beam of the constrained validation decode")
    p.add_argument("--eval-users", type=int, default=TrainConfig.eval_users, help="validate on the first N users only")
    p.add_argument("--patience", type=int, default=TrainConfig.patience,
                   help="validations without improvement before stopping")
    p.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every,
                   help="steps between checkpoints (there is one at every validation too)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--bf16", action="store_true",
                   help="bf16 autocast in training; weights stay fp32. T5: about 1.4x faster per step on "
                        "AVX512-BF16 CPUs; GPT-2: about 8x slower there (measured), leave it off")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--fresh", action="store_true", help="start over, replacing the checkpoint in --out")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="start from this trained teacher's weights (same arch/preset), with a new schedule")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train_teacher)

    p = subparsers.add_parser("eval", help="Recall/NDCG of a teacher's decodes (HF generate, constrained)")
    p.add_argument("--teacher", required=True, help="run directory of train-teacher (or a saved model dir)")
    p.add_argument("--prepared", required=True, help="directory written by `sidmlp prepare`")
    p.add_argument("--split", choices=("valid", "test"), default="test")
    p.add_argument("--decode", choices=("hf", "constrained", "unconstrained", "both", "all"), default="both",
                   help="hf = HF generate (unconstrained, invalid beams dropped); constrained = cached, "
                        "catalog-constrained beam search; both = hf + constrained")
    p.add_argument("--beam", type=int, default=50)
    p.add_argument("--top-n", type=int, default=10, help="beams returned per user (ranked list length)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-users", type=int, default=None, help="evaluate the first N users only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json-out", default=None, help="also write the metrics as JSON here")
    p.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap against most-popular")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)
