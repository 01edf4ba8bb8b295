"""SID-MLP++ encoder: an attention-free stand-in for the teacher's encoder.

Each layer mixes every token with a summary of its sequence through a
position-specific MLP (one MLP per SID digit, one shared by the special tokens).
The paper's mixer ("mean") is the masked mean of the whole sequence: no
attention, cost linear in T. A decoder-only teacher's state at t sees only
tokens <= t and weighs recent ones most, so the "causal" mixer gives each token
the mean of the tokens up to it and two recency-weighted means of them
(half-lives of one and four items): fixed weights, no scores, no softmax.
Stage 1 fits the encoder to the teacher's encoder states (MSE on real tokens);
stage 2 (in accelerate.py) retrains the SID-MLP heads on its outputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..decode.types import Encoded
from ..configs import MIXERS, EncoderTrainConfig
from ..training import TrainResult, run_training, split_config
from .features import FeatureStore
from ..data.layout import TokenLayout, drop_final_eos
from ..errors import InvalidInput

CAUSAL_HALF_LIVES_ITEMS = (1, 4)  # recency-weighted means of the causal mixer, in items (L tokens each)

__all__ = ["MIXERS", "MLPEncoderConfig", "MLPEncoder", "EncoderTrainConfig", "train_mlp_encoder", "masked_mse"]


@dataclass
class MLPEncoderConfig:
    """Sizes of the MLP encoder; the output width equals the teacher's hidden size."""

    vocab_size: int
    hidden_size: int
    num_levels: int
    ffn_dim: int = 512
    num_layers: int = 2
    dropout: float = 0.1
    max_len: int = 512
    mixer: str = "mean"  # one of MIXERS; configs saved before the option load as "mean"
    # The teacher's prompt drops the inputs' final EOS (a full-sequence decoder-only teacher, prompt format
    # "items"), so its states, which stage 1 fits, have no EOS position: forward() drops this EOS id too.
    strip_eos_id: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_levels", "ffn_dim", "num_layers", "max_len"):
            if int(getattr(self, name)) < 1:
                raise InvalidInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mixer not in MIXERS:
            raise InvalidInput(f"mixer must be one of {MIXERS}, got {self.mixer!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInput(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MLPEncoderConfig":
        """Inverse of to_dict."""
        return cls(**d)


class MLPEncoder(nn.Module):
    """Attention-free encoder: token + position embeddings, then per-role MLP blocks over [x, mean(x)]."""

    def __init__(self, config: MLPEncoderConfig, token_role: Optional[torch.Tensor] = None):
        super().__init__()
        self.config = config
        d, roles = config.hidden_size, config.num_levels + 1
        self.token_emb = nn.Embedding(config.vocab_size, d)
        self.pos_emb = nn.Embedding(config.max_len, d)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        # Role of each token id: its SID digit, or num_levels for pad/EOS/user tokens.
        if token_role is None:
            token_role = torch.full((config.vocab_size,), config.num_levels, dtype=torch.long)
        self.register_buffer("token_role", token_role.long().clone())
        summaries = 1 if config.mixer == "mean" else 1 + len(CAUSAL_HALF_LIVES_ITEMS)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                nn.Sequential(
                    nn.Linear((1 + summaries) * d, config.ffn_dim), nn.LayerNorm(config.ffn_dim), nn.GELU(),
                    nn.Dropout(config.dropout), nn.Linear(config.ffn_dim, d),
                )
                for _ in range(roles)
            )
            for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(d)

    @classmethod
    def for_layout(cls, layout: TokenLayout, hidden_size: int, adapter=None, **sizes) -> "MLPEncoder":
        """An encoder for a layout; digit-token embeddings start from the teacher's code embeddings."""
        cfg = MLPEncoderConfig(vocab_size=layout.vocab_size, hidden_size=hidden_size, num_levels=layout.num_levels, **sizes)
        role = torch.full((layout.vocab_size,), layout.num_levels, dtype=torch.long)
        for level in range(layout.num_levels):
            role[layout.digit_token_ids(level)] = level
        enc = cls(cfg, role)
        if adapter is not None:
            with torch.no_grad():
                for level in range(layout.num_levels):
                    emb = adapter.code_embeddings(level).detach().float()
                    if emb.shape[1] == hidden_size:
                        enc.token_emb.weight[layout.digit_token_ids(level)] = emb
        return enc

    def states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encoder states (B, T, D) of (B, T) inputs; padded positions hold garbage the mask hides."""
        mask = attention_mask.bool()
        # Positions count real tokens, so left and right padding encode alike.
        pos = (mask.long().cumsum(dim=1) - 1).clamp(0, self.config.max_len - 1)
        x = self.token_emb(input_ids) + self.pos_emb(pos)
        b, t, d = x.shape
        # The real tokens as flat rows grouped by role, found once: each role's MLP reads one contiguous
        # slice (no compute on other roles' tokens or on pads); x is scattered back to (B, T) only to mix.
        role = torch.where(mask, self.token_role[input_ids], -1).flatten()
        groups = [(role == r).nonzero().squeeze(1) for r in range(self.config.num_levels + 1)]
        rows, sizes = torch.cat(groups), [len(g) for g in groups]
        xs = x.flatten(0, 1).index_select(0, rows)
        valid = mask.to(x.dtype).unsqueeze(-1)
        if self.config.mixer == "causal":
            # All summaries in one GEMM of the stacked (S*T, T) kernels; weighted means over real tokens
            # (a row with none, a pad before a left-padded prompt, gets 0).
            kernels = torch.cat(self._causal_kernels(t, x.device))
            norms = (kernels @ valid).clamp_min(1e-12)
        else:
            users = torch.div(rows, t, rounding_mode="floor")
            denom = valid.sum(dim=1).clamp_min(1.0)
        for ffns in self.layers:
            dense = xs.new_zeros(b * t, d).index_copy(0, rows, xs).view(b, t, d)  # pads are 0
            if self.config.mixer == "causal":
                mixed = ((kernels @ dense) / norms).unflatten(1, (-1, t)).permute(0, 2, 1, 3).reshape(b * t, -1)
                ctx = mixed.index_select(0, rows)
            else:
                ctx = (dense.sum(dim=1) / denom).index_select(0, users)
            inp = torch.cat([xs, ctx], dim=-1)
            xs = xs + torch.cat([ffn(part) for part, ffn in zip(inp.split(sizes), ffns)])
        x = x.flatten(0, 1).index_copy(0, rows, xs).view(b, t, d)
        return self.norm(x)

    def _causal_kernels(self, length: int, device) -> list[torch.Tensor]:
        """(T, T) weights of token s in the summaries of token t: 1 for s <= t, then 2^(-(t - s) / half-life).

        Real tokens are contiguous (left or right padding), so t - s counts the real tokens between them;
        pads get weight 0 through the mask in states().
        """
        idx = torch.arange(length, device=device)
        gap = (idx[:, None] - idx[None, :]).to(self.token_emb.weight.dtype)  # t - s
        causal = gap >= 0
        kernels = [causal.to(gap.dtype)]
        for half_life in CAUSAL_HALF_LIVES_ITEMS:
            tokens = half_life * self.config.num_levels
            kernels.append(torch.exp2(-gap.clamp_min(0) / tokens) * causal)
        return kernels

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, is_prompt: bool = False) -> Encoded:
        """Encode like a teacher adapter: inputs [user, SIDs..., EOS] -> Encoded(states (B, T', D), mask, input_ids).

        For a teacher whose prompt has no EOS (`strip_eos_id`) the EOS is dropped first, as the teacher does;
        is_prompt=True: the ids are the teacher's prompt already (what stored features hold), used as they are.
        """
        if input_ids.shape[1] > self.config.max_len:
            raise InvalidInput(f"input_ids has {input_ids.shape[1]} tokens, this encoder takes at most {self.config.max_len}")
        if self.config.strip_eos_id is not None and not is_prompt:
            input_ids, attention_mask = drop_final_eos(input_ids, attention_mask, self.config.strip_eos_id)
        return Encoded(states=self.states(input_ids, attention_mask), mask=attention_mask.bool(), input_ids=input_ids)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real tokens only."""
    m = mask.to(pred.dtype).unsqueeze(-1)
    return ((pred - target) ** 2 * m).sum() / (m.sum().clamp_min(1.0) * pred.shape[-1])


def train_mlp_encoder(
    encoder: MLPEncoder,
    features: FeatureStore,
    config: Optional[EncoderTrainConfig] = None,
    checkpoint: Optional[str | Path] = None,
    show_progress: bool = False,
) -> TrainResult:
    """Stage 1 of SID-MLP++: fit the encoder to the teacher's stored states (DDP-aware, resumable)."""
    cfg = config or EncoderTrainConfig()
    if features.hidden_size != encoder.config.hidden_size:
        raise InvalidInput(f"features have width {features.hidden_size}, the encoder {encoder.config.hidden_size}")

    def batch_loss(model, index):
        b = features.batch(index)
        return masked_mse(model(b["input_ids"], b["mask"], is_prompt=True).states, b["states"], b["mask"])

    trainer_config, run_config = split_config(cfg)
    return run_training(
        encoder, batch_loss, len(features), trainer_config, checkpoint=checkpoint,
        run_config=dict(run_config, encoder=encoder.config.to_dict()), desc="mlp-encoder",
        show_progress=show_progress,
    )
