"""The one training loop: AdamW, warm-up + cosine schedule, gradient clipping, early stopping on a
validation metric, resumable checkpoints, DDP under torchrun (gloo on CPU, NCCL on GPU), progress."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

_CKPT_VERSION = 1


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



def broadcast_object(obj):
    """Rank 0's `obj` on every rank (itself without a process group)."""
    if dist_info()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]



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
            metrics = broadcast_object(metrics)
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
