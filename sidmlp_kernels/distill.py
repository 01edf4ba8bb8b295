"""Distil a SID-MLP student from stored teacher features (DESIGN.md section 1).

Per digit: alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(ground truth),
teacher-forced prefixes, summed over digits. AdamW, linear warm-up + cosine,
gradient clipping, early stopping on validation NDCG@10 of the constrained
generate, resumable checkpoints, tqdm.

Runs unchanged under `torchrun --nproc_per_node=N` (DDP, gloo on CPU): a
DistributedSampler splits every global batch over ranks, DDP averages
gradients, rank 0 evaluates and is the only writer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from .catalog import SIDCatalog
from .decoding import GenerationOutput
from .features import FeatureStore
from .backends import decode_folded
from .folded import project_context
from .metrics import ndcg_at_k, recall_at_k
from .student import SIDMLP

__all__ = [
    "DistillConfig",
    "TrainResult",
    "ValidSet",
    "distill",
    "distill_loss",
    "train_loop",
    "evaluate_student",
    "student_generate",
    "dist_info",
    "is_main_process",
    "barrier",
    "add_distill_arguments",
    "cmd_distill",
    "main",
]

_CKPT_VERSION = 1


# ---------------------------------------------------------------- distributed helpers


def dist_info() -> tuple[int, int]:
    """(rank, world size); initialises a gloo/nccl process group when launched by torchrun."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("SIDMLP_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (or without a process group): the only process that writes."""
    return dist_info()[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist_info()[1] > 1:
        dist.barrier()


def _broadcast(obj):
    if dist_info()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------- config, loss


@dataclass
class DistillConfig:
    """Distillation hyper-parameters (defaults tuned for small CPU runs; paper: lr 5e-5, 300 epochs on GPU)."""

    alpha: float = 0.7
    temperature: float = 1.0
    lr: float = 2e-3
    weight_decay: float = 1e-4
    epochs: int = 30
    batch_size: int = 256  # global batch; each of N ranks takes batch_size // N
    grad_clip: float = 1.0
    warmup_frac: float = 0.03
    patience: int = 4  # evaluations without a better valid NDCG@10 before stopping
    eval_every: int = 1  # epochs between evaluations
    eval_beam: int = 50
    eval_batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("epochs", "batch_size", "patience", "eval_every", "eval_beam", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError(f"lr and grad_clip must be > 0, got {self.lr}, {self.grad_clip}")


def distill_loss(
    student_logits: Sequence[torch.Tensor],
    teacher_logits: Sequence[torch.Tensor],
    target_codes: torch.Tensor,
    alpha: float = 0.7,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over digits of alpha*T^2*KL(teacher||student) + (1-alpha)*CE; returns (loss, parts)."""
    total = student_logits[0].new_zeros(())
    kl_sum, ce_sum = 0.0, 0.0
    t = temperature
    for level, (s, te) in enumerate(zip(student_logits, teacher_logits)):
        kl = F.kl_div(
            F.log_softmax(s / t, dim=-1), F.log_softmax(te / t, dim=-1), reduction="batchmean", log_target=True
        ) * (t * t)
        ce = F.cross_entropy(s, target_codes[:, level])
        total = total + alpha * kl + (1.0 - alpha) * ce
        kl_sum += float(kl.detach())
        ce_sum += float(ce.detach())
    return total, {"kl": kl_sum, "ce": ce_sum}


# ---------------------------------------------------------------- generic loop


@dataclass
class TrainResult:
    """What a training run produced: per-epoch history and the best evaluation."""

    history: list[dict] = field(default_factory=list)
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    stopped_early: bool = False


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return fn


def train_loop(
    model: torch.nn.Module,
    batch_loss: Callable[[torch.nn.Module, torch.Tensor], tuple[torch.Tensor, dict[str, float]]],
    num_examples: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 1e-4,
    grad_clip: float = 1.0,
    warmup_frac: float = 0.03,
    seed: int = 0,
    evaluate: Optional[Callable[[torch.nn.Module], dict[str, float]]] = None,
    metric: str = "ndcg@10",
    patience: int = 4,
    eval_every: int = 1,
    checkpoint: Optional[str | Path] = None,
    run_config: Optional[dict] = None,
    desc: str = "train",
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train `model` in place (DDP-aware, resumable); leaves it holding the best-evaluated weights.

    batch_loss(wrapped_model, example_indices) -> (loss, parts). evaluate runs on
    rank 0 only, with the unwrapped model in eval mode; higher `metric` is better.
    """
    rank, world = dist_info()
    if num_examples < 1:
        raise ValueError("training needs at least one example")
    torch.manual_seed(seed + rank)
    params = [p for p in model.parameters() if p.requires_grad]
    wrapped = model
    if world > 1:
        # Buffers (frozen code embeddings) are identical on every rank; syncing them is cheap and harmless.
        wrapped = DistributedDataParallel(model)
    sampler = DistributedSampler(range(num_examples), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    per_rank = max(1, batch_size // world)
    steps_per_epoch = math.ceil(len(sampler) / per_rank)
    total_steps = steps_per_epoch * epochs
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, max(1, int(warmup_frac * total_steps)))
    )
    result = TrainResult()
    best_state = None
    bad_evals = 0
    start_epoch = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    signature = {"version": _CKPT_VERSION, "config": run_config or {}, "epochs": epochs, "batch_size": batch_size,
                 "lr": lr, "num_examples": num_examples, "seed": seed}
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if json.loads(state["signature"]) != json.loads(json.dumps(signature)):
            raise ValueError(
                f"checkpoint {ckpt} was written by a different run configuration; delete it to start over"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        result = TrainResult(**json.loads(state["result"]))
        best_state = state["best_state"] or None
        bad_evals = int(state["bad_evals"])
        torch.set_rng_state(state["rng"])
        if rank == 0:
            log(f"{desc}: resumed from {ckpt} after epoch {start_epoch}")
    for epoch in range(start_epoch, epochs):
        if result.stopped_early:
            break
        t0 = time.perf_counter()
        wrapped.train()
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.long)
        sums: dict[str, float] = {}
        steps = 0
        bar = tqdm(range(0, len(order), per_rank), desc=f"{desc} {epoch + 1}/{epochs}",
                   disable=not show_progress or rank != 0, leave=False)
        for start in bar:
            loss, parts = batch_loss(wrapped, order[start : start + per_rank])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            scheduler.step()
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
            if steps % 20 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / steps:.4f}")
        # Average the epoch's per-step losses over ranks so every rank logs the global curve.
        keys = sorted(sums)
        totals = torch.tensor([sums[k] for k in keys] + [float(steps)], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(totals)
        entry = {"epoch": epoch + 1, **{f"train_{k}": float(totals[i] / totals[-1]) for i, k in enumerate(keys)},
                 "lr": scheduler.get_last_lr()[0], "time_s": round(time.perf_counter() - t0, 3)}
        if evaluate is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            metrics = None
            if rank == 0:
                model.eval()
                with torch.no_grad():
                    metrics = evaluate(model)
            metrics = _broadcast(metrics)
            entry.update({f"valid_{k}": v for k, v in metrics.items()})
            value = metrics[metric]
            if result.best_metric is None or value > result.best_metric + 1e-9:
                result.best_metric, result.best_epoch, bad_evals = float(value), epoch + 1, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_evals += 1
                if bad_evals >= patience:
                    result.stopped_early = True
        result.history.append(entry)
        if rank == 0:
            shown = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items())
            log(f"{desc}: {shown}")
            if ckpt is not None:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                tmp = ckpt.with_name(ckpt.name + f".tmp{os.getpid()}")
                torch.save({
                    "signature": json.dumps(signature), "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1, "result": json.dumps(asdict(result)), "best_state": best_state or {},
                    "bad_evals": bad_evals, "rng": torch.get_rng_state(),
                }, tmp)
                os.replace(tmp, ckpt)
        if result.stopped_early and rank == 0:
            log(f"{desc}: early stop, best {metric}={result.best_metric:.4f} at epoch {result.best_epoch}")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    barrier()
    return result


# ---------------------------------------------------------------- evaluation


@dataclass
class ValidSet:
    """Evaluation users as encoder states: states (N, T, D), mask (N, T), target_items (N,)."""

    states: torch.Tensor
    mask: torch.Tensor
    target_items: torch.Tensor

    def __len__(self) -> int:
        return int(self.states.shape[0])


@torch.no_grad()
def student_generate(
    student: SIDMLP, catalog: SIDCatalog, states: torch.Tensor, mask: torch.Tensor, beam_size: int = 50, top_n: int = 10,
    folded=None,
) -> GenerationOutput:
    """Constrained generate from encoder states with a student's folded heads (automatic backend)."""
    folded = student.fold() if folded is None else folded
    ctx = student.context(states.float(), mask.bool())
    return decode_folded(folded, project_context(folded, ctx), catalog, beam_size, top_n)


@torch.no_grad()
def evaluate_student(
    student: SIDMLP, catalog: SIDCatalog, valid: ValidSet, beam_size: int = 50, batch_size: int = 128,
    top_n: int = 10, show_progress: bool = False,
) -> dict[str, float]:
    """Recall@10 and NDCG@10 of the constrained generate over a ValidSet."""
    was_training = student.training
    student.eval()
    folded = student.fold()
    ranked = []
    for start in tqdm(range(0, len(valid), batch_size), desc="eval", disable=not show_progress, leave=False):
        sl = slice(start, start + batch_size)
        out = student_generate(student, catalog, valid.states[sl], valid.mask[sl], beam_size, min(top_n, beam_size),
                               folded=folded)
        ranked.append(out.items)
    items = torch.cat(ranked)
    student.train(was_training)
    # Lists shorter than 10 (beam < 10) simply cannot hit ranks past their length.
    return {"recall@10": recall_at_k(items, valid.target_items, 10), "ndcg@10": ndcg_at_k(items, valid.target_items, 10)}


def distill(
    student: SIDMLP,
    train: FeatureStore,
    catalog: SIDCatalog,
    valid: Optional[ValidSet] = None,
    config: Optional[DistillConfig] = None,
    checkpoint: Optional[str | Path] = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Distil `student` in place from stored teacher features; keeps the best valid NDCG@10 weights."""
    cfg = config or DistillConfig()
    if train.num_levels != student.num_levels or train.hidden_size != student.config.encoder_dim:
        raise ValueError(
            f"features have L={train.num_levels}, D={train.hidden_size}; the student expects "
            f"L={student.num_levels}, D={student.config.encoder_dim}"
        )
    for level, (t, k) in enumerate(zip(train.teacher_logits, student.config.codebook_sizes)):
        if t.shape[1] != k:
            raise ValueError(f"teacher logits of digit {level} have {t.shape[1]} codes, the student {k}")

    def batch_loss(model, index):
        b = train.batch(index)
        logits = model(b["states"], b["mask"], b["target_codes"])
        return distill_loss(logits, b["teacher_logits"], b["target_codes"], cfg.alpha, cfg.temperature)

    evaluate = None
    # Only rank 0 holds (and evaluates) the validation set, but every rank must agree that evaluation
    # happens, since the metric is broadcast from rank 0.
    if _broadcast(valid is not None):
        def evaluate(model):
            return evaluate_student(model, catalog, valid, cfg.eval_beam, cfg.eval_batch_size)

    return train_loop(
        student, batch_loss, len(train), epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, warmup_frac=cfg.warmup_frac, seed=cfg.seed,
        evaluate=evaluate, metric="ndcg@10", patience=cfg.patience, eval_every=cfg.eval_every,
        checkpoint=checkpoint, run_config={"distill": asdict(cfg), "student": student.config.to_dict()},
        desc="distill", show_progress=show_progress, log=log,
    )


# ---------------------------------------------------------------- CLI


def add_distill_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `sidmlp distill` options to a (sub)parser and return it."""
    p = parser
    p.add_argument("--prepared", required=True, help="directory written by `sidmlp prepare`")
    p.add_argument("--teacher", required=True, help="teacher run directory (train-teacher --out) or saved model dir")
    p.add_argument("--out", required=True, help="where the accelerated recommender is saved")
    p.add_argument("--work-dir", default=None, help="features + resumable checkpoints (default: OUT/work)")
    p.add_argument("--replace-encoder", action="store_true", help="SID-MLP++: also distil an MLP encoder")
    p.add_argument("--init-student", default=None, metavar="DIR",
                   help="start the heads from this saved SID-MLP (e.g. SID-MLP++ heads from SID-MLP's)")
    p.add_argument("--max-prefixes-per-user", type=int, default=20,
                   help="random cap on training prefixes per user (default 20; 0 = all)")
    d = DistillConfig()
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (split over torchrun ranks)")
    p.add_argument("--alpha", type=float, default=d.alpha, help="weight of the KL term (default 0.7)")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--patience", type=int, default=d.patience, help="evaluations without improvement before stopping")
    p.add_argument("--eval-beam", type=int, default=20, help="beam of the validation generate (default 20)")
    p.add_argument("--eval-users", type=int, default=None, help="validate on the first N users only")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--head-hidden", type=int, default=512)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--attn-dim", type=int, default=0, help="cross-attention width (0 = context width)")
    p.add_argument("--ffn-dim", type=int, default=1024)
    p.add_argument("--encoder-epochs", type=int, default=10, help="SID-MLP++ stage-1 epochs")
    p.add_argument("--encoder-layers", type=int, default=2)
    p.add_argument("--encoder-ffn-dim", type=int, default=None, help="default: 2 x teacher hidden size")
    p.add_argument("--encoder-lr", type=float, default=1e-3)
    p.add_argument("--beam", type=int, default=50, help="beam of the final test evaluation")
    p.add_argument("--test-users", type=int, default=None, help="evaluate the first N test users only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_distill)
    return p


def cmd_distill(args: argparse.Namespace) -> int:
    """`sidmlp distill`: distil SID-MLP (or SID-MLP++) heads from a trained teacher; torchrun-ready."""
    from .accelerate import AcceleratedRecommender, accelerate, evaluate_recommender
    from .examples import build_examples
    from .prepare import load_prepared
    from .teacher import load_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world = dist_info()
    log = print if rank == 0 else (lambda s: None)
    prepared = load_prepared(args.prepared)
    catalog, split = prepared.catalog, prepared.split
    teacher, layout = load_teacher(args.teacher)
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
        init = AcceleratedRecommender.load(args.init_student, teacher=teacher, catalog=catalog, layout=layout).student
    t0 = time.perf_counter()
    rec = accelerate(
        teacher, catalog, train, valid, replace_encoder=args.replace_encoder, layout=layout, work_dir=work,
        init_student=init,
        show_progress=not args.no_progress and rank == 0, log=log,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, alpha=args.alpha, temperature=args.temperature,
        weight_decay=args.weight_decay, patience=args.patience, eval_beam=args.eval_beam, seed=args.seed,
        dropout=args.dropout, head_hidden=args.head_hidden, num_heads=args.num_heads, attn_dim=args.attn_dim,
        ffn_dim=args.ffn_dim, encoder_epochs=args.encoder_epochs, encoder_layers=args.encoder_layers,
        encoder_ffn_dim=args.encoder_ffn_dim, encoder_lr=args.encoder_lr,
    )
    if rank == 0:
        rec.info["distill_seconds"] = time.perf_counter() - t0
        rec.save(out)
        log(f"[distill] saved {out} ({rec.info['distill_seconds']:.0f}s)")
        test = build_examples(split, catalog, layout, "test", padding_side=padding)
        m = evaluate_recommender(rec, test, beam_size=args.beam, top_n=10, max_users=args.test_users,
                                 show_progress=not args.no_progress)
        log(f"[distill] test ({m['num_users']} users, beam {args.beam}): recall@10 {m['recall@10']:.4f} "
            f"ndcg@10 {m['ndcg@10']:.4f}  encode {m['encode_seconds']:.2f}s decode {m['decode_seconds']:.2f}s")
        (out / "test_metrics.json").write_text(json.dumps({k: v for k, v in m.items() if k != "items"}, indent=2))
    barrier()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m sidmlp_kernels.distill ...` (what torchrun launches)."""
    parser = add_distill_arguments(argparse.ArgumentParser(prog="sidmlp distill", description=cmd_distill.__doc__))
    return int(cmd_distill(parser.parse_args(argv)) or 0)


if __name__ == "__main__":
    sys.exit(main())
