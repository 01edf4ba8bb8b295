"""Distil a SID-MLP student from stored teacher features.

Per digit: alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(ground truth),
teacher-forced prefixes, summed over digits; when the features hold the teacher's
beam tree, plus alpha * T^2 * KL at the tree's prefixes (mean over its W prefixes,
summed over digits 1..L-1). Trained on the one trainer (training.py):
AdamW, linear warm-up + cosine, gradient clipping, early stopping on validation
NDCG@10 of the constrained generate, resumable checkpoints.

Runs unchanged under `torchrun --nproc_per_node=N` (DDP, gloo on CPU): every rank
takes its share of each global batch, DDP averages gradients, rank 0 evaluates and
is the only writer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.catalog import SIDCatalog
from ..decode.types import GenerationOutput
from .features import FeatureStore
from ..decode.backends import decode_folded
from ..decode.folded import project_context
from ..metrics import ndcg_at_k, recall_at_k, top_overlap
from ..configs import DistillConfig
from ..training import TrainResult, broadcast_object, run_training, split_config, steps_per_epoch
from .student import SIDMLP
from ..errors import InvalidInput

__all__ = [
    "DistillConfig",
    "EncoderAndHeads",
    "ValidSet",
    "distill",
    "distill_loss",
    "evaluate_student",
    "student_generate",
]


# ---------------------------------------------------------------- loss


def distill_loss(
    student_logits: Sequence[torch.Tensor],
    teacher_logits: Sequence[torch.Tensor],
    target_codes: torch.Tensor,
    alpha: float = 0.7,
    temperature: float = 1.0,
    beam: Optional[tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]] = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over digits of alpha*T^2*KL(teacher||student) + (1-alpha)*CE; returns (loss, parts).

    beam = (student, teacher) logits at the teacher's beam prefixes, each a list over digits 1..L-1 of
    (B, W, K_l): adds alpha*T^2*KL averaged over the B*W prefixes, per digit.
    """
    total = student_logits[0].new_zeros(())
    kl_sum, ce_sum, beam_sum = 0.0, 0.0, 0.0
    for level, (s, te) in enumerate(zip(student_logits, teacher_logits)):
        kl = _kl(s, te, temperature)
        ce = F.cross_entropy(s, target_codes[:, level])
        total = total + alpha * kl + (1.0 - alpha) * ce
        kl_sum += float(kl.detach())
        ce_sum += float(ce.detach())
    parts = {"kl": kl_sum, "ce": ce_sum}
    if beam is not None:
        for s, te in zip(*beam):
            kl = _kl(s.flatten(0, 1), te.flatten(0, 1), temperature)
            total = total + alpha * kl
            beam_sum += float(kl.detach())
        parts["beam_kl"] = beam_sum
    return total, parts


def _kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """T^2 * KL(teacher || student) of (N, K) logits at temperature t, averaged over the N rows."""
    return F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1), reduction="batchmean",
                    log_target=True) * (t * t)


# ---------------------------------------------------------------- evaluation


@dataclass
class ValidSet:
    """Evaluation users as encoder states: states (N, T, D), mask (N, T), target_items (N,); and the
    inputs (N, T) the states came from, which a distillation that trains the encoder too re-encodes;
    and the teacher's own top-10 (N, 10) for these users, which selection by fidelity compares with."""

    states: torch.Tensor
    mask: torch.Tensor
    target_items: torch.Tensor
    input_ids: Optional[torch.Tensor] = None
    teacher_items: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.states.shape[0])


class EncoderAndHeads(torch.nn.Module):
    """SID-MLP++ trained end to end: the MLP encoder's states feed the SID-MLP heads (one module, one optimizer)."""

    def __init__(self, encoder: torch.nn.Module, student: SIDMLP):
        super().__init__()
        self.encoder = encoder
        self.student = student

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor, target_codes: torch.Tensor,
                beam_prefixes: Optional[Sequence[torch.Tensor]] = None):
        """SIDMLP.forward on the encoder's states of input_ids."""
        return self.student(self.encoder.states(input_ids, mask), mask, target_codes, beam_prefixes)


@torch.no_grad()
def _reencoded(encoder: torch.nn.Module, valid: ValidSet, batch_size: int = 512) -> ValidSet:
    """valid with its states recomputed by `encoder` (in eval mode) from its input_ids."""
    was_training = encoder.training
    encoder.eval()
    states = torch.cat([encoder.states(valid.input_ids[s:s + batch_size], valid.mask[s:s + batch_size])
                        for s in range(0, len(valid), batch_size)])
    encoder.train(was_training)
    return dataclasses.replace(valid, states=states)


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
    """Recall@10 and NDCG@10 of the constrained generate over a ValidSet; with valid.teacher_items also
    teacher_overlap@10, the mean share of the teacher's top-10 that the student's top-10 holds."""
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
    out = {"recall@10": recall_at_k(items, valid.target_items, 10), "ndcg@10": ndcg_at_k(items, valid.target_items, 10)}
    if valid.teacher_items is not None:
        out["teacher_overlap@10"] = top_overlap(items, valid.teacher_items, 10)
    return out


def distill(
    student: SIDMLP,
    train: FeatureStore,
    catalog: SIDCatalog,
    valid: Optional[ValidSet] = None,
    config: Optional[DistillConfig] = None,
    checkpoint: Optional[str | Path] = None,
    show_progress: bool = False,
    encoder: Optional[torch.nn.Module] = None,
) -> TrainResult:
    """Distil `student` in place from stored teacher features; keeps the best-validated weights (valid
    NDCG@10, or with config.select_by="teacher" the top-10 overlap with the teacher's valid top-10).

    With `encoder` (an MLPEncoder), it is trained together with the heads, end to end from the stored
    input_ids, against the same targets (SID-MLP++); `valid` must then carry its input_ids.
    With `checkpoint`, a rerun resumes from that file; Ctrl-C saves it and raises TrainingInterrupted.
    """
    cfg = config or DistillConfig()
    if encoder is not None and valid is not None and valid.input_ids is None:
        raise InvalidInput("valid must carry input_ids when the encoder is trained too (ValidSet(input_ids=))")
    if cfg.select_by == "teacher" and valid is not None and valid.teacher_items is None:
        raise InvalidInput("select_by='teacher' needs the teacher's valid top-10 (ValidSet(teacher_items=))")
    metric = "teacher_overlap@10" if cfg.select_by == "teacher" else "ndcg@10"
    if train.num_levels != student.num_levels or train.hidden_size != student.config.encoder_dim:
        raise InvalidInput(
            f"features have L={train.num_levels}, D={train.hidden_size}; the student expects "
            f"L={student.num_levels}, D={student.config.encoder_dim}"
        )
    for level, (t, k) in enumerate(zip(train.teacher_logits, student.config.codebook_sizes)):
        if t.shape[1] != k:
            raise InvalidInput(f"teacher logits of digit {level} have {t.shape[1]} codes, the student {k}")

    module = student if encoder is None else EncoderAndHeads(encoder, student)

    def batch_loss(model, index):
        b = train.batch(index)
        inputs = (b["states"] if encoder is None else b["input_ids"], b["mask"], b["target_codes"])
        if "beam_prefixes" not in b:
            return distill_loss(model(*inputs), b["teacher_logits"], b["target_codes"], cfg.alpha, cfg.temperature)
        logits, beam_logits = model(*inputs, b["beam_prefixes"])
        return distill_loss(logits, b["teacher_logits"], b["target_codes"], cfg.alpha, cfg.temperature,
                            beam=(beam_logits, b["beam_logits"]))

    evaluate = None
    # Only rank 0 holds (and evaluates) the validation set, but every rank must agree that evaluation
    # happens, since the metric is broadcast from rank 0.
    if broadcast_object(valid is not None):
        def evaluate(model):
            if encoder is None:
                return evaluate_student(model, catalog, valid, cfg.eval_beam, cfg.eval_batch_size)
            return evaluate_student(student, catalog, _reencoded(encoder, valid), cfg.eval_beam, cfg.eval_batch_size)

    # DistillConfig counts evaluations in epochs, the trainer in steps.
    trainer_config, run_config = split_config(
        cfg, eval_every=cfg.eval_every * steps_per_epoch(len(train), cfg.batch_size)
    )
    del run_config["eval_batch_size"]  # speed only: a resume may change it
    run_config = dict(run_config, student=student.config.to_dict())
    if encoder is not None:
        run_config["encoder"] = encoder.config.to_dict()
    return run_training(
        module, batch_loss, len(train), trainer_config, evaluate=evaluate, metric=metric, checkpoint=checkpoint,
        run_config=run_config, desc="distill", show_progress=show_progress,
    )
