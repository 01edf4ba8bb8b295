"""SID-MLP student: one context readout per user, then one small MLP head per SID digit.

Architecture (arXiv 2605.12617): masked mean pool of the encoder states -> query
projection -> single-query multi-head cross-attention over the states -> residual
+ LayerNorm -> FFN -> residual + LayerNorm gives ctx (B, C). Head l reads
[ctx, e(d_1), ..., e(d_{l-1})] through Linear -> LayerNorm -> GELU -> Linear(K_l),
where e(d_j) are the teacher's (frozen) code embeddings of digit j.

readout="pool+last" (ours) appends each user's last real encoder state to ctx (width C + D).
For a decoder-only teacher that state is the one its LM head reads for the first digit, so a
head can reproduce the teacher's first digit exactly and starts the later digits from the
teacher's own summary of the prompt; it costs nothing at decode (the context is projected once
per user).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from ..configs import READOUTS
from ..errors import InvalidInput

__all__ = ["READOUTS", "SIDMLPConfig", "SIDMLP", "CrossAttentionReadout", "last_real_state"]


@dataclass
class SIDMLPConfig:
    """Sizes of a SID-MLP student; every size is configurable, any L and K."""

    encoder_dim: int  # D: width of the encoder states it reads
    codebook_sizes: tuple[int, ...]  # K_l per digit
    embed_dims: tuple[int, ...]  # D_emb of the frozen code embeddings of digits 0..L-2
    context_dim: int = 0  # C; 0 means C = encoder_dim (the paper's choice)
    num_heads: int = 4
    attn_dim: int = 0  # inner width of the cross-attention; 0 means C
    ffn_dim: int = 1024
    head_hidden: int = 512  # H
    dropout: float = 0.2
    readout: str = "pool"  # "pool" (the paper's) or "pool+last": ctx also holds the last real state

    def __post_init__(self) -> None:
        self.codebook_sizes = tuple(int(k) for k in self.codebook_sizes)
        self.embed_dims = tuple(int(d) for d in self.embed_dims)
        if self.context_dim == 0:
            self.context_dim = self.encoder_dim
        if self.attn_dim == 0:
            self.attn_dim = self.context_dim
        if len(self.codebook_sizes) < 1:
            raise InvalidInput("codebook_sizes must name at least one digit")
        if len(self.embed_dims) != len(self.codebook_sizes) - 1:
            raise InvalidInput(
                f"embed_dims must have L-1 = {len(self.codebook_sizes) - 1} entries (digits that "
                f"feed later heads), got {len(self.embed_dims)}"
            )
        for name in ("encoder_dim", "context_dim", "num_heads", "attn_dim", "ffn_dim", "head_hidden"):
            if int(getattr(self, name)) < 1:
                raise InvalidInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(k < 1 for k in self.codebook_sizes) or any(d < 1 for d in self.embed_dims):
            raise InvalidInput("codebook_sizes and embed_dims must all be >= 1")
        if self.attn_dim % self.num_heads:
            raise InvalidInput(f"attn_dim ({self.attn_dim}) must be divisible by num_heads ({self.num_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInput(f"dropout must be in [0, 1), got {self.dropout}")
        if self.readout not in READOUTS:
            raise InvalidInput(f"readout must be one of {READOUTS}, got {self.readout!r}")

    @property
    def context_width(self) -> int:
        """Width of what context() returns and the heads read: C, plus D with readout="pool+last"."""
        return self.context_dim + (self.encoder_dim if self.readout == "pool+last" else 0)

    @property
    def num_levels(self) -> int:
        """Number of SID digits L."""
        return len(self.codebook_sizes)

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        d = asdict(self)
        d["codebook_sizes"] = list(self.codebook_sizes)
        d["embed_dims"] = list(self.embed_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SIDMLPConfig":
        """Inverse of to_dict."""
        return cls(**d)


class CrossAttentionReadout(nn.Module):
    """Single-query multi-head cross-attention: one query per user over its encoder states."""

    def __init__(self, query_dim: int, kv_dim: int, inner_dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = inner_dim // num_heads
        self.q_proj = nn.Linear(query_dim, inner_dim, bias=False)
        self.k_proj = nn.Linear(kv_dim, inner_dim, bias=False)
        self.v_proj = nn.Linear(kv_dim, inner_dim, bias=False)
        self.out_proj = nn.Linear(inner_dim, query_dim, bias=False)
        self.dropout = dropout

    def forward(self, query: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """query (B, C), states (B, T, D), mask (B, T) True = real token -> (B, C)."""
        b, t, _ = states.shape
        h, hd = self.num_heads, self.head_dim
        q = self.q_proj(query).view(b, h, 1, hd)
        k = self.k_proj(states).view(b, t, h, hd).transpose(1, 2)
        v = self.v_proj(states).view(b, t, h, hd).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (hd**-0.5)  # (B, h, 1, T)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        # A user with no real token would give NaN; its attention output is zero instead.
        any_real = mask.any(dim=1)[:, None, None, None]
        probs = torch.softmax(torch.where(any_real, scores, torch.zeros_like(scores)), dim=-1)
        probs = torch.where(any_real, probs, torch.zeros_like(probs))
        probs = F.dropout(probs, p=self.dropout, training=self.training)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, h * hd)
        return self.out_proj(out)


def last_real_state(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, D): each row's state at its last real token, whatever the padding side (zeros for an all-pad row)."""
    positions = torch.arange(states.shape[1], device=states.device)
    last = torch.where(mask, positions, -1).amax(dim=1)
    picked = states[torch.arange(states.shape[0], device=states.device), last.clamp_min(0)]
    return torch.where((last >= 0)[:, None], picked, torch.zeros_like(picked))


class SIDMLP(nn.Module):
    """The SID-MLP student: context readout + per-digit MLP heads over frozen code embeddings."""

    def __init__(self, config: SIDMLPConfig, code_embeddings: Optional[Sequence[torch.Tensor]] = None):
        super().__init__()
        self.config = config
        c, d, hid = config.context_dim, config.encoder_dim, config.head_hidden
        self.query_proj = nn.Linear(d, c)
        self.cross_attn = CrossAttentionReadout(c, d, config.attn_dim, config.num_heads, config.dropout)
        self.norm1 = nn.LayerNorm(c)
        self.ffn = nn.Sequential(
            nn.Linear(c, config.ffn_dim), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(config.ffn_dim, c)
        )
        self.norm2 = nn.LayerNorm(c)
        # Frozen teacher code embeddings of digits 0..L-2 (the last digit never feeds a head).
        for j, dim in enumerate(config.embed_dims):
            k = config.codebook_sizes[j]
            if code_embeddings is not None:
                table = torch.as_tensor(code_embeddings[j]).detach().float().clone()
                if tuple(table.shape) != (k, dim):
                    raise InvalidInput(
                        f"code_embeddings[{j}] must have shape ({k}, {dim}), got {tuple(table.shape)}"
                    )
            else:
                table = torch.zeros(k, dim)
            self.register_buffer(f"code_emb_{j}", table)
        self.heads = nn.ModuleList()
        for level, k in enumerate(config.codebook_sizes):
            in_dim = config.context_width + sum(config.embed_dims[:level])
            self.heads.append(
                nn.Sequential(
                    nn.Linear(in_dim, hid), nn.LayerNorm(hid), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(hid, k)
                )
            )

    @property
    def num_levels(self) -> int:
        """Number of SID digits L."""
        return self.config.num_levels

    def code_embedding(self, level: int) -> torch.Tensor:
        """Frozen (K_level, D_emb) table of digit `level`'s code embeddings."""
        return getattr(self, f"code_emb_{level}")

    def context(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """User context (B, context_width) from encoder states (B, T, D) and mask (B, T), True = real token."""
        if states.dim() != 3 or states.shape[-1] != self.config.encoder_dim:
            raise InvalidInput(
                f"states must be (B, T, {self.config.encoder_dim}), got {tuple(states.shape)}"
            )
        if tuple(mask.shape) != tuple(states.shape[:2]):
            raise InvalidInput(f"mask must be {tuple(states.shape[:2])}, got {tuple(mask.shape)}")
        mask = mask.bool()
        valid = mask.to(states.dtype).unsqueeze(-1)
        pooled = (states * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)
        query = self.query_proj(pooled)
        x = self.norm1(query + self.cross_attn(query, states, mask))
        ctx = self.norm2(x + self.ffn(x))
        if self.config.readout == "pool+last":
            ctx = torch.cat([ctx, last_real_state(states, mask)], dim=-1)
        return ctx

    def head_logits(self, level: int, ctx: torch.Tensor, prefixes: torch.Tensor) -> torch.Tensor:
        """Head `level`: ctx (B, context_width), prefixes (B, W, level) codes -> logits (B, W, K_level).

        The first Linear over [ctx, e(d_1), ..., e(d_l)] is computed as the decode's folded heads compute it
        (the same function, summed in another order): ctx's part once per user, each digit's part once per
        code (a (K_j, H) table), then per prefix only gathers and adds. Training on W beam prefixes per
        user then costs W table lookups, not W products with the whole input.
        """
        first = self.heads[level][0]
        width = ctx.shape[-1]
        pre = F.linear(ctx, first.weight[:, :width], first.bias).unsqueeze(1)  # (B, 1, H)
        for j in range(level):
            dim = self.config.embed_dims[j]
            table = self.code_embedding(j) @ first.weight[:, width:width + dim].T  # (K_j, H)
            pre = pre + F.embedding(prefixes[:, :, j], table)  # not table[...]: its backward is not deterministic
            width += dim
        return self.heads[level][1:](pre.expand(prefixes.shape[0], prefixes.shape[1], -1))

    def forward(self, states: torch.Tensor, mask: torch.Tensor, target_codes: torch.Tensor,
                beam_prefixes: Optional[Sequence[torch.Tensor]] = None):
        """Teacher-forced logits per digit, each (B, K_l), prefixes taken from target_codes (B, L).

        With beam_prefixes (digits 1..L-1, each (B, W, l)) it returns (those logits, the logits at the
        beam prefixes, each (B, W, K_l)): one context readout serves both.
        """
        ctx = self.context(states, mask)
        prefixes = target_codes.long().unsqueeze(1)  # (B, 1, L)
        on_path = [self.head_logits(l, ctx, prefixes[:, :, :l]).squeeze(1) for l in range(self.num_levels)]
        if beam_prefixes is None:
            return on_path
        return on_path, [self.head_logits(l, ctx, p.long()) for l, p in enumerate(beam_prefixes, start=1)]

    @torch.no_grad()
    def with_readout(self, readout: str) -> "SIDMLP":
        """A copy reading `readout`: pool -> pool+last adds zero weights for the last state (the same logits);
        pool+last -> pool drops them (a starting point to train on, no longer the same function)."""
        cfg = SIDMLPConfig.from_dict({**self.config.to_dict(), "readout": readout})
        other = SIDMLP(cfg, [self.code_embedding(j) for j in range(len(cfg.embed_dims))])
        state = self.state_dict()
        c_old, c_new = self.config.context_width, cfg.context_width
        shared = min(c_old, c_new)  # the pooled context, and the last state if both read it
        for level in range(self.num_levels):
            key = f"heads.{level}.0.weight"
            w = state[key]
            converted = w.new_zeros(w.shape[0], w.shape[1] - c_old + c_new)
            converted[:, :shared] = w[:, :shared]
            converted[:, c_new:] = w[:, c_old:]  # the prefix embeddings
            state[key] = converted
        other.load_state_dict(state)
        other.train(self.training)
        return other

    def fold(self):
        """Folded heads (docs/architecture.md, "Fast paths"), equal to the unfolded heads up to float rounding."""
        from ..decode.folded import fold_student

        return fold_student(self)
