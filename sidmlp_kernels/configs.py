"""Every run's options as plain dataclasses: validated at construction, importable without torch.

Each default is defined here once; the CLI reads its flag defaults from these classes and
library functions take them as arguments (`accelerate(..., config=AccelerateConfig(...), **overrides)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional
from .errors import InvalidInput, InvalidInputType

SELECT_BY = ("ndcg", "teacher")


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
    # What early stopping keeps: "ndcg" (valid NDCG@10 against the held-out items) or "teacher" (mean top-10
    # overlap with the teacher's own valid top-10, decoded once at eval_beam: fidelity, not accuracy).
    select_by: str = "ndcg"

    def __post_init__(self) -> None:
        _check(self.select_by in SELECT_BY, "select_by", f"one of {SELECT_BY}", self.select_by)
        if not 0.0 <= self.alpha <= 1.0:
            raise InvalidInput(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise InvalidInput(f"temperature must be > 0, got {self.temperature}")
        for name in ("epochs", "batch_size", "patience", "eval_every", "eval_beam", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise InvalidInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise InvalidInput(f"lr and grad_clip must be > 0, got {self.lr}, {self.grad_clip}")


@dataclass
class EncoderTrainConfig:
    """Stage-1 (MSE to teacher states) hyper-parameters."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    warmup_frac: float = 0.03
    seed: int = 0


def _check_int(config: Any, name: str, low: int, optional: bool = False) -> None:
    """ValueError naming the field and its command-line flag unless config.name is an int >= low."""
    value = getattr(config, name)
    if value is None and optional:
        return
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer ({flag}), got {value!r}")
    if value < low:
        raise InvalidInput(f"{name} must be >= {low} ({flag}), got {value!r}")


def _check(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise InvalidInput(f"{name} must be {rule} (--{name.replace('_', '-')}), got {value!r}")


@dataclass
class TrainerConfig:
    """Options of the one training loop (training.run_training): AdamW, the learning-rate schedule,
    evaluation and early stopping, step checkpoints, the time budget."""

    epochs: int = 10
    max_steps: Optional[int] = None  # optimizer steps to run; default epochs x steps per epoch
    batch_size: int = 256  # global batch; each of N ranks takes batch_size // N
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"  # "cosine": linear warm-up, then cosine decay to 0; or "constant"
    warmup_steps: Optional[int] = None  # default: warmup_frac of the planned steps (at least 1)
    warmup_frac: float = 0.03
    max_warmup_steps: Optional[int] = None  # cap on the warm-up derived from warmup_frac
    grad_clip: Optional[float] = None  # max gradient norm; None = no clipping
    eval_every: Optional[int] = None  # steps between evaluations; default once per epoch
    patience: int = 3  # evaluations without a better metric before stopping
    checkpoint_every: Optional[int] = None  # steps between checkpoints (there is one at every evaluation too)
    max_minutes: Optional[float] = None  # wall-clock budget of one invocation: stop, checkpoint
    bf16: bool = False  # bf16 autocast of the forward pass (weights and optimizer stay fp32)
    seed: int = 0  # data order (per epoch) and dropout

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            _check_int(self, name, 1)
        for name in ("max_steps", "eval_every", "checkpoint_every", "max_warmup_steps"):
            _check_int(self, name, 1, optional=True)
        _check_int(self, "warmup_steps", 0, optional=True)
        _check_int(self, "seed", 0)
        _check(self.lr > 0, "lr", "> 0", self.lr)
        _check(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        _check(0 <= self.warmup_frac < 1, "warmup_frac", "in [0, 1)", self.warmup_frac)
        _check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", "> 0 or None", self.grad_clip)
        _check(self.max_minutes is None or self.max_minutes >= 0, "max_minutes", ">= 0", self.max_minutes)
        _check(self.schedule in ("cosine", "constant"), "schedule", "'cosine' or 'constant'", self.schedule)


@dataclass
class TrainConfig(TrainerConfig):
    """Teacher training (`sidmlp train-teacher`): the trainer's options with the teacher's defaults,
    and its validation decode (early stopping on the constrained-decode valid NDCG@10)."""

    epochs: int = 30
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    max_warmup_steps: Optional[int] = 1000
    grad_clip: Optional[float] = 1.0
    checkpoint_every: Optional[int] = 500
    eval_beam: int = 20
    eval_users: Optional[int] = None  # validate on the first N validation users
    eval_batch_size: int = 64
    progress: bool = False  # progress bars (the CLI turns them on)
    extra: dict[str, Any] = field(default_factory=dict)  # recorded, checked on resume (data options)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("eval_beam", "eval_batch_size"):
            _check_int(self, name, 1)
        _check_int(self, "eval_users", 1, optional=True)


READOUTS = ("pool", "pool+last")  # the SID-MLP user contexts (distill/student.py)
# The MLP encoder's sequence summaries (distill/mlp_encoder.py): the paper's whole-sequence mean; means over tokens <= t.
MIXERS = ("mean", "causal")


@dataclass
class StudentSizes:
    """Sizes of a SID-MLP student that are free choices (the rest follow from the teacher and catalog)."""

    context_dim: int = 0  # C; 0 means C = the encoder width (the paper's choice)
    num_heads: int = 4
    attn_dim: int = 0  # inner width of the cross-attention readout; 0 means C
    ffn_dim: int = 1024
    head_hidden: int = 512  # H
    dropout: float = 0.2
    # "pool+last": ctx also holds the last real encoder state; "pool": the paper's readout alone
    # (docs/architecture.md, "The student's user context").
    readout: str = "pool+last"

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise InvalidInput(f"readout must be one of {READOUTS}, got {self.readout!r}")


@dataclass
class MLPEncoderSizes:
    """Sizes of the SID-MLP++ MLP encoder (None = derived from the teacher)."""

    ffn_dim: Optional[int] = None  # default 2 x the teacher's width: cheaper per token than its attention
    layers: int = 2
    dropout: float = 0.1
    max_len: Optional[int] = None  # default max(512, longest training input)
    # "mean" (the paper's), "causal" (means over tokens <= t), or "auto": causal for a decoder-only teacher.
    mixer: str = "auto"

    def __post_init__(self) -> None:
        if self.mixer not in ("auto",) + MIXERS:
            raise InvalidInput(f"mixer must be one of {('auto',) + MIXERS}, got {self.mixer!r}")
        _check(0.0 <= self.dropout < 1.0, "encoder_dropout", "in [0, 1)", self.dropout)


@dataclass
class AccelerateConfig:
    """Everything `accelerate()` does: student sizes, distillation, SID-MLP++ encoder, feature storage.

    `AccelerateConfig().with_overrides(epochs=5, head_hidden=256, encoder_epochs=4)` sets a field of
    whichever part owns that name; `encoder_` names reach the MLP encoder's sizes and training.
    """

    student: StudentSizes = field(default_factory=StudentSizes)
    distill: DistillConfig = field(default_factory=DistillConfig)
    encoder: MLPEncoderSizes = field(default_factory=MLPEncoderSizes)
    encoder_training: EncoderTrainConfig = field(default_factory=EncoderTrainConfig)
    replace_encoder: bool = False  # SID-MLP++: distil an MLP encoder too
    joint_encoder: bool = False  # SID-MLP++ stage 2 trains the MLP encoder with the heads (else heads only)
    feature_batch_size: int = 128
    storage_dtype: str = "float16"  # teacher features on disk: float16, bfloat16 or float32
    teacher_beam: int = 0  # also distil at every prefix of the teacher's own beam of this width (0 = off)

    def __post_init__(self) -> None:
        if self.feature_batch_size < 1:
            raise InvalidInput(f"feature_batch_size must be >= 1, got {self.feature_batch_size}")
        _check_int(self, "teacher_beam", 0)
        if self.joint_encoder and not self.replace_encoder:
            raise InvalidInput("joint_encoder (--joint-encoder) trains SID-MLP++'s MLP encoder: it needs "
                               "replace_encoder=True (--replace-encoder)")
        if self.storage_dtype not in ("float16", "bfloat16", "float32"):
            raise InvalidInput(f"storage_dtype must be float16, bfloat16 or float32, got {self.storage_dtype!r}")

    @staticmethod
    def override_names() -> dict[str, tuple[Optional[str], str]]:
        """Keyword -> (part, field) for every name with_overrides accepts."""
        names: dict[str, tuple[Optional[str], str]] = {}
        for part, prefix in (("student", ""), ("distill", ""), ("encoder", "encoder_"),
                             ("encoder_training", "encoder_")):
            cls = {"student": StudentSizes, "distill": DistillConfig, "encoder": MLPEncoderSizes,
                   "encoder_training": EncoderTrainConfig}[part]
            for f in fields(cls):
                key = prefix + f.name
                if part == "encoder_training" and f.name == "seed":
                    continue  # one seed: distill.seed
                if key in names:
                    raise AssertionError(f"override name {key!r} is ambiguous")  # a bug in this module
                names[key] = (part, f.name)
        for name in ("replace_encoder", "joint_encoder", "feature_batch_size", "storage_dtype", "teacher_beam"):
            names[name] = (None, name)
        return names

    def with_overrides(self, **overrides: Any) -> "AccelerateConfig":
        """A copy with the named fields replaced; TypeError naming any unknown keyword."""
        names = self.override_names()
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise InvalidInputType(f"unknown accelerate() options {unknown}; valid: {sorted(names)}")
        parts: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for key, value in overrides.items():
            part, name = names[key]
            if part is None:
                top[name] = value
            else:
                parts.setdefault(part, {})[name] = value
        changed = {part: replace(getattr(self, part), **values) for part, values in parts.items()}
        return replace(self, **changed, **top)
