"""The one training loop, `run_training`: teacher (teacher/train.py), distillation (distill/distill.py),
SID-MLP++ encoder stage 1 (distill/mlp_encoder.py) and SASRec (analysis/sasrec.py) all train on it.

Step-based: AdamW with a linear warm-up + cosine decay (or a constant rate) sized by the planned
steps; an evaluation every N steps (default once per epoch) with early stopping on a
higher-is-better metric, the best weights kept; atomic checkpoints every N steps and at every
evaluation, from which a rerun resumes exactly, mid-epoch included; a wall-clock budget; Ctrl-C
saves a checkpoint and raises TrainingInterrupted. Under torchrun (DDP, gloo on CPU, NCCL on GPU)
every rank takes its share of each global batch; rank 0 evaluates and is the only writer.

Randomness: epoch e's data order comes from a local generator seeded by (seed, e); dropout draws
from the global RNG inside torch.random.fork_rng(), seeded by (seed, rank), so the caller's RNG
state is the same after training as before.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .configs import TrainerConfig
from .io import ArtifactError
from .errors import InvalidInput

__all__ = [
    "TrainResult",
    "TrainingInterrupted",
    "barrier",
    "broadcast_object",
    "dist_info",
    "forked_rng",
    "is_main_process",
    "lr_lambda",
    "run_training",
    "split_config",
    "steps_per_epoch",
]

logger = logging.getLogger(__name__)

_FORMAT = "sidmlp-training-checkpoint"
_FORMAT_VERSION = 2  # version 1: the epoch-based train_loop's file, which cannot be resumed
# Options of one invocation only: a resume may change them.
_PER_INVOCATION = ("max_minutes", "checkpoint_every")


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
    """What a training run produced: one history entry per evaluation, the best one, where it stopped."""

    history: list[dict] = field(default_factory=list)
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    best_epoch: Optional[int] = None  # 1-based epoch of best_step
    step: int = 0  # optimizer steps done
    seconds: float = 0.0  # training wall time, over every invocation
    stop_reason: str = ""  # "finished", "early stopping" or "time budget of ... min"

    @property
    def stopped_early(self) -> bool:
        return self.stop_reason == "early stopping"

    @property
    def done(self) -> bool:
        """The run is over and a rerun does nothing (False after a time-budget stop)."""
        return self.stop_reason in ("finished", "early stopping")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during run_training; the checkpoint to resume from (None when there is none) was saved first."""

    def __init__(self, step: int, checkpoint: Optional[Path]):
        super().__init__(f"training interrupted at step {step}")
        self.step = step
        self.checkpoint = checkpoint


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str = "cosine") -> Callable[[int], float]:
    """Factor on the base rate at 0-based step `step`: 1 for "constant"; for "cosine" a linear
    warm-up over warmup_steps, then a cosine decay that reaches 0 at total_steps."""

    def fn(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Optimizer steps of one pass over num_examples with a global batch of batch_size (in this process group)."""
    world = dist_info()[1]
    return math.ceil(math.ceil(num_examples / world) / max(1, batch_size // world))


def split_config(config: Any, **overrides: Any) -> tuple[TrainerConfig, dict[str, Any]]:
    """(a TrainerConfig of the fields a dataclass config shares with it, plus overrides; its other fields).

    DistillConfig, EncoderTrainConfig and TrainConfig use the trainer's field names; their other
    fields (alpha, eval_beam, ...) belong in run_config, so that a resume checks them too.
    """
    names = {f.name for f in fields(TrainerConfig)}
    values = asdict(config)
    shared = {k: v for k, v in values.items() if k in names}
    return TrainerConfig(**{**shared, **overrides}), {k: v for k, v in values.items() if k not in names}


@contextmanager
def forked_rng(seed: Optional[int] = None, device: Optional[torch.device] = None) -> Iterator[None]:
    """Run a block on a private copy of the global RNG (the CPU one, and `device`'s if it is a GPU),
    seeded with `seed` when given; the caller's RNG state is restored afterwards."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        if seed is not None:
            torch.default_generator.manual_seed(seed)  # not torch.manual_seed: that reseeds every GPU too
            for index in cuda:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
        yield


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _epoch_order(num_examples: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """This rank's example indices in an epoch: a permutation drawn from (seed, epoch), wrapped
    around to a multiple of the world size and dealt out round-robin (as DistributedSampler does)."""
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    if world == 1:
        return order
    per_rank = math.ceil(num_examples / world)
    return order.repeat(math.ceil(per_rank * world / num_examples))[: per_rank * world][rank::world]


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _differences(saved: dict, now: dict) -> list[str]:
    """'name was X, now Y' for every (dotted) field that differs."""
    old, new = _flatten(saved), _flatten(now)
    show = lambda d, k: repr(d[k]) if k in d else "unset"  # noqa: E731
    return [f"{k} was {show(old, k)}, now {show(new, k)}"
            for k in sorted(set(old) | set(new)) if k not in old or k not in new or old[k] != new[k]]


def _read_checkpoint(path: Path, hint: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or one holding more than tensors and plain data
        raise ArtifactError(path, f"not a readable training checkpoint ({err})", hint) from err
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ArtifactError(path, "a checkpoint of an older version of sidmlp-kernels, which cannot be resumed", hint)
    if state.get("format_version") != _FORMAT_VERSION:
        raise ArtifactError(path, f"checkpoint format_version {state.get('format_version')!r}, this version "
                                  f"resumes {_FORMAT_VERSION}", hint)
    return state


def _write_lines(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(tmp, path)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_training(
    model: torch.nn.Module,
    batch_loss: Callable[[torch.nn.Module, torch.Tensor], Any],
    num_examples: int,
    config: TrainerConfig,
    *,
    evaluate: Optional[Callable[[torch.nn.Module], dict[str, Any]]] = None,
    metric: str = "ndcg@10",
    on_best: Optional[Callable[[torch.nn.Module, dict[str, Any]], None]] = None,
    checkpoint: Optional[str | Path] = None,
    run_config: Optional[dict] = None,
    history_file: Optional[str | Path] = None,
    restart_hint: str = "delete it to start over",
    desc: str = "train",
    show_progress: bool = False,
) -> TrainResult:
    """Train `model` in place; it ends in eval mode, holding the best-evaluated weights (the last without evaluate).

    batch_loss(model, example_indices) -> loss, or (loss, {name: float}), of this rank's share of a
    batch (the model is DDP-wrapped under torchrun). evaluate(model) -> metrics runs on rank 0, in
    eval mode under no_grad; a higher `metric` is better; on_best(model, metrics + step and epoch)
    runs on rank 0 after each improvement. Without evaluate, history entries (train losses) still
    come at the evaluation steps.

    checkpoint: a file; when it exists the run resumes from it, provided config (but max_minutes
    and checkpoint_every) and run_config (whatever else shapes the run: sizes, data options) are
    unchanged, else a ValueError names the fields that differ and ends with restart_hint.
    history_file: the history as JSON lines, rewritten at every evaluation.
    Ctrl-C: a checkpoint is saved and TrainingInterrupted (a KeyboardInterrupt) raised.
    """
    cfg = config
    rank, world = dist_info()
    if num_examples < 1:
        raise InvalidInput("training needs at least one example")
    per_rank = max(1, cfg.batch_size // world)
    epoch_steps = steps_per_epoch(num_examples, cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * epoch_steps
    num_epochs = math.ceil(total / epoch_steps)
    eval_every = cfg.eval_every or epoch_steps
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, int(cfg.warmup_frac * total))
    if cfg.warmup_steps is None and cfg.max_warmup_steps is not None:
        warmup = min(warmup, cfg.max_warmup_steps)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    # Buffers (frozen code embeddings) are identical on every rank; DDP syncing them is harmless.
    wrapped = DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, warmup, cfg.schedule))
    ckpt = Path(checkpoint) if checkpoint is not None else None
    say = logger.info if rank == 0 else (lambda msg: None)
    signature = {k: v for k, v in asdict(cfg).items() if k not in _PER_INVOCATION}
    signature.update(num_examples=num_examples, world_size=world)
    if set(run_config or {}) & set(signature):
        raise InvalidInput(f"run_config repeats the trainer's own fields {sorted(set(run_config) & set(signature))}")
    signature = json.loads(json.dumps({**signature, **(run_config or {})}))
    result = TrainResult()
    # Progress since the last evaluation, and the early-stopping count.
    run: dict[str, Any] = {"evaluated_at": 0, "bad_evals": 0, "sums": {}, "count": 0}
    best_weights: Optional[dict[str, torch.Tensor]] = None
    epoch_of = lambda step: max(1, math.ceil(step / epoch_steps))  # noqa: E731  (1-based, as in the bars)

    def best_text() -> str:
        if evaluate is None:
            return ""
        if result.best_metric is None:
            return "; no evaluation yet"
        return f"; best {metric} {result.best_metric:.4f} at step {result.best_step} (epoch {result.best_epoch})"

    with forked_rng(cfg.seed + rank, device):
        resumed = ckpt is not None and ckpt.is_file()
        if resumed:
            state = _read_checkpoint(ckpt, restart_hint)
            diffs = _differences(json.loads(state["signature"]), signature)
            if diffs:
                raise InvalidInput(f"cannot resume {ckpt}: {'; '.join(diffs)}; pass the same options, or {restart_hint}")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            result = TrainResult(**json.loads(state["result"]))
            run = json.loads(state["run"])
            best_weights = state["best"] or None
            if rank == 0:
                _set_rng_state(state["rng"], device)
            else:  # only rank 0's dropout stream is saved; the others restart theirs from the step
                torch.default_generator.manual_seed((cfg.seed + rank) * 1_000_003 + result.step)
            if not result.done:
                result.stop_reason = ""  # a time-budget stop: carry on
            say(f"{desc}: resumed from {ckpt} at step {result.step}/{total} (epoch {epoch_of(result.step)}/"
                f"{num_epochs}){best_text()}")
        already_done = result.done
        if already_done:
            say(f"{desc}: {ckpt} is already finished ({result.stop_reason}); nothing to do")
        budget = None if cfg.max_minutes is None else cfg.max_minutes * 60.0
        t0, seconds_before = time.perf_counter(), result.seconds
        saved_at = result.step if resumed else -1
        # RNG state as of the last completed step or evaluation: what a checkpoint must hold.
        rng_mark = _rng_state(device)
        # True while the optimizer or a commit is half done: an interrupt then must not checkpoint.
        committing = False
        order, bar, out_of_time = None, None, False

        def save() -> None:
            nonlocal saved_at
            saved_at = result.step
            if ckpt is None or rank != 0:
                return
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_name(ckpt.name + ".tmp")
            torch.save({
                "format": _FORMAT, "format_version": _FORMAT_VERSION, "signature": json.dumps(signature),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "best": best_weights or {},
                "result": json.dumps(asdict(result)), "run": json.dumps(run), "rng": rng_mark,
            }, tmp)
            os.replace(tmp, ckpt)

        def log_point() -> None:
            """Average the train losses since the last one, evaluate, keep the best weights, maybe stop early."""
            nonlocal best_weights, rng_mark, committing
            step, epoch = result.step, epoch_of(result.step)
            keys = sorted(run["sums"])
            totals = torch.tensor([run["sums"][k] for k in keys] + [float(run["count"])], dtype=torch.float64)
            if world > 1:  # every rank logs the global average
                totals = totals.to(device)
                dist.all_reduce(totals)
                totals = totals.cpu()
            entry = {"step": step, "epoch": epoch,
                     **{f"train_{k}": float(totals[i] / totals[-1]) for i, k in enumerate(keys)},
                     "lr": scheduler.get_last_lr()[0]}
            improved, new_best = False, best_weights
            if evaluate is not None:
                metrics = None
                if rank == 0:
                    model.eval()
                    with torch.no_grad():
                        metrics = evaluate(model)
                    if metric not in metrics:
                        raise InvalidInput(f"evaluate returned {sorted(metrics)}, without the metric {metric!r}")
                metrics = broadcast_object(metrics)
                wrapped.train()
                improved = result.best_metric is None or float(metrics[metric]) > result.best_metric
                if improved:
                    if rank == 0 and on_best is not None:
                        on_best(model, dict(metrics, step=step, epoch=epoch))
                    new_best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                entry.update({f"valid_{k}": v for k, v in metrics.items()})
            entry["seconds"] = round(seconds_before + time.perf_counter() - t0, 3)
            # Commit. Nothing above changed the run's state: an interrupt before here repeats this evaluation on resume.
            committing = True
            result.history.append(entry)
            result.seconds = entry["seconds"]
            run.update(evaluated_at=step, sums={}, count=0)
            if improved:
                result.best_metric, result.best_step, result.best_epoch = float(metrics[metric]), step, epoch
                run["bad_evals"], best_weights = 0, new_best
            elif evaluate is not None:
                run["bad_evals"] += 1
                if run["bad_evals"] >= cfg.patience:
                    result.stop_reason = "early stopping"
            rng_mark = _rng_state(device)
            committing = False
            if rank == 0 and history_file is not None:
                _write_lines(Path(history_file), result.history)
            say(f"{desc}: step {step}/{total} epoch {epoch}/{num_epochs} "
                + " ".join(f"{k}={_fmt(v)}" for k, v in entry.items() if k not in ("step", "epoch"))
                + (" (best)" if improved else ""))

        wrapped.train()
        try:
            while not already_done:
                step = result.step
                save_now = False
                if step and run["evaluated_at"] != step and (step % eval_every == 0 or step == total or out_of_time):
                    log_point()
                    save_now = True
                elif cfg.checkpoint_every and step and step % cfg.checkpoint_every == 0 and step != saved_at:
                    save_now = True
                if not result.stop_reason and step >= total:
                    result.stop_reason = "finished"
                elif not result.stop_reason and out_of_time:
                    result.stop_reason = f"time budget of {cfg.max_minutes:g} min"
                if save_now or result.stop_reason:
                    save()
                if result.stop_reason:
                    break
                epoch, batch = divmod(step, epoch_steps)
                if batch == 0 or order is None:
                    order = _epoch_order(num_examples, cfg.seed, epoch, rank, world)
                    if bar is not None:
                        bar.close()
                    if show_progress and rank == 0:
                        from tqdm.auto import tqdm

                        bar = tqdm(total=min(epoch_steps, total - epoch * epoch_steps), initial=batch, unit="step",
                                   desc=f"{desc} epoch {epoch + 1}/{num_epochs}", leave=False)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    out = batch_loss(wrapped, order[batch * per_rank : (batch + 1) * per_rank])
                loss, parts = out if isinstance(out, tuple) else (out, {})
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                values = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
                committing = True
                optimizer.step()
                scheduler.step()
                for k, v in values.items():
                    run["sums"][k] = run["sums"].get(k, 0.0) + v
                run["count"] += 1
                result.step += 1
                rng_mark = _rng_state(device)
                committing = False
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
                if budget is not None:  # rank 0's clock decides, so that every rank stops at the same step
                    out_of_time = broadcast_object(time.perf_counter() - t0 >= budget)
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            if committing:
                say(f"{desc}: interrupted in the middle of an update; the previous checkpoint is kept")
            elif ckpt is not None:
                save()
                say(f"{desc}: interrupted; checkpoint of step {result.step} saved to {ckpt}")
            raise TrainingInterrupted(result.step, ckpt if ckpt is not None and ckpt.is_file() else None) from None
        if bar is not None:
            bar.close()
        if not already_done:
            say(f"{desc}: stopped at step {result.step}/{total} ({result.stop_reason}){best_text()}")
    if best_weights is not None:
        model.load_state_dict(best_weights)
    model.eval()
    barrier()
    return result
