"""Teacher training: TIGER's next-token objective on the one trainer (training.py), early stopping on
the constrained-decode validation NDCG@10, the best model saved as a teacher directory.

Run directory written by `train_teacher(out_dir=...)`::

    out/best/           the best model as a teacher directory (save_teacher; load_teacher(out) reads it)
    out/checkpoint.pt   the latest training checkpoint: a rerun resumes from it
    out/history.jsonl   one line per validation (step, epoch, train_loss, lr, valid_* metrics)

Run directories of earlier versions (out/last/ with trainer_state.json) cannot be resumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch import nn

from ..configs import TrainConfig
from ..data.catalog import SIDCatalog
from ..data.examples import Examples
from ..data.layout import TokenLayout
from ..io import atomic_directory, provenance
from ..training import run_training, split_config
from .adapters import check_model_layout
from .evaluate import evaluate_teacher
from .models import save_teacher, teacher_loss
from .sequence import SequenceWindows, sequence_loss
from ..errors import InvalidInput

__all__ = ["TrainConfig", "train_teacher"]

_RESTART = "rerun with --fresh to start over (or use another --out)"


def train_teacher(
    model: nn.Module,
    layout: TokenLayout,
    catalog: SIDCatalog,
    train: Examples | SequenceWindows,
    valid: Examples,
    out_dir: str | Path,
    config: Optional[TrainConfig] = None,
    resume: bool = True,
    info: Optional[dict] = None,
) -> dict[str, Any]:
    """Train with early stopping on constrained-decode valid NDCG@10 in out_dir; returns a summary.

    `train` is per-prefix Examples (teacher_loss: one pass per (history, target) pair) or, for a
    decoder-only teacher with prompt format "items", SequenceWindows (sequence_loss: one pass per
    window, a loss at every SID token).

    With resume=True and out_dir/checkpoint.pt present, training continues from it (the passed
    model's weights are replaced); resume=False starts over. Ctrl-C checkpoints and raises
    training.TrainingInterrupted.
    """
    config = config if config is not None else TrainConfig()
    check_model_layout(model, layout, catalog)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    if not resume:
        ckpt.unlink(missing_ok=True)
    elif not ckpt.is_file() and (out / "last" / "trainer_state.json").is_file():
        raise InvalidInput(f"{out} holds a checkpoint (last/) of an earlier version of train-teacher, which "
                         f"cannot be resumed; {_RESTART}")
    trainer_config, run_config = split_config(config)
    for name in ("progress", "eval_batch_size"):  # display and speed only: a resume may change them
        del run_config[name]
    info = dict(info or {})
    info.setdefault("provenance", provenance({"catalog": catalog.fingerprint(), "train_examples": len(train),
                                              "valid_users": len(valid)}))
    device = next(model.parameters()).device

    if isinstance(train, SequenceWindows):
        def batch_loss(m: nn.Module, index):
            return sequence_loss(m, layout, *train.batch(index))
    else:
        def batch_loss(m: nn.Module, index):
            ids, mask, codes, _ = train.batch(index)
            return teacher_loss(m, layout, ids.to(device), mask.to(device), codes)

    def evaluate(m: nn.Module) -> dict[str, Any]:
        return evaluate_teacher(m, layout, catalog, valid, decode="constrained", beam_size=config.eval_beam,
                                top_n=min(10, config.eval_beam), batch_size=config.eval_batch_size,
                                max_users=config.eval_users)

    def save_best(m: nn.Module, metrics: dict[str, Any]) -> None:
        with atomic_directory(out / "best") as tmp:
            save_teacher(m, layout, tmp, dict(info, catalog_fingerprint=catalog.fingerprint(), step=metrics["step"],
                                              valid=metrics))

    result = run_training(
        model, batch_loss, len(train), trainer_config, evaluate=evaluate, metric="ndcg@10", on_best=save_best,
        checkpoint=ckpt, run_config=run_config, history_file=out / "history.jsonl", restart_hint=_RESTART,
        desc="train-teacher", show_progress=config.progress,
    )
    return dict(step=result.step, best_ndcg=result.best_metric, best_step=result.best_step,
                train_seconds=result.seconds, best_dir=str(out / "best"), done=result.done,
                stop_reason=result.stop_reason)
