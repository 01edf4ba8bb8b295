"""SASRec: the item-ID sequential baseline (causal Transformer, full-softmax cross-entropy).

Items are internal ids 0..num_items-1; inside the model id i is token i+1 and 0 pads.
Every position of a training window predicts the next item with a softmax over all
items (output weights tied to the item embedding). Training windows cover every
transition of every training sequence once: each sequence is cut from its end into
windows of max_len+1 items that overlap by one item.

Histories: a Split caps its histories at split.max_history (the GR model's input
length), which may be shorter than SASRec's max_len. `sasrec_histories` rebuilds
longer ones from split.train_sequences when the split is the leave-last-out layout
(valid history = train sequence, test history = train sequence + valid target);
otherwise it falls back to the split's own histories. `fit` validates on those.

Already-seen items are not masked at scoring time: in MovieLens a target never repeats
an item of its own history, so masking would only help the metric, and keeping every
item scored keeps the ranked lists and max softmax probabilities model-only.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import TrainerConfig
from ..io import ArtifactError, load_tensors, read_meta, save_tensors, write_meta
from ..training import forked_rng, run_training
from ..errors import InvalidInput

__all__ = ["FORMAT_VERSION", "SASRecConfig", "SASRec", "fit", "sasrec_histories"]

FORMAT_VERSION = 1
_FORMAT = "sidmlp-sasrec"
_WEIGHTS = "sasrec.safetensors"
_CONFIG = "sasrec.json"
log = logging.getLogger(__name__)


@dataclass
class SASRecConfig:
    """Model shape: catalog size, hidden width, blocks, heads, history length, dropout."""

    num_items: int
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.5

    def validate(self) -> None:
        """Raise ValueError on an impossible shape."""
        for name in ("num_items", "hidden", "layers", "heads", "max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"{name} must be a positive int, got {value!r}")
        if self.hidden % self.heads:
            raise InvalidInput(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInput(f"dropout must be in [0, 1), got {self.dropout}")


class _Block(nn.Module):
    """Pre-LayerNorm causal self-attention + position-wise feed-forward."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
        )
        self.drop = nn.Dropout(dropout)
        self.p = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class SASRec(nn.Module):
    """Causal Transformer over item ids; logits over all items at every position."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.item_emb = nn.Embedding(c.num_items + 1, c.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(c.max_len, c.hidden)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(_Block(c.hidden, c.heads, c.dropout) for _ in range(c.layers))
        self.ln = nn.LayerNorm(c.hidden)
        self.apply(self._init)
        self.train_log: list[dict[str, float]] = []

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    @property
    def num_items(self) -> int:
        """Catalog size."""
        return self.config.num_items

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, hidden) for left-padded tokens (B, T) (item id + 1, 0 = pad)."""
        b, t = tokens.shape
        if t > self.config.max_len:
            raise InvalidInput(f"tokens has {t} positions, more than max_len {self.config.max_len}")
        real = tokens > 0
        x = self.item_emb(tokens) + self.pos_emb(torch.arange(t, device=tokens.device))
        x = self.drop(x) * real.unsqueeze(-1)
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=tokens.device))
        # Real keys only, causally; every query may see itself so pad rows never go all -inf.
        mask = (causal & real.unsqueeze(1)) | torch.eye(t, dtype=torch.bool, device=tokens.device)
        mask = mask.unsqueeze(1)  # (B, 1, T, T) broadcast over heads
        for block in self.blocks:
            x = block(x, mask)
        return self.ln(x)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the num_items real items for hidden states (..., hidden)."""
        return hidden @ self.item_emb.weight[1:].T

    # ------------------------------------------------------------------ inference
    def encode_histories(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Left-padded token tensor (N, max_len) of the last max_len items of each history."""
        if isinstance(histories, torch.Tensor):
            raise InvalidInput("histories must be a list of lists of item ids (not a tensor)")
        if len(histories) == 0:
            raise InvalidInput("histories must hold at least one history")
        t = self.config.max_len
        out = torch.zeros(len(histories), t, dtype=torch.long)
        for i, hist in enumerate(histories):
            tail = torch.as_tensor(list(hist)[-t:], dtype=torch.long)
            if tail.numel() == 0:
                raise InvalidInput(f"histories[{i}] is empty; SASRec needs at least one item")
            if tail.min() < 0 or tail.max() >= self.num_items:
                raise InvalidInput(f"histories[{i}] holds item ids outside [0, {self.num_items})")
            out[i, t - tail.numel():] = tail + 1
        return out

    @torch.no_grad()
    def score(self, histories: Sequence[Sequence[int]], batch_size: int = 256) -> torch.Tensor:
        """Next-item logits (N, num_items) for each history (last max_len items used)."""
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
        tokens = self.encode_histories(histories)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        outs = []
        for start in range(0, tokens.shape[0], batch_size):
            hidden = self(tokens[start:start + batch_size].to(device))[:, -1]
            outs.append(self.item_logits(hidden).float().cpu())
        self.train(was_training)
        return torch.cat(outs)

    @torch.no_grad()
    def top_k(self, histories: Sequence[Sequence[int]], k: int = 50, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(items (N, k), logits (N, k), max softmax probability over all items (N,)) per history."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.num_items:
            raise InvalidInput(f"k must be an int in [1, {self.num_items}], got {k!r}")
        items, scores, msp = [], [], []
        for start in range(0, len(histories), batch_size):
            logits = self.score(histories[start:start + batch_size], batch_size)
            top = torch.topk(logits, k, dim=1)
            items.append(top.indices)
            scores.append(top.values)
            msp.append(torch.softmax(logits, dim=1).max(dim=1).values)
        return torch.cat(items), torch.cat(scores), torch.cat(msp)

    def recommend(self, histories: Sequence[Sequence[int]], k: int = 10, batch_size: int = 256) -> torch.Tensor:
        """Ranked item ids (N, k), best first."""
        return self.top_k(histories, k, batch_size)[0]

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write sasrec.safetensors + sasrec.json (config, format_version, training log)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors({k: v.detach().cpu() for k, v in self.state_dict().items()}, directory / _WEIGHTS)
        write_meta(directory / _CONFIG, _FORMAT, FORMAT_VERSION,
                   {"model": "sasrec", "config": asdict(self.config), "train_log": self.train_log})
        return directory

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "SASRec":
        """Load a model written by save(), validating version, config and tensor shapes."""
        directory = Path(directory)
        if not (directory / _CONFIG).is_file() and not (directory / _WEIGHTS).is_file():
            raise InvalidInput(f"directory {directory} holds no {_CONFIG} + {_WEIGHTS}")
        # Files from before the "format" key carry model="sasrec" alone.
        meta = read_meta(directory / _CONFIG, _FORMAT, FORMAT_VERSION, required=("config",),
                         legacy_format_key=("model", "sasrec"))
        try:
            model = cls(SASRecConfig(**meta["config"]))
        except (TypeError, ValueError) as err:
            raise ArtifactError(directory / _CONFIG, f"config does not describe a SASRec ({err})") from err
        state = load_tensors(directory / _WEIGHTS, device=str(map_location))
        expected = model.state_dict()
        if set(state) != set(expected):
            raise InvalidInput(f"{directory / _WEIGHTS}: tensor names do not match the config")
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise InvalidInput(
                    f"{directory / _WEIGHTS}: {name} has shape {tuple(tensor.shape)}, "
                    f"config implies {tuple(expected[name].shape)}"
                )
        model.load_state_dict(state)
        model.train_log = list(meta.get("train_log", []))
        return model.to(map_location)


# ---------------------------------------------------------------------- training
def sasrec_histories(split: Any, max_len: int) -> tuple[list[list[int]], list[list[int]]]:
    """(valid, test) histories of up to max_len items, longer than the split's when train_sequences allow."""
    if max_len < 1:
        raise InvalidInput(f"max_len must be >= 1, got {max_len}")
    train = getattr(split, "train_sequences", None)
    n = len(split.valid_targets)
    aligned = (
        train is not None
        and len(train) == n == len(split.test_targets)
        and all(
            list(train[i][-split.max_history:]) == list(split.valid_histories[i])
            for i in range(n)
        )
    )
    if not aligned:
        log.warning("split histories are not the leave-last-out layout; using them as given (capped at %d)", split.max_history)
        return [list(h)[-max_len:] for h in split.valid_histories], [list(h)[-max_len:] for h in split.test_histories]
    valid = [list(train[i][-max_len:]) for i in range(n)]
    test = [(list(train[i]) + [int(split.valid_targets[i])])[-max_len:] for i in range(n)]
    return valid, test


def _windows(sequences: Sequence[Sequence[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (inputs, targets) token windows covering every transition once; targets are item ids, -100 = pad."""
    inputs, targets = [], []
    for seq in sequences:
        seq = list(seq)
        end = len(seq)
        while end >= 2:
            window = seq[max(0, end - max_len - 1):end]
            x = torch.zeros(max_len, dtype=torch.long)
            y = torch.full((max_len,), -100, dtype=torch.long)
            m = len(window) - 1
            x[max_len - m:] = torch.as_tensor(window[:-1]) + 1
            y[max_len - m:] = torch.as_tensor(window[1:])
            inputs.append(x)
            targets.append(y)
            end -= max_len
    if not inputs:
        raise InvalidInput("train_sequences hold no transition (every sequence has < 2 items)")
    return torch.stack(inputs), torch.stack(targets)


def _ndcg_recall(model: SASRec, histories: list[list[int]], targets: Sequence[int], k: int = 10) -> dict[str, float]:
    from ..metrics import ndcg_at_k, recall_at_k

    ranked = model.recommend(histories, k)
    t = torch.as_tensor(list(targets), dtype=torch.long)
    return {f"ndcg@{k}": ndcg_at_k(ranked, t, k), f"recall@{k}": recall_at_k(ranked, t, k)}


def fit(
    split: Any,
    num_items: int,
    config: SASRecConfig | None = None,
    *,
    epochs: int = 200,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    patience: int = 10,
    seed: int = 0,
    device: str | torch.device = "cpu",
    max_seconds: float | None = None,
    progress: bool = False,
) -> SASRec:
    """Train SASRec on split.train_sequences with early stopping on validation NDCG@10; returns the best model.

    The one trainer (training.py) at a constant rate, without clipping, validating once per epoch
    on `sasrec_histories` (up to max_len items). The model's train_log holds per-epoch loss and
    validation metrics; the best epoch's weights are restored. The initial weights come from
    `seed` in a forked RNG: the caller's global RNG is left as it was.
    """
    if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 1:
        raise InvalidInput(f"num_items must be a positive int, got {num_items!r}")
    config = config or SASRecConfig(num_items=num_items)
    if config.num_items != num_items:
        raise InvalidInput(f"config.num_items ({config.num_items}) != num_items ({num_items})")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput(f"{name} must be a positive int, got {value!r}")
    if lr <= 0:
        raise InvalidInput(f"lr must be > 0, got {lr}")
    for i, seq in enumerate(split.train_sequences):
        if len(seq) and (min(seq) < 0 or max(seq) >= num_items):
            raise InvalidInput(f"split.train_sequences[{i}] holds item ids outside [0, {num_items})")

    trainer_config = TrainerConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule="constant",
        patience=patience, seed=seed, max_minutes=None if max_seconds is None else max_seconds / 60.0,
    )
    with forked_rng(seed):
        model = SASRec(config)
    model.to(device)
    x_all, y_all = _windows(split.train_sequences, config.max_len)
    valid_hist, _ = sasrec_histories(split, config.max_len)

    def batch_loss(m: nn.Module, index: torch.Tensor) -> torch.Tensor:
        x, y = x_all[index].to(device), y_all[index].to(device)
        keep = y >= 0
        return F.cross_entropy(m.item_logits(m(x)[keep]), y[keep])

    result = run_training(
        model, batch_loss, x_all.shape[0], trainer_config, metric="ndcg@10", desc="SASRec", show_progress=progress,
        evaluate=lambda m: _ndcg_recall(m, valid_hist, split.valid_targets),
    )
    model.train_log = [
        {"epoch": h["epoch"], "loss": h["train_loss"], **{k: v for k, v in h.items() if k.startswith("valid_")},
         "seconds": h["seconds"]}
        for h in result.history
    ]
    return model
