"""Teacher training: TIGER's next-token objective on the one trainer (training.py), early stopping on
the constrained-decode validation NDCG@10, the best model saved as a teacher directory.

Run directory written by `train_teacher(out_dir=...)`::

    out/best/   model (save_pretrained: config.json + model.safetensors), layout.json,
                teacher.json (format version, arch, preset, validation metrics)
    out/last/   the latest checkpoint (resumable)
    out/history.jsonl  one line per validation
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..data.catalog import SIDCatalog
from ..data.examples import Examples
from ..data.layout import TokenLayout
from .adapters import check_model_layout
from .evaluate import evaluate_teacher
from .models import load_teacher, save_teacher, teacher_loss


@dataclass
class TrainConfig:
    """Teacher training options (AdamW, linear warmup + cosine decay, early stopping on valid NDCG@10)."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: Optional[int] = None  # default: 5% of all steps, at most 1000
    grad_clip: float = 1.0
    max_minutes: Optional[float] = None  # wall-clock budget of this invocation
    eval_every: Optional[int] = None  # steps between validations; default once per epoch
    eval_beam: int = 20
    eval_users: Optional[int] = None  # validate on the first N validation users
    eval_batch_size: int = 64
    patience: int = 3  # validations without improvement before stopping
    checkpoint_minutes: float = 5.0
    seed: int = 0
    bf16: bool = False  # bf16 autocast for the forward pass (fp32 weights and optimizer)
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # recorded, checked on resume (data options)



def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn



def _atomic_save_dir(write: Callable[[Path], None], target: Path) -> None:
    """Write a directory via a temp sibling + rename so a crash never leaves a half-written checkpoint."""
    tmp = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)



def train_teacher(
    model: nn.Module,
    layout: TokenLayout,
    catalog: SIDCatalog,
    train: Examples,
    valid: Examples,
    out_dir: str | Path,
    config: Optional[TrainConfig] = None,
    resume: bool = True,
    info: Optional[dict] = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train with early stopping on constrained-decode valid NDCG@10; checkpoints in out_dir; returns a summary.

    With resume=True and out_dir/last present, model/optimizer/scheduler/RNG and the
    position inside the epoch are restored from it (the passed model is overwritten).
    """
    config = config if config is not None else TrainConfig()
    check_model_layout(model, layout, catalog)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = config.warmup_steps if config.warmup_steps is not None else min(1000, max(1, total // 20))
    eval_every = config.eval_every or steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(warmup, total))
    cfg_record = asdict(config)
    state: dict[str, Any] = dict(
        step=0, epoch=0, batch_in_epoch=0, best_ndcg=-1.0, best_step=-1, bad_evals=0,
        train_seconds=0.0, done=False, config=cfg_record,
    )
    info = dict(info or {})
    last = out / "last"
    if resume and (last / "trainer_state.json").is_file():
        saved = json.loads((last / "trainer_state.json").read_text())
        for key in ("batch_size", "epochs", "lr", "seed", "bf16", "extra"):
            if saved["config"].get(key, getattr(TrainConfig(), key)) != cfg_record.get(key):
                raise ValueError(
                    f"cannot resume {out}: its {key} was {saved['config'].get(key)!r}, now {cfg_record.get(key)!r}; "
                    "pass the same options, or start fresh (--fresh / resume=False / another --out)"
                )
        loaded, saved_layout = load_teacher(last)
        if saved_layout != layout:
            raise ValueError(f"cannot resume {out}: its layout {saved_layout} differs from {layout}")
        model.load_state_dict(loaded.state_dict())
        blob = torch.load(last / "optimizer.pt", weights_only=False)
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["rng"])
        # Keep the current invocation's budget and patience-related knobs, restore progress.
        state.update({k: saved[k] for k in state if k in saved and k != "config"})
        log(f"[train-teacher] resumed from {last} at step {state['step']} (epoch {state['epoch']}, "
            f"best valid NDCG@10 {state['best_ndcg']:.4f} at step {state['best_step']})")
    if state["done"]:
        log(f"[train-teacher] {out} is already finished (early stopping or all epochs); nothing to do")
        return _summary(state, out)

    def save_last() -> None:
        def write(d: Path) -> None:
            save_teacher(model, layout, d, dict(info, step=state["step"]))
            (d / "trainer_state.json").write_text(json.dumps(state, indent=2))
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": torch.get_rng_state()}, d / "optimizer.pt")

        _atomic_save_dir(write, last)

    def validate() -> bool:
        """Evaluate, keep the best model; True when patience is exhausted."""
        metrics = evaluate_teacher(
            model, layout, catalog, valid, decode="constrained", beam_size=config.eval_beam,
            top_n=min(10, config.eval_beam), batch_size=config.eval_batch_size, max_users=config.eval_users,
        )
        model.train()
        ndcg = metrics["ndcg@10"]
        record = dict(step=state["step"], epoch=state["epoch"], **metrics)
        with open(out / "history.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        improved = ndcg > state["best_ndcg"]
        log(f"[train-teacher] step {state['step']} epoch {state['epoch']}: valid (beam {config.eval_beam}, "
            f"{metrics['num_users']} users) recall@10 {metrics['recall@10']:.4f} ndcg@10 {ndcg:.4f}"
            f"{' (best)' if improved else ''} [{metrics['seconds']:.1f}s]")
        if improved:
            state.update(best_ndcg=ndcg, best_step=state["step"], bad_evals=0)
            _atomic_save_dir(
                lambda d: save_teacher(model, layout, d, dict(info, step=state["step"], valid=metrics)), out / "best"
            )
        else:
            state["bad_evals"] += 1
        return state["bad_evals"] >= config.patience

    model.train()
    start = time.perf_counter()
    last_ckpt = start
    budget = None if config.max_minutes is None else config.max_minutes * 60.0
    stop_reason = None
    evaluated_at = -1
    while state["epoch"] < config.epochs and stop_reason is None:
        gen = torch.Generator().manual_seed(config.seed * 100003 + state["epoch"])
        order = torch.randperm(len(train), generator=gen)
        first = state["batch_in_epoch"]
        bar = None
        if config.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {state['epoch'] + 1}/{config.epochs}",
                       unit="step", leave=False)
        for b in range(first, steps_per_epoch):
            ids, mask, codes, _ = train.batch(order[b * config.batch_size : (b + 1) * config.batch_size])
            device = next(model.parameters()).device
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                loss = teacher_loss(model, layout, ids.to(device), mask.to(device), codes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            state["batch_in_epoch"] = b + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            now = time.perf_counter()
            if state["step"] % eval_every == 0 and b + 1 < steps_per_epoch:
                evaluated_at = state["step"]
                if validate():
                    stop_reason = "early stopping"
                    break
            if budget is not None and now - start >= budget:
                stop_reason = f"time budget of {config.max_minutes} min"
                break
            if now - last_ckpt >= config.checkpoint_minutes * 60.0:
                state["train_seconds"] += now - last_ckpt
                last_ckpt = now
                save_last()
        if bar is not None:
            bar.close()
        if stop_reason is None:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            if eval_every >= steps_per_epoch or state["step"] % eval_every == 0 or state["epoch"] == config.epochs:
                evaluated_at = state["step"]
                if validate():
                    stop_reason = "early stopping"
    if stop_reason is None:
        stop_reason = f"all {config.epochs} epochs"
    if evaluated_at != state["step"] and not stop_reason.startswith("early"):
        validate()
    state["done"] = not stop_reason.startswith("time budget")
    state["train_seconds"] += time.perf_counter() - last_ckpt
    save_last()
    log(f"[train-teacher] stopped after step {state['step']} ({stop_reason}); best valid NDCG@10 "
        f"{state['best_ndcg']:.4f} at step {state['best_step']}; this run {time.perf_counter() - start:.0f}s")
    summary = _summary(state, out)
    summary["stop_reason"] = stop_reason
    return summary



def _summary(state: dict[str, Any], out: Path) -> dict[str, Any]:
    return dict(
        step=state["step"], epoch=state["epoch"], best_ndcg=state["best_ndcg"], best_step=state["best_step"],
        train_seconds=state["train_seconds"], best_dir=str(out / "best"), done=state["done"],
    )
